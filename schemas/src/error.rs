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
    RetriesExhausted,
}

impl InvalidKind {
    pub const ALL: [InvalidKind; 10] = [
        Self::NotCloudEvent,
        Self::InvalidJson,
        Self::MissingAttribute,
        Self::BadSpecversion,
        Self::UnknownType,
        Self::InvalidData,
        Self::UnknownTarget,
        Self::PayloadTooLarge,
        Self::EndpointRefused,
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
}
