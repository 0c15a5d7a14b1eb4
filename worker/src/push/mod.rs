//! Delivery to a push service: encryption, VAPID, endpoint policy, the HTTP
//! client and what its answers mean. Knows nothing of AMQP or SQL.

pub mod addresses;
pub mod classify;
pub mod client;
pub mod ece;
pub mod endpoint_policy;
pub mod limits;
pub mod pauses;
pub mod vapid;

pub use classify::{Verdict, classify_error, classify_status};
pub use client::{DeliveryError, HttpSettings, PushClient, PushMessage, PushResponse};
pub use endpoint_policy::EndpointPolicy;
pub use pauses::OriginPauses;
pub use vapid::{VapidPrivateKey, VapidSigner};
