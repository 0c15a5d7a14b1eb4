//! The CloudEvent `type` values of the contract; each is also the routing key.

pub const SUBSCRIPTION_REGISTER: &str = "pushq.subscription.register";
pub const SUBSCRIPTION_UNREGISTER: &str = "pushq.subscription.unregister";
pub const NOTIFICATION_SEND: &str = "pushq.notification.send";

/// Binding key of the jobs queue on the producer exchange.
pub const NOTIFICATION_BINDING: &str = "pushq.notification.*";
/// Binding key of the subscriptions queue on the producer exchange.
pub const SUBSCRIPTION_BINDING: &str = "pushq.subscription.*";

/// The prefix of the worker's own types: accepted only on its own route
/// (the default exchange and the delay queues), never through the producer
/// exchange.
pub const INTERNAL_PREFIX: &str = "pushq.internal.";

/// Internal: a delivery waiting for its next attempt, back from a delay queue.
/// Never published to the producer exchange; not part of the producer contract.
pub const INTERNAL_RETRY: &str = "pushq.internal.retry";

/// Internal: one id range of a large audience, delivered by whichever replica
/// takes it. Like retries, never part of the producer contract.
pub const INTERNAL_CHUNK: &str = "pushq.internal.chunk";
