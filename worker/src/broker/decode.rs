//! AMQP message → CloudEvent, in either content mode of the CloudEvents AMQP
//! binding. Every failure is an [`InvalidEvent`] with its stable kind.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use pushq_schemas::envelope::{is_json_media_type, media_type_essence, parse_json_data};
use pushq_schemas::{CloudEvent, InvalidEvent, InvalidKind, STRUCTURED_CONTENT_TYPE};

/// The current binding's header prefix, and the older one some SDKs still send.
const ATTRIBUTE_PREFIXES: [&str; 2] = ["cloudEvents_", "cloudEvents:"];

pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<CloudEvent, InvalidEvent> {
    let content_type = properties.content_type().as_ref().map(|ct| ct.as_str());
    if content_type.is_some_and(|ct| media_type_essence(ct) == STRUCTURED_CONTENT_TYPE) {
        return CloudEvent::from_structured(body);
    }
    let mut attributes = BTreeMap::new();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers {
            let Some(attribute) = ATTRIBUTE_PREFIXES
                .iter()
                .find_map(|prefix| name.as_str().strip_prefix(prefix))
            else {
                continue;
            };
            let attribute = attribute.to_ascii_lowercase();
            let text = header_text(&attribute, value)?;
            attributes.insert(attribute, text);
        }
    }
    if attributes.is_empty() {
        return Err(InvalidEvent::new(
            InvalidKind::NotCloudEvent,
            format!(
                "the message is neither a structured CloudEvent (content type {STRUCTURED_CONTENT_TYPE}) \
                 nor a binary one (cloudEvents_ headers); its content type is {}",
                content_type.unwrap_or("absent")
            ),
        ));
    }
    let data = if body.is_empty() {
        None
    } else if content_type.is_none_or(is_json_media_type) {
        Some(parse_json_data(body)?)
    } else {
        return Err(InvalidEvent::data(format!(
            "the data's content type {} is not JSON",
            content_type.unwrap_or_default()
        )));
    };
    if let Some(content_type) = content_type {
        attributes.insert("datacontenttype".to_owned(), content_type.to_owned());
    }
    CloudEvent::from_attributes(attributes, data)
}

/// Attribute values are strings on the wire, but AMQP headers are typed; a
/// producer may reasonably send a timestamp or a number.
fn header_text(attribute: &str, value: &AMQPValue) -> Result<String, InvalidEvent> {
    let text = match value {
        AMQPValue::LongString(text) => {
            String::from_utf8(text.as_bytes().to_vec()).map_err(|_| {
                InvalidEvent::new(
                    InvalidKind::NotCloudEvent,
                    format!("attribute header {attribute} is not UTF-8"),
                )
            })?
        }
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::Timestamp(seconds) => {
            chrono::DateTime::from_timestamp(i64::try_from(*seconds).unwrap_or(i64::MAX), 0)
                .map(|time| time.to_rfc3339())
                .ok_or_else(|| {
                    InvalidEvent::data(format!("attribute header {attribute} is out of range"))
                })?
        }
        AMQPValue::Boolean(flag) => flag.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        other => {
            return Err(InvalidEvent::new(
                InvalidKind::NotCloudEvent,
                format!(
                    "attribute header {attribute} holds an AMQP {:?}, not a string",
                    other.get_type()
                ),
            ));
        }
    };
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString, ShortString};

    fn binary(prefix: &str, content_type: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("specversion", "1.0"),
            ("id", "e-1"),
            ("source", "/test"),
            ("type", "pushq.notification.send"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ] {
            headers.insert(
                ShortString::from(format!("{prefix}{name}")),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
        headers.insert(
            ShortString::from(format!("{prefix}time")),
            AMQPValue::Timestamp(1_700_000_000),
        );
        let properties = BasicProperties::default().with_headers(headers);
        match content_type {
            Some(ct) => properties.with_content_type(ct.into()),
            None => properties,
        }
    }

    #[test]
    fn binary_mode_with_either_prefix() {
        for prefix in ATTRIBUTE_PREFIXES {
            let event = decode(
                &binary(prefix, Some("application/json")),
                br#"{"to":{"user":"u"}}"#,
            )
            .expect("decodes");
            assert_eq!(event.id, "e-1");
            assert_eq!(event.event_type, "pushq.notification.send");
            assert_eq!(event.time.map(|t| t.timestamp()), Some(1_700_000_000));
            assert!(event.traceparent.is_some());
            assert_eq!(event.data, Some(serde_json::json!({"to": {"user": "u"}})));
        }
    }

    #[test]
    fn structured_mode_with_parameters() {
        let properties = BasicProperties::default()
            .with_content_type("application/cloudevents+json; charset=utf-8".into());
        let body = br#"{"specversion":"1.0","id":"x","source":"/s","type":"t","data":{"a":1}}"#;
        assert_eq!(decode(&properties, body).expect("decodes").id, "x");
    }

    #[test]
    fn binary_attributes_are_bounded_in_bytes_like_structured_ones() {
        let mut properties = binary("cloudEvents_", Some("application/json"));
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from("cloudEvents_id"),
            AMQPValue::LongString(LongString::from("x".repeat(10_000))),
        );
        properties = properties.with_headers(headers);
        let refused = decode(&properties, br#"{"to":{"user":"u"}}"#).expect_err("too long");
        assert_eq!(refused.kind, InvalidKind::FieldTooLong);
        assert!(refused.message.starts_with("attribute `id`"), "{refused}");
    }

    #[test]
    fn refusals_carry_their_kind() {
        let kind = |properties: &BasicProperties, body: &[u8]| {
            decode(properties, body).expect_err("refused").kind
        };
        assert_eq!(
            kind(
                &BasicProperties::default().with_content_type("text/plain".into()),
                b"hi"
            ),
            InvalidKind::NotCloudEvent
        );
        assert_eq!(
            kind(&binary("cloudEvents_", Some("application/json")), b"{oops"),
            InvalidKind::InvalidJson
        );
        assert_eq!(
            kind(
                &binary("cloudEvents_", Some("application/octet-stream")),
                b"\x00\x01"
            ),
            InvalidKind::InvalidData
        );
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("cloudEvents_id"), AMQPValue::Double(1.5));
        assert_eq!(
            kind(&BasicProperties::default().with_headers(headers), b""),
            InvalidKind::NotCloudEvent
        );
    }
}
