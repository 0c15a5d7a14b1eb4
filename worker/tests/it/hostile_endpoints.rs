//! Browsers hand pushq URLs; a hostile one must not make the worker call into
//! its own network, whatever the allow-list's names resolve to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pushq_producer::{
    NotificationSend, PushSubscription, SubscriptionKeys, SubscriptionRegister, Target,
};
use pushq_schemas::{ResultReason, ResultType};
use serde_json::json;

use crate::helpers::{TestApp, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_name_resolving_into_our_network_is_refused_at_registration_and_at_send_time() {
    // `localhost` is allowed by name, as a careless or hostile allow-list entry
    // would be; it resolves to loopback, where the fake push service listens.
    let app = TestApp::spawn_with(&[("PUSHQ_ENDPOINT_HOSTS", "localhost:*,{fake}")]).await;
    let browser = app.browser();
    let rebound = PushSubscription {
        endpoint: browser.endpoint.replace("127.0.0.1", "localhost"),
        expiration_time: None,
        keys: SubscriptionKeys {
            p256dh: browser.p256dh.clone(),
            auth: browser.auth.clone(),
        },
    };
    assert_ne!(rebound.endpoint, browser.endpoint);
    let mut results = app.watch_results().await;

    app.producer
        .register(&SubscriptionRegister {
            user: "mallory".into(),
            subscription: rebound.clone(),
            tags: Vec::new(),
        })
        .await
        .expect("published");
    let letters = app.dead_letters(1).await;
    assert_eq!(letters[0].kind, "endpoint_refused");
    assert!(
        letters[0].error.contains("non-public"),
        "{}",
        letters[0].error
    );
    assert_eq!(app.subscription_count().await, 0);

    app.producer
        .send(&NotificationSend::new(
            Target::Subscription(rebound),
            Some(json!("to loopback")),
        ))
        .await
        .expect("published");
    let result = results.next(1).await.remove(0);
    assert_eq!(result.event_type, ResultType::Failed.as_str());
    assert_eq!(result.data.reason, Some(ResultReason::EndpointRefused));
    results
        .none_within(std::time::Duration::from_millis(300))
        .await;
    results.close().await;
    assert!(
        app.fake.answered().is_empty(),
        "no request reached the loopback service: {:?}",
        app.fake.answered()
    );
    app.stop().await;
}

/// A listener where a proxy would be: it records every connection and
/// answers none, so a push sent through it never arrives.
struct CapturingProxy {
    url: String,
    connections: Arc<AtomicUsize>,
}

impl CapturingProxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { url, connections }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambient_proxy_variables_are_ignored_so_pushes_go_direct() {
    let proxy = CapturingProxy::start().await;
    let ambient: Vec<(&str, &str)> = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy.url.as_str()))
    .chain([("NO_PROXY", ""), ("no_proxy", "")])
    .collect();
    let app = TestApp::spawn_process(&ambient).await;
    let browser = app.browser();
    app.register(&browser, "quinn", &[]).await;
    app.send_text("quinn", "straight to the push service").await;
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered without the proxy");
    assert_eq!(received[0].text(), "straight to the push service");
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        0,
        "the proxy saw a connection"
    );
    app.stop().await;
}
