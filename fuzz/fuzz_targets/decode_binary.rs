//! A binary-mode message: the input's first line is the content type, the
//! lines up to an empty one are `name=value` headers (values as AMQP long
//! strings, so not necessarily UTF-8), and the rest is the body.
#![no_main]

mod common;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut lines = input.splitn(2, |&b| b == b'\n');
    let content_type = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let rest = lines.next().unwrap_or_default();
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = FieldTable::default();
    for line in head.split(|&b| b == b'\n') {
        let mut parts = line.splitn(2, |&b| b == b'=');
        let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
        let value = parts.next().unwrap_or_default().to_vec();
        if name.len() < 256 {
            headers.insert(
                ShortString::from(name.into_owned()),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
    }
    let mut properties = BasicProperties::default().with_headers(headers);
    if !content_type.is_empty() && content_type.len() < 256 {
        properties = properties.with_content_type(content_type.into());
    }
    common::validate(pushq_worker::broker::decode::decode(&properties, body));
});
