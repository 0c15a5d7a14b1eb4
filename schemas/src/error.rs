//! Why an event was refused, as a stable code (the `x-pushq-error-kind` header
//! of a dead letter) and a sentence for people.

use std::fmt;

/// Stable codes of DESIGN §2.1 "Dead letters". Never rename one: operators
/// filter and alert on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidKind {
    NotCloudEvent,
    InvalidJson,
    MissingAttribute,
    BadSpecversion,
    UnknownType,
    InvalidData,
    UnknownTarget,
    PayloadTooLarge,
    EndpointRefused,
    /// A field longer than its bound in UTF-8 bytes (DESIGN §2.1 "Bounds").
    FieldTooLong,
    RetriesExhausted,
}

impl InvalidKind {
    pub const ALL: [InvalidKind; 11] = [
        Self::NotCloudEvent,
        Self::InvalidJson,
        Self::MissingAttribute,
        Self::BadSpecversion,
        Self::UnknownType,
        Self::InvalidData,
        Self::UnknownTarget,
        Self::PayloadTooLarge,
        Self::EndpointRefused,
        Self::FieldTooLong,
        Self::RetriesExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCloudEvent => "not_cloudevent",
            Self::InvalidJson => "invalid_json",
            Self::MissingAttribute => "missing_attribute",
            Self::BadSpecversion => "bad_specversion",
            Self::UnknownType => "unknown_type",
            Self::InvalidData => "invalid_data",
            Self::UnknownTarget => "unknown_target",
            Self::PayloadTooLarge => "payload_too_large",
            Self::EndpointRefused => "endpoint_refused",
            Self::FieldTooLong => "field_too_long",
            Self::RetriesExhausted => "retries_exhausted",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == code)
    }
}

impl fmt::Display for InvalidKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event that cannot be processed: what kind of wrong, and a sentence naming
/// the field. The sentence never quotes a payload or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidEvent {
    pub kind: InvalidKind,
    pub message: String,
}

impl InvalidEvent {
    pub fn new(kind: InvalidKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn data(message: impl Into<String>) -> Self {
        Self::new(InvalidKind::InvalidData, message)
    }

    pub fn too_long(message: impl Into<String>) -> Self {
        Self::new(InvalidKind::FieldTooLong, message)
    }
}

/// A name or short value from the input as a sentence may quote it: at most
/// 64 characters (then `…`), control characters shown as `?`. Only for what
/// names a thing (an attribute's value such as `specversion`, a field's name),
/// never for data a producer may hold secret.
pub fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut shown: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        shown.push('…');
    }
    shown
}

/// Checks a field's length in UTF-8 bytes, the unit that PostgreSQL's index
/// entries and AMQP's short strings are bounded in (a character may take 4).
pub fn check_bytes(field: &str, value: &str, max_bytes: usize) -> Result<(), InvalidEvent> {
    if value.len() > max_bytes {
        return Err(InvalidEvent::too_long(format!(
            "{field} is {} bytes long; at most {max_bytes} bytes (UTF-8) are allowed",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_code() {
        for kind in InvalidKind::ALL {
            assert_eq!(InvalidKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(
            InvalidKind::parse("field_too_long"),
            Some(InvalidKind::FieldTooLong)
        );
    }

    #[test]
    fn lengths_are_counted_in_bytes_and_excerpts_are_short() {
        assert!(check_bytes("user", &"中".repeat(85), 256).is_ok());
        let refused = check_bytes("user", &"中".repeat(86), 256).expect_err("258 bytes");
        assert_eq!(refused.kind, InvalidKind::FieldTooLong);
        assert_eq!(
            refused.message,
            "user is 258 bytes long; at most 256 bytes (UTF-8) are allowed"
        );
        assert_eq!(excerpt("a\nb"), "a?b");
        assert_eq!(excerpt(&"x".repeat(100)).chars().count(), 65);
    }
}
