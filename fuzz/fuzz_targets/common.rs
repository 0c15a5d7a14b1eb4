//! What every target checks once a message has decoded: the event's data
//! validates or gives a reason, and the event re-encodes into something that
//! decodes again (the worker re-publishes events as retries and dead letters).

use pushq_schemas::CloudEvent;
use pushq_schemas::data::{ProducerEvent, Target};
use pushq_schemas::InvalidEvent;
use pushq_worker::push::EndpointPolicy;

pub fn validate(decoded: Result<CloudEvent, InvalidEvent>) {
    let event = match decoded {
        Ok(event) => event,
        Err(invalid) => {
            assert!(!invalid.message.is_empty());
            return;
        }
    };
    assert!(CloudEvent::from_structured(&event.to_structured_json()).is_ok());
    let policy = EndpointPolicy::default();
    match ProducerEvent::parse(&event.event_type, event.data.as_ref()) {
        Ok(ProducerEvent::Send(send)) => {
            if let Target::Subscription(subscription) = &send.to {
                let _ = policy.check(&subscription.endpoint);
            }
            assert!(send.payload_bytes().len() <= pushq_schemas::payload::MAX_PLAINTEXT_BYTES);
        }
        Ok(ProducerEvent::Register(register)) => {
            let _ = policy.check(&register.subscription.endpoint);
        }
        Ok(ProducerEvent::Unregister(_)) => {}
        Err(invalid) => assert!(!invalid.message.is_empty()),
    }
}
