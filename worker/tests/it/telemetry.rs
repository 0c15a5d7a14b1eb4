//! What operators and tracing backends see: one trace from the producer's
//! span to the push service, exported over OTLP; `/metrics` counting what
//! happened; `/readyz` failing while the broker is unreachable.

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use pushq_fake_push::Reply;
use pushq_producer::{NotificationSend, Target};
use serde_json::json;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

use crate::collector::{CLIENT, CONSUMER, Collector, INTERNAL, PRODUCER, ReceivedSpan};
use crate::helpers::{TestApp, WAIT};
use crate::proxy::TcpProxy;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// The service that publishes: its own tracer provider exporting to the same
/// collector, as a microservice using the SDK would have.
fn producer_tracing(collector: &Collector) -> opentelemetry_sdk::trace::SdkTracerProvider {
    let endpoint = format!("{}/v1/traces", collector.endpoint());
    // The exporter's blocking HTTP client must be built outside the runtime.
    std::thread::spawn(move || {
        use opentelemetry_otlp::WithExportConfig;
        pushq_worker::push::client::install_crypto_provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .expect("exporter");
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("checkout-service")
                    .build(),
            )
            .build()
    })
    .join()
    .expect("provider built")
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str, kind: i32) -> &'a ReceivedSpan {
    let matching: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.name == name && span.kind == kind)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {name} span of kind {kind}: {spans:#?}"
    );
    matching[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_one_trace_from_the_producer_span_to_the_push_service() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let mut app = TestApp::spawn_process(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "pushq-worker-test"),
        // Nothing is exported before shutdown unless the flush at exit works.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("RUST_LOG", "info,pushq_worker=debug"),
    ])
    .await;
    let browser = app.browser();
    app.register(&browser, "carol", &[]).await;
    // One 503 first, so that the retry's spans join the trace too.
    app.fake.script(&browser, [Reply::status(503)]);
    let mut results = app.watch_results().await;

    let provider = producer_tracing(&collector);
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("checkout"))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.target().starts_with("pushq_producer")
                    || metadata.target().starts_with("it")
            })),
    );
    let secret_payload = "Your parcel is at the door, code 7731";
    let event_id = {
        let _default = tracing::subscriber::set_default(subscriber);
        // The caller's own span, continuing a trace that arrived with its request.
        let caller = tracing::info_span!("checkout.complete");
        let _ = caller.set_parent(Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(TRACE_ID).expect("trace id"),
            SpanId::from_hex(CALLER_SPAN_ID).expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )));
        let send = NotificationSend::new(
            Target::User("carol".into()),
            Some(json!({"title": "Delivery", "body": secret_payload})),
        );
        app.producer
            .send(&send)
            .instrument(caller)
            .await
            .expect("published")
    };
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    assert!(received[0].text().contains(secret_payload));
    let outcomes = results.next(2).await;
    results.close().await;
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("producer spans flushed")
        .expect("producer provider shut down");
    app.stop_worker().await;

    let spans: Vec<ReceivedSpan> = collector
        .spans()
        .into_iter()
        .filter(|span| span.trace_id == TRACE_ID)
        .collect();
    let publish = one(&spans, "publish pushq.notification.send", PRODUCER);
    assert_eq!(publish.service, "checkout-service");
    let caller = one(&spans, "checkout.complete", INTERNAL);
    assert_eq!(caller.parent_span_id, CALLER_SPAN_ID);
    assert_eq!(publish.parent_span_id, caller.span_id);
    assert_eq!(
        publish.attribute("messaging.message.id"),
        Some(event_id.as_str())
    );
    let jobs: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.name == "pushq.job" && span.kind == CONSUMER)
        .collect();
    assert_eq!(jobs.len(), 2, "the notification and its retry: {spans:#?}");
    let first = jobs
        .iter()
        .find(|job| job.parent_span_id == publish.span_id)
        .expect("the first job continues the producer's span");
    let retry = jobs
        .iter()
        .find(|job| job.parent_span_id == first.span_id)
        .expect("the retry continues the first job's span");
    assert_eq!(first.service, "pushq-worker-test");
    assert_eq!(
        first.attribute("cloudevents.event_id"),
        Some(event_id.as_str())
    );
    assert_eq!(
        first.attribute("messaging.destination.name"),
        Some(app.topology.jobs_queue().as_str())
    );
    assert_eq!(
        retry.attribute("cloudevents.event_type"),
        Some("pushq.internal.retry")
    );
    assert_eq!(
        retry.attribute("messaging.destination.name"),
        Some(app.topology.due_queue().as_str()),
        "a retry comes back through the due queue"
    );
    let attempt = |job: &ReceivedSpan| -> ReceivedSpan {
        spans
            .iter()
            .find(|span| {
                span.name == "pushq.deliver"
                    && span.kind == CLIENT
                    && span.parent_span_id == job.span_id
            })
            .cloned()
            .unwrap_or_else(|| panic!("no delivery under {job:?}"))
    };
    let (failed, delivered) = (attempt(first), attempt(retry));
    for (deliver, number, status, outcome) in [
        (&failed, "1", "503", "retrying"),
        (&delivered, "2", "201", "succeeded"),
    ] {
        assert_eq!(deliver.attribute("server.address"), Some("127.0.0.1"));
        let port = app.fake.addr().port().to_string();
        assert_eq!(deliver.attribute("server.port"), Some(port.as_str()));
        assert_eq!(deliver.attribute("pushq.attempt"), Some(number));
        assert_eq!(deliver.attribute("http.response.status_code"), Some(status));
        assert_eq!(deliver.attribute("pushq.outcome"), Some(outcome));
        let result = outcomes
            .iter()
            .find(|result| result.event_type == format!("pushq.delivery.{outcome}"))
            .expect("its result");
        assert_eq!(
            result.traceparent.as_deref(),
            Some(format!("00-{TRACE_ID}-{}-01", deliver.span_id).as_str()),
            "the result event carries the delivery span's context"
        );
    }

    let private_key = app.vapid.to_base64url();
    let path = browser.endpoint.rsplit('/').next().expect("endpoint path");
    for secret in [
        secret_payload,
        path,
        &browser.auth,
        &browser.p256dh,
        &private_key,
    ] {
        for span in collector.spans() {
            for (key, value) in &span.attributes {
                assert!(
                    !value.contains(secret),
                    "span {} attribute {key} leaks",
                    span.name
                );
            }
        }
        for line in app.process().log_lines() {
            assert!(!line.contains(secret), "a log line leaks: {line}");
        }
    }
    let delivered_line = app
        .process()
        .log_lines()
        .into_iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .find(|line| line["message"] == "delivered")
        .expect("a JSON log line for the delivery");
    assert_eq!(
        delivered_line["spans"][0]["trace_id"], TRACE_ID,
        "log lines carry the trace id: {delivered_line}"
    );
    app.clean_up().await;
}

/// The value of one sample line of the Prometheus text, if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_deliveries_that_happened() {
    let app = TestApp::spawn().await;
    let (kept, gone) = (app.browser(), app.browser());
    app.register(&kept, "dora", &[]).await;
    app.register(&gone, "dora", &[]).await;
    app.fake.unsubscribe(&gone);
    app.send_text("dora", "hello").await;
    app.wait_until("the gone subscription is deleted", || async {
        app.subscription_count().await == 1
    })
    .await;
    app.send_text("dora", "again").await;
    app.fake
        .wait_for_received(2, WAIT)
        .await
        .expect("both delivered");
    let origin = app.fake.host_entry();
    let delivered =
        format!(r#"pushq_deliveries_total{{outcome="succeeded",push_service="{origin}"}}"#);
    // Each count is taken as its delivery ends, after the push service has
    // answered (and after the fake push service has counted it): wait until
    // the scrape shows the last of them, not only the requests.
    let metrics = std::sync::Mutex::new(String::new());
    app.wait_until("the metrics show every delivery", || async {
        let scraped = app.get("/metrics").await.1;
        let done = sample(&scraped, &delivered) == Some(2.0)
            && sample(&scraped, "pushq_push_duration_seconds_count") == Some(3.0)
            && sample(&scraped, "pushq_delivery_latency_seconds_count") == Some(3.0)
            && sample(&scraped, "pushq_in_flight") == Some(0.0);
        *metrics.lock().expect("metrics") = scraped;
        done
    })
    .await;
    let metrics = metrics.into_inner().expect("metrics");
    let deliveries = |outcome: &str| {
        sample(
            &metrics,
            &format!(r#"pushq_deliveries_total{{outcome="{outcome}",push_service="{origin}"}}"#),
        )
    };
    assert_eq!(deliveries("succeeded"), Some(2.0), "{metrics}");
    assert_eq!(deliveries("gone"), Some(1.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "pushq_push_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "pushq_delivery_latency_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"pushq_subscriptions_deleted_total{reason="gone"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "pushq_in_flight"), Some(0.0));
    assert!(
        metrics.contains("# TYPE pushq_push_duration_seconds histogram"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_broker_is_unreachable_and_recovers() {
    let broker = TcpProxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let url = format!("amqp://guest:guest@{}/%2f", broker.addr);
    let app = TestApp::spawn_with(&[("PUSHQ_AMQP_URL", &url)]).await;
    assert_eq!(app.get("/readyz").await.0, 200);

    broker.cut();
    app.wait_until("/readyz answers 503", || async {
        app.get("/readyz").await.0 == 503
    })
    .await;
    assert_eq!(
        app.get("/healthz").await.0,
        200,
        "the process itself is sound"
    );

    broker.restore().await;
    app.wait_until("/readyz answers 200 again", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    let browser = app.browser();
    app.register(&browser, "erin", &[]).await;
    app.send_text("erin", "back").await;
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    assert_eq!(received[0].text(), "back");
    app.stop().await;
}
