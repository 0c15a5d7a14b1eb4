//! The SDK connection's lapin logs, which never hold a message body.
//!
//! When the broker returns a `mandatory` message nothing takes, lapin logs it
//! whole at WARN (`Server returned us a message`, target
//! `lapin::returned_messages`), and at TRACE it logs every frame it receives,
//! body frames included. An event's body holds a subscription's endpoint and
//! keys or a notification's payload, which pushq never logs. Both are emitted
//! on lapin's own I/O thread, so the SDK installs there, and only there, a
//! dispatcher that passes everything on to the service's subscriber except
//! those events. The SDK learns about the returned message from the publisher
//! confirm (`Confirmation::Ack(Some(_))`) and reports it as
//! [`crate::PublishError::Unroutable`], without its body.

use std::cell::Cell;

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber, span};

thread_local! {
    static INSTALLED: Cell<bool> = const { Cell::new(false) };
}

/// Called on lapin's I/O thread before it reads any frame.
pub(crate) fn install_on_this_thread() {
    if INSTALLED.get() {
        return;
    }
    // A new thread sees the global subscriber: that is the one to forward to.
    let inner = tracing::dispatcher::get_default(Dispatch::clone);
    let filtered = Dispatch::new(WithoutBodies {
        inner,
        max_level: LevelFilter::current(),
    });
    // The guard would restore the previous default when dropped; this thread
    // is lapin's and lives as long as the connection, so it keeps this one.
    std::mem::forget(tracing::dispatcher::set_default(&filtered));
    INSTALLED.set(true);
}

/// Forwards to `inner` every span and event but those holding a message body.
struct WithoutBodies {
    inner: Dispatch,
    /// The service's level at connection: not lowering it keeps every other
    /// thread's disabled callsites on tracing's fast path.
    max_level: LevelFilter,
}

/// lapin's events that print a message's body: the returned message at WARN,
/// the frames (`frame` / `frames` fields) at TRACE.
fn holds_a_body(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    if !(target == "lapin" || target.starts_with("lapin::")) || !metadata.is_event() {
        return false;
    }
    (target == "lapin::returned_messages" && *metadata.level() == Level::WARN)
        || metadata
            .fields()
            .iter()
            .any(|field| matches!(field.name(), "frame" | "frames"))
}

impl Subscriber for WithoutBodies {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if holds_a_body(metadata) {
            Interest::never()
        } else {
            self.inner.register_callsite(metadata)
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        !holds_a_body(metadata) && self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max_level)
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        if !holds_a_body(event.metadata()) {
            self.inner.event(event);
        }
    }

    fn enter(&self, span: &span::Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &span::Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        self.inner.current_span()
    }
}
