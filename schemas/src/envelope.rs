//! CloudEvents 1.0 attributes and the structured JSON format. The AMQP binary
//! mode's header mapping lives with the broker code of whoever reads AMQP; both
//! modes end in [`CloudEvent::from_attributes`]'s checks.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::error::{InvalidEvent, InvalidKind, check_bytes, excerpt};
use crate::keys::BASE64URL_LENIENT;

pub const SPEC_VERSION: &str = "1.0";
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// An event's id: at most an AMQP short string (255 bytes), so that it can be
/// the message-id property, as the SDK sets it.
pub const MAX_ID_BYTES: usize = 255;
/// `source` and `id` together key the deliveries table; a btree index entry
/// holds at most about 2,700 bytes, so both stay well within it.
pub const MAX_SOURCE_BYTES: usize = 1024;
/// The type is the routing key, an AMQP short string.
pub const MAX_TYPE_BYTES: usize = 255;
pub const MAX_SUBJECT_BYTES: usize = 1024;
/// In the binary mode the content type is an AMQP short string.
pub const MAX_DATACONTENTTYPE_BYTES: usize = 255;
/// An RFC 3339 timestamp is about 35 bytes.
pub const MAX_TIME_BYTES: usize = 64;
/// W3C trace context: a version 00 traceparent is 55 bytes; later versions
/// may append fields.
pub const MAX_TRACEPARENT_BYTES: usize = 255;
/// W3C trace context asks that at least 512 characters of tracestate be
/// passed on; this keeps eight times that.
pub const MAX_TRACESTATE_BYTES: usize = 4096;

/// Every context attribute pushq keeps, with its bound in UTF-8 bytes. An
/// attribute over its bound is `field_too_long`, before it reaches SQL or a
/// header (DESIGN §2.1 "Bounds").
pub const ATTRIBUTE_MAX_BYTES: [(&str, usize); 8] = [
    ("id", MAX_ID_BYTES),
    ("source", MAX_SOURCE_BYTES),
    ("type", MAX_TYPE_BYTES),
    ("subject", MAX_SUBJECT_BYTES),
    ("datacontenttype", MAX_DATACONTENTTYPE_BYTES),
    ("time", MAX_TIME_BYTES),
    ("traceparent", MAX_TRACEPARENT_BYTES),
    ("tracestate", MAX_TRACESTATE_BYTES),
];

/// PostgreSQL's text cannot hold NUL, and `id` and `source` are stored.
const STORED_ATTRIBUTES: [&str; 2] = ["id", "source"];

/// One CloudEvent: the context attributes pushq reads, plus any extensions
/// (kept so that a dead letter or a replay loses nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub time: Option<DateTime<Utc>>,
    pub subject: Option<String>,
    pub datacontenttype: Option<String>,
    /// W3C trace context (CloudEvents distributed tracing extension).
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub data: Option<Value>,
}

impl CloudEvent {
    /// A new event with a fresh time-ordered id and the current time.
    pub fn new(event_type: &str, source: &str, data: Value) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            time: Some(Utc::now()),
            subject: None,
            datacontenttype: Some(JSON_CONTENT_TYPE.to_owned()),
            traceparent: None,
            tracestate: None,
            data: Some(data),
        }
    }

    /// Every context attribute that is set, by its CloudEvents name: what the
    /// structured format's members and the binary mode's headers carry.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut attributes = vec![
            ("specversion", SPEC_VERSION.to_owned()),
            ("id", self.id.clone()),
            ("source", self.source.clone()),
            ("type", self.event_type.clone()),
        ];
        let optional = [
            (
                "time",
                self.time
                    .map(|time| time.to_rfc3339_opts(SecondsFormat::Micros, true)),
            ),
            ("subject", self.subject.clone()),
            ("datacontenttype", self.datacontenttype.clone()),
            ("traceparent", self.traceparent.clone()),
            ("tracestate", self.tracestate.clone()),
        ];
        attributes.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?))),
        );
        attributes
    }

    /// The bounds of [`ATTRIBUTE_MAX_BYTES`] on an event built in code, as
    /// [`CloudEvent::from_attributes`] applies them to one received: a
    /// producer checks them before publishing.
    pub fn check_bounds(&self) -> Result<(), InvalidEvent> {
        check_attributes(
            self.attributes()
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        )
    }

    /// The structured JSON format (`application/cloudevents+json`).
    pub fn to_structured_json(&self) -> Vec<u8> {
        let mut object: Map<String, Value> = self
            .attributes()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Value::String(value)))
            .collect();
        if let Some(data) = &self.data {
            object.insert("data".into(), data.clone());
        }
        serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
    }

    /// Parses the structured JSON format.
    pub fn from_structured(body: &[u8]) -> Result<Self, InvalidEvent> {
        let value: Value = serde_json::from_slice(body).map_err(|err| {
            InvalidEvent::new(
                InvalidKind::InvalidJson,
                format!("the structured event is not valid JSON: {err}"),
            )
        })?;
        let Value::Object(mut object) = value else {
            return Err(InvalidEvent::new(
                InvalidKind::NotCloudEvent,
                "a structured CloudEvent must be a JSON object",
            ));
        };
        let data = match (object.remove("data"), object.remove("data_base64")) {
            (Some(_), Some(_)) => {
                return Err(InvalidEvent::new(
                    InvalidKind::NotCloudEvent,
                    "a CloudEvent carries `data` or `data_base64`, not both",
                ));
            }
            (Some(data), None) => Some(data),
            (None, Some(encoded)) => {
                let bytes = encoded
                    .as_str()
                    .and_then(decode_standard_or_url_base64)
                    .ok_or_else(|| {
                        InvalidEvent::new(InvalidKind::InvalidData, "data_base64 is not base64")
                    })?;
                Some(parse_json_data(&bytes)?)
            }
            (None, None) => None,
        };
        let mut attributes = BTreeMap::new();
        for (name, value) in object {
            let text = match value {
                Value::String(text) => text,
                Value::Null => continue,
                other => other.to_string(),
            };
            attributes.insert(name, text);
        }
        Self::from_attributes(attributes, data)
    }

    /// Checks the context attributes of either content mode. `data` is already
    /// decoded.
    pub fn from_attributes(
        mut attributes: BTreeMap<String, String>,
        data: Option<Value>,
    ) -> Result<Self, InvalidEvent> {
        check_attributes(
            attributes
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )?;
        let specversion = attributes.remove("specversion").ok_or_else(|| {
            InvalidEvent::new(
                InvalidKind::MissingAttribute,
                "the required attribute `specversion` is missing",
            )
        })?;
        if specversion != SPEC_VERSION {
            return Err(InvalidEvent::new(
                InvalidKind::BadSpecversion,
                format!(
                    "specversion is {:?}; pushq reads CloudEvents \"1.0\"",
                    excerpt(&specversion)
                ),
            ));
        }
        let mut required = |name: &str| {
            attributes
                .remove(name)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| {
                    InvalidEvent::new(
                        InvalidKind::MissingAttribute,
                        format!("the required attribute `{name}` is missing or empty"),
                    )
                })
        };
        let id = required("id")?;
        let source = required("source")?;
        let event_type = required("type")?;
        let time = attributes
            .remove("time")
            .map(|time| {
                DateTime::parse_from_rfc3339(&time)
                    .map(|time| time.with_timezone(&Utc))
                    .map_err(|_| {
                        InvalidEvent::data("attribute `time` is not an RFC 3339 timestamp")
                    })
            })
            .transpose()?;
        Ok(Self {
            id,
            source,
            event_type,
            time,
            subject: attributes.remove("subject"),
            datacontenttype: attributes.remove("datacontenttype"),
            traceparent: attributes.remove("traceparent"),
            tracestate: attributes.remove("tracestate"),
            data,
        })
    }
}

/// Each attribute within its bound in bytes, and the stored ones free of NUL.
fn check_attributes<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), InvalidEvent> {
    for (name, value) in attributes {
        if let Some((_, max)) = ATTRIBUTE_MAX_BYTES
            .iter()
            .find(|(bounded, _)| *bounded == name)
        {
            check_bytes(&format!("attribute `{name}`"), value, *max)?;
        }
        if STORED_ATTRIBUTES.contains(&name) && value.contains('\0') {
            return Err(InvalidEvent::data(format!(
                "attribute `{name}` contains a NUL character, which cannot be stored"
            )));
        }
    }
    Ok(())
}

/// Whether a media type (parameters allowed) is JSON: `application/json` or
/// any `+json` suffix.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = media_type_essence(content_type);
    essence == JSON_CONTENT_TYPE || essence.ends_with("+json")
}

/// `Application/CloudEvents+JSON; charset=utf-8` → `application/cloudevents+json`.
pub fn media_type_essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Binary-mode data: the message body, JSON.
pub fn parse_json_data(body: &[u8]) -> Result<Value, InvalidEvent> {
    serde_json::from_slice(body).map_err(|err| {
        InvalidEvent::new(
            InvalidKind::InvalidJson,
            format!("the event data is not valid JSON: {err}"),
        )
    })
}

fn decode_standard_or_url_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .or_else(|| BASE64URL_LENIENT.decode(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_round_trip_keeps_every_attribute() {
        let mut event = CloudEvent::new("pushq.notification.send", "/svc/a", json!({"x": 1}));
        event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        event.tracestate = Some("congo=t61rcWkgMzE".into());
        event.subject = Some("s".into());
        let parsed = CloudEvent::from_structured(&event.to_structured_json()).expect("parses");
        assert_eq!(parsed.id, event.id);
        assert_eq!(parsed.traceparent, event.traceparent);
        assert_eq!(parsed.tracestate, event.tracestate);
        assert_eq!(parsed.data, event.data);
        assert_eq!(
            parsed.time.map(|t| t.timestamp_micros()),
            event.time.map(|t| t.timestamp_micros())
        );
    }

    #[test]
    fn each_attribute_fault_has_its_kind() {
        let kind = |body: &str| {
            CloudEvent::from_structured(body.as_bytes())
                .expect_err("must fail")
                .kind
        };
        assert_eq!(kind("{not json"), InvalidKind::InvalidJson);
        assert_eq!(kind("[1]"), InvalidKind::NotCloudEvent);
        assert_eq!(
            kind(r#"{"id":"1","source":"s","type":"t"}"#),
            InvalidKind::MissingAttribute
        );
        assert_eq!(
            kind(r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#),
            InvalidKind::BadSpecversion
        );
        assert_eq!(
            kind(r#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#),
            InvalidKind::MissingAttribute
        );
        assert_eq!(
            kind(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"yesterday"}"#),
            InvalidKind::InvalidData
        );
    }

    fn structured_with(name: &str, value: &str) -> Result<CloudEvent, InvalidEvent> {
        let mut event = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        event[name] = json!(value);
        CloudEvent::from_structured(event.to_string().as_bytes())
    }

    #[test]
    fn each_attribute_is_bounded_in_bytes() {
        for (name, max) in ATTRIBUTE_MAX_BYTES {
            let value = if name == "time" {
                format!("2026-01-01T00:00:00.{}Z", "1".repeat(max - 21))
            } else {
                "x".repeat(max)
            };
            assert_eq!(value.len(), max);
            assert!(structured_with(name, &value).is_ok(), "{name} at its bound");
            let over = format!("{value}x");
            let refused = structured_with(name, &over).expect_err(name);
            assert_eq!(refused.kind, InvalidKind::FieldTooLong, "{name}");
            assert!(refused.message.starts_with(&format!("attribute `{name}`")));
        }
        // Characters are not bytes: 100 CJK characters are 300 bytes.
        let cjk = structured_with("id", &"中".repeat(100)).expect_err("300 bytes");
        assert_eq!(cjk.kind, InvalidKind::FieldTooLong);
        let huge = structured_with("id", &"x".repeat(10_000)).expect_err("10,000 bytes");
        assert_eq!(
            huge.message,
            "attribute `id` is 10000 bytes long; at most 255 bytes (UTF-8) are allowed"
        );
    }

    #[test]
    fn stored_attributes_refuse_nul_and_echoes_stay_short() {
        for name in ["id", "source"] {
            let refused = structured_with(name, "a\0b").expect_err(name);
            assert_eq!(refused.kind, InvalidKind::InvalidData);
        }
        let mut event = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        event["specversion"] = json!("9".repeat(100_000));
        let refused = CloudEvent::from_structured(event.to_string().as_bytes()).expect_err("0.9");
        assert_eq!(refused.kind, InvalidKind::BadSpecversion);
        assert!(refused.message.len() < 200, "{}", refused.message);
    }

    #[test]
    fn an_event_built_in_code_is_checked_against_the_same_bounds() {
        let mut event = CloudEvent::new("pushq.notification.send", "/svc", json!({}));
        assert!(event.check_bounds().is_ok());
        event.id = "x".repeat(MAX_ID_BYTES + 1);
        assert_eq!(
            event.check_bounds().expect_err("too long").kind,
            InvalidKind::FieldTooLong
        );
    }

    #[test]
    fn data_base64_is_decoded() {
        let body = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"eyJhIjoxfQ=="}"#;
        let event = CloudEvent::from_structured(body.as_bytes()).expect("parses");
        assert_eq!(event.data, Some(json!({"a": 1})));
    }

    #[test]
    fn media_types_are_compared_by_essence() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("Application/Vnd.Acme+JSON"));
        assert!(!is_json_media_type("text/plain"));
        assert_eq!(
            media_type_essence("Application/CloudEvents+JSON; charset=utf-8"),
            STRUCTURED_CONTENT_TYPE
        );
    }
}
