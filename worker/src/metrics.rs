//! The worker's Prometheus metrics (DESIGN §2.6), rendered by `/metrics`.
//! Each [`Metrics`] owns its recorder instead of installing a process-wide
//! one, so two workers in one process (the tests, an embedding service) keep
//! their counts apart.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use pushq_schemas::{InvalidKind, ResultReason, ResultType};

use crate::push::EndpointPolicy;

const DELIVERIES: &str = "pushq_deliveries_total";
const PUSH_DURATION: &str = "pushq_push_duration_seconds";
const DELIVERY_LATENCY: &str = "pushq_delivery_latency_seconds";
const DEAD_LETTERS: &str = "pushq_dead_letters_total";
const IN_FLIGHT: &str = "pushq_in_flight";
const RATE_LIMIT_WAIT: &str = "pushq_rate_limit_wait_seconds";
const SUBSCRIPTIONS_DELETED: &str = "pushq_subscriptions_deleted_total";
const SENDER_FAULTS: &str = "pushq_sender_faults_total";
const RESULTS_REFUSED: &str = "pushq_results_refused_total";
const LIVE_REPLICAS: &str = "pushq_live_replicas";

/// A push service answers in tens of milliseconds when healthy and is cut off
/// by the request timeout (20 s) when not.
const PUSH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
];
/// From the event's time to its outcome: milliseconds for a live delivery,
/// hours for one that went through the retry schedule.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
];
/// The limiter waits at most 250 ms before deferring a delivery.
const WAIT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    in_flight: metrics::Gauge,
    /// Names the `push_service` label: only configured push services, so
    /// browser-supplied origins never grow the series.
    push_services: Option<Arc<EndpointPolicy>>,
}

/// The `push_service` label of an origin no configured push service covers.
pub const OTHER_PUSH_SERVICE: &str = "other";

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = Arc::new(
            [
                (PUSH_DURATION, PUSH_BUCKETS),
                (DELIVERY_LATENCY, LATENCY_BUCKETS),
                (RATE_LIMIT_WAIT, WAIT_BUCKETS),
            ]
            .into_iter()
            .fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
                builder
                    .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                    .unwrap_or_else(|_| unreachable!("the bucket lists are not empty"))
            })
            .build_recorder(),
        );
        for (name, help) in [
            (DELIVERIES, "Delivery outcomes by push service (origin)."),
            (
                DEAD_LETTERS,
                "Events dead-lettered, by kind (x-pushq-error-kind).",
            ),
            (
                SUBSCRIPTIONS_DELETED,
                "Stored subscriptions deleted: gone, failing, or expired.",
            ),
            (
                RESULTS_REFUSED,
                "Result events a queue bound to the results exchange refused (full); not published again.",
            ),
            (
                SENDER_FAULTS,
                "Deliveries refused for the sender's fault (our VAPID credentials, the notification), by reason; the subscription is kept.",
            ),
        ] {
            recorder.describe_counter(name.into(), None, SharedString::const_str(help));
        }
        for (name, help) in [
            (PUSH_DURATION, "Round trip of the POST to the push service."),
            (
                DELIVERY_LATENCY,
                "From the event's time (or its first receipt) to the delivery's outcome.",
            ),
            (
                RATE_LIMIT_WAIT,
                "Time spent waiting for our own rate limits before a POST.",
            ),
        ] {
            recorder.describe_histogram(
                name.into(),
                Some(Unit::Seconds),
                SharedString::const_str(help),
            );
        }
        recorder.describe_gauge(
            IN_FLIGHT.into(),
            None,
            SharedString::const_str("Requests to push services in flight."),
        );
        recorder.describe_gauge(
            LIVE_REPLICAS.into(),
            None,
            SharedString::const_str(
                "Live replicas as this one last saw them: each takes this fraction of every configured rate.",
            ),
        );
        let in_flight = recorder.register_gauge(&Key::from_static_name(IN_FLIGHT), &METADATA);
        in_flight.set(0.0);
        let metrics = Self {
            recorder,
            in_flight,
            push_services: None,
        };
        // Series that exist from the start, so that an alert on their rate
        // fires on the first increase instead of on the series appearing.
        for kind in InvalidKind::ALL {
            metrics
                .counter(DEAD_LETTERS, dead_letter_labels(kind.as_str()))
                .absolute(0);
        }
        for reason in ["gone", "failing", "expired"] {
            metrics
                .counter(
                    SUBSCRIPTIONS_DELETED,
                    vec![Label::from_static_parts("reason", reason)],
                )
                .absolute(0);
        }
        metrics
    }

    /// Labels `push_service` with the entry of `policy` an origin matches
    /// (`fcm.googleapis.com`), or `other`.
    pub fn labelling_push_services_by(mut self, policy: EndpointPolicy) -> Self {
        self.push_services = Some(Arc::new(policy));
        self
    }

    fn push_service_label(&self, origin: &str) -> Label {
        let name = self
            .push_services
            .as_ref()
            .and_then(|policy| policy.push_service(origin))
            .unwrap_or_else(|| OTHER_PUSH_SERVICE.to_owned());
        Label::new("push_service", name)
    }

    /// One delivery's outcome at `origin`, published as a result of `result_type`.
    pub fn delivery(&self, result_type: ResultType, origin: &str) {
        self.counter(
            DELIVERIES,
            vec![
                Label::from_static_parts("outcome", result_type.outcome()),
                self.push_service_label(origin),
            ],
        )
        .increment(1);
    }

    pub fn push_duration(&self, elapsed: Duration) {
        self.histogram(PUSH_DURATION).record(elapsed.as_secs_f64());
    }

    pub fn delivery_latency(&self, elapsed: Duration) {
        self.histogram(DELIVERY_LATENCY)
            .record(elapsed.as_secs_f64());
    }

    pub fn rate_limit_wait(&self, waited: Duration) {
        self.histogram(RATE_LIMIT_WAIT).record(waited.as_secs_f64());
    }

    pub fn dead_letter(&self, kind: &str) {
        self.counter(DEAD_LETTERS, dead_letter_labels(kind))
            .increment(1);
    }

    /// `reason`: `gone`, `failing` (past PUSHQ_MAX_CONSECUTIVE_FAILURES) or `expired`.
    pub fn subscriptions_deleted(&self, reason: &'static str, count: u64) {
        if count > 0 {
            self.counter(
                SUBSCRIPTIONS_DELETED,
                vec![Label::from_static_parts("reason", reason)],
            )
            .increment(count);
        }
    }

    /// A push service refused our credentials or the notification itself.
    pub fn sender_fault(&self, reason: ResultReason, origin: &str) {
        self.counter(
            SENDER_FAULTS,
            vec![
                Label::from_static_parts("reason", reason.as_str()),
                self.push_service_label(origin),
            ],
        )
        .increment(1);
    }

    pub fn results_refused(&self, count: usize) {
        let counter = self.counter(RESULTS_REFUSED, Vec::new());
        counter.increment(count as u64);
    }

    /// Counts one request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }

    /// The replicas sharing the configured rates, this one included.
    pub fn live_replicas(&self, live: u32) {
        self.recorder
            .register_gauge(&Key::from_static_name(LIVE_REPLICAS), &METADATA)
            .set(f64::from(live));
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str) -> metrics::Histogram {
        self.recorder
            .register_histogram(&Key::from_static_name(name), &METADATA)
    }
}

fn dead_letter_labels(kind: &str) -> Vec<Label> {
    vec![Label::new("kind", kind.to_owned())]
}

#[derive(Debug)]
pub struct InFlight(metrics::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_services_are_the_configured_ones_or_other() {
        let policy = EndpointPolicy::parse(
            "fcm.googleapis.com,push.services.mozilla.com,127.0.0.1:8080",
            true,
        )
        .expect("policy");
        let metrics = Metrics::new().labelling_push_services_by(policy);
        for n in 0..50 {
            metrics.delivery(
                ResultType::Succeeded,
                &format!("https://n{n}.push.services.mozilla.com"),
            );
        }
        metrics.delivery(ResultType::Succeeded, "http://127.0.0.1:8080");
        metrics.delivery(ResultType::Skipped, "");
        metrics.delivery(ResultType::Failed, "https://elsewhere.example");
        let text = metrics.render();
        for series in [
            r#"pushq_deliveries_total{outcome="succeeded",push_service="push.services.mozilla.com"} 50"#,
            r#"pushq_deliveries_total{outcome="succeeded",push_service="127.0.0.1:8080"} 1"#,
            r#"pushq_deliveries_total{outcome="skipped",push_service="other"} 1"#,
            r#"pushq_deliveries_total{outcome="failed",push_service="other"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        assert_eq!(text.matches("pushq_deliveries_total{").count(), 4, "{text}");
    }

    #[test]
    fn renders_what_was_counted_under_the_designed_names() {
        let metrics = Metrics::new();
        let metrics = metrics.labelling_push_services_by(
            EndpointPolicy::parse(crate::push::endpoint_policy::DEFAULT_ENDPOINT_HOSTS, false)
                .expect("the default policy"),
        );
        metrics.delivery(ResultType::Succeeded, "https://fcm.googleapis.com");
        metrics.delivery(ResultType::Succeeded, "https://fcm.googleapis.com");
        metrics.delivery(
            ResultType::Gone,
            "https://updates.push.services.mozilla.com",
        );
        metrics.push_duration(Duration::from_millis(30));
        metrics.dead_letter("invalid_json");
        metrics.subscriptions_deleted("gone", 1);
        let guard = metrics.in_flight();
        let text = metrics.render();
        for series in [
            r#"pushq_deliveries_total{outcome="succeeded",push_service="fcm.googleapis.com"} 2"#,
            r#"pushq_deliveries_total{outcome="gone",push_service="push.services.mozilla.com"} 1"#,
            r#"pushq_push_duration_seconds_bucket{le="0.05"} 1"#,
            r#"pushq_dead_letters_total{kind="invalid_json"} 1"#,
            r#"pushq_subscriptions_deleted_total{reason="gone"} 1"#,
            "pushq_in_flight 1",
            r#"pushq_dead_letters_total{kind="retries_exhausted"} 0"#,
            r#"pushq_subscriptions_deleted_total{reason="expired"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        drop(guard);
        assert!(metrics.render().contains("pushq_in_flight 0"));
    }
}
