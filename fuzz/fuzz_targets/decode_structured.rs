//! A structured-mode message body, as any producer may publish it.
#![no_main]

mod common;

use lapin::BasicProperties;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let properties =
        BasicProperties::default().with_content_type("application/cloudevents+json".into());
    common::validate(pushq_worker::broker::decode::decode(&properties, body));
});
