//! The publish span's W3C trace context, written into the event (the
//! CloudEvents distributed tracing extension).

use std::str::FromStr;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use pushq_schemas::CloudEvent;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Sets the event's `traceparent` and `tracestate` to `span`'s. Without a
/// `tracing-opentelemetry` layer the current OpenTelemetry context (if any)
/// is continued instead, and an event with neither keeps what it carries.
pub(crate) fn inject(span: &tracing::Span, event: &mut CloudEvent) {
    if let Some(parent) = event
        .traceparent
        .as_deref()
        .and_then(|traceparent| parse(traceparent, event.tracestate.as_deref()))
        && !is_valid(&tracing::Span::current().context())
        && !is_valid(&Context::current())
    {
        // Only fails when no layer exports spans; the fallbacks below apply then.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    let mut context = span.context();
    if !is_valid(&context) {
        context = Context::current();
    }
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return;
    }
    event.traceparent = Some(format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    ));
    let state = span_context.trace_state().header();
    event.tracestate = (!state.is_empty()).then_some(state);
}

fn is_valid(context: &Context) -> bool {
    context.span().span_context().is_valid()
}

/// A version-00 `traceparent` (W3C Trace Context §3.2).
fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut fields = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if version != "00" || fields.next().is_some() || flags.len() != 2 {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        tracestate
            .and_then(|state| TraceState::from_str(state).ok())
            .unwrap_or_default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_version_00_parents_are_taken() {
        let parsed = parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=value"),
        )
        .expect("valid");
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parsed.is_sampled());
        assert_eq!(parsed.trace_state().header(), "vendor=value");
        for invalid in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            assert!(parse(invalid, None).is_none(), "{invalid}");
        }
    }

    #[test]
    fn without_an_exporting_layer_an_explicit_traceparent_is_kept() {
        let mut event = CloudEvent::new("pushq.notification.send", "/t", serde_json::json!({}));
        event.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        inject(&tracing::info_span!("publish"), &mut event);
        assert_eq!(
            event.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
