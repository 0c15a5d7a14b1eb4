//! Every validator on its own: the endpoint rules, the key decoders, the
//! endpoint policy, and each event type's data as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushq_schemas::data::{ProducerEvent, validate_endpoint};
use pushq_schemas::event_types;
use pushq_schemas::keys::{decode_auth, decode_p256dh};
use pushq_worker::push::EndpointPolicy;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = validate_endpoint(text);
        let _ = decode_p256dh(text);
        let _ = decode_auth(text);
        let _ = EndpointPolicy::default().check(text);
        let _ = EndpointPolicy::parse(text, false);
    }
    if let Ok(data) = serde_json::from_slice::<serde_json::Value>(input) {
        for event_type in [
            event_types::NOTIFICATION_SEND,
            event_types::SUBSCRIPTION_REGISTER,
            event_types::SUBSCRIPTION_UNREGISTER,
        ] {
            if let Err(invalid) = ProducerEvent::parse(event_type, Some(&data)) {
                assert!(!invalid.message.is_empty());
            }
        }
    }
});
