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

/// How many push-service origins each per-origin map (rate limiters, VAPID
/// tokens, throttling state) keeps; the least recently used is dropped
/// beyond. Browsers hand us endpoints, and any subdomain of an allowed host
/// is an origin of its own, so without a bound these maps would grow for
/// ever. Forgetting an origin costs a fresh limiter or a new signature.
pub const MAX_ORIGINS: usize = 1024;

pub use classify::{Verdict, classify_error, classify_status};
pub use client::{DeliveryError, HttpSettings, PushClient, PushMessage, PushResponse};
pub use endpoint_policy::EndpointPolicy;
pub use pauses::OriginPauses;
pub use vapid::{VapidPrivateKey, VapidSigner};
