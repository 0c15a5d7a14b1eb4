//! pushq's wire contract, shared by producers and workers so they cannot drift:
//! event types, CloudEvent attributes, event data with its validation, the
//! topology names derived from a prefix and the endpoint policy. The JSON
//! Schema files next to this crate state the same rules for producers written
//! in other languages.

pub mod data;
pub mod delays;
pub mod endpoint_policy;
pub mod envelope;
pub mod error;
pub mod error_text;
pub mod event_types;
mod field_errors;
pub mod keys;
pub mod payload;
pub mod results;
pub mod topology;

pub use data::{
    NotificationSend, PushSubscription, SubscriptionKeys, SubscriptionRegister,
    SubscriptionUnregister, Target, Urgency,
};
pub use endpoint_policy::{EndpointPolicy, Refusal};
pub use envelope::{CloudEvent, SPEC_VERSION, STRUCTURED_CONTENT_TYPE};
pub use error::{InvalidEvent, InvalidKind};
pub use results::{DeliveryResult, ResultReason, ResultType};
pub use topology::Topology;
