//! The example web app (examples/web) in headless Chromium: the page asks
//! permission on a click, subscribes with the VAPID key and hands the
//! subscription to its backend, which registers it through the SDK; a
//! notification sent from the page travels the SDK, RabbitMQ, the worker and
//! the fake push service, which decrypts it; that plaintext is delivered to
//! the service worker through the DevTools Protocol, which shows it.

use std::sync::Arc;

use pushq_example_web::{AppState, router};
use pushq_producer::Producer;
use serde_json::{Value, json};

use crate::cdp::Chromium;
use crate::helpers::{AMQP_URL, TestApp, WAIT};

/// No push service is reachable offline, so the browser's own subscribe
/// would fail: the page gets the fake push service's subscription instead,
/// and the options it subscribed with are kept for the test to check.
fn push_manager_stub(subscription: &Value) -> String {
    format!(
        r#"(() => {{
  const subscription = {subscription};
  let current = null;
  PushManager.prototype.subscribe = async function (options) {{
    const key = new Uint8Array(options.applicationServerKey);
    window.__pushqSubscribedWith = {{
      userVisibleOnly: options.userVisibleOnly,
      applicationServerKey: btoa(String.fromCharCode(...key)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''),
    }};
    current = {{
      endpoint: subscription.endpoint,
      options,
      toJSON: () => subscription,
      unsubscribe: async () => {{ current = null; return true; }},
    }};
    return current;
  }};
  PushManager.prototype.getSubscription = async function () {{ return current; }};
}})();"#
    )
}

/// Starts the example's backend, publishing to this test's topology with
/// its worker's VAPID key; returns its origin.
async fn serve_example(app: &TestApp) -> String {
    // The example is given the worker's settings, as its README says.
    let policy =
        pushq_producer::EndpointPolicy::from_settings(Some(&app.fake.host_entry()), Some("true"))
            .expect("the test's endpoint policy");
    let producer = Producer::connect(AMQP_URL, app.topology.clone(), "/example-web")
        .await
        .expect("producer")
        .with_endpoint_policy(policy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let state = AppState {
        producer: Arc::new(producer),
        vapid_public_key: app.vapid.public_key_base64url(),
    };
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    origin
}

/// Counts the service worker's calls to showNotification and how each
/// ended, so that a test can wait until a push was handled and a failure
/// says whether the push arrived at all.
const COUNT_SHOWN: &str = r#"(() => {
  const counts = { called: 0, settled: 0, failed: [] };
  self.__pushqShown = counts;
  const show = self.registration.showNotification.bind(self.registration);
  self.registration.showNotification = (...args) => {
    counts.called += 1;
    return show(...args).then(
      (done) => { counts.settled += 1; return done; },
      (refused) => { counts.failed.push(String(refused)); counts.settled += 1; throw refused; },
    );
  };
  return true;
})()"#;

/// What `registration.getNotifications()` shows, as JSON.
const SHOWN: &str = "self.registration.getNotifications().then((shown) => shown.map((n) => ({title: n.title, body: n.body, icon: n.icon, tag: n.tag, url: n.data && n.data.url})))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_subscribes_and_its_service_worker_shows_the_delivered_notification() {
    let app = TestApp::spawn().await;
    let device = app.browser();
    let origin = serve_example(&app).await;

    let chromium = Chromium::launch().await;
    let page = chromium.new_page().await;
    chromium.call("Page.enable", json!({}), Some(&page)).await;
    chromium
        .call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": push_manager_stub(&device.to_json())}),
            Some(&page),
        )
        .await;
    chromium
        .call("ServiceWorker.enable", json!({}), Some(&page))
        .await;
    chromium
        .call("Runtime.enable", json!({}), Some(&page))
        .await;
    chromium.call("Log.enable", json!({}), Some(&page)).await;

    // Blocked first: the page says so and offers nothing.
    chromium
        .call(
            "Browser.setPermission",
            json!({"origin": origin, "permission": {"name": "notifications"}, "setting": "denied"}),
            None,
        )
        .await;
    chromium
        .call(
            "Page.navigate",
            json!({"url": format!("{origin}/")}),
            Some(&page),
        )
        .await;
    chromium
        .wait_for(
            &page,
            "the page reports the block",
            "document.getElementById('status').textContent.includes('blocked')",
        )
        .await;
    assert_eq!(
        chromium
            .evaluate(&page, "document.getElementById('enable').disabled", false)
            .await,
        json!(true)
    );

    // Allowed (as the user would in the permission prompt), then enabled by a click.
    chromium
        .call(
            "Browser.grantPermissions",
            json!({"origin": origin, "permissions": ["notifications"]}),
            None,
        )
        .await;
    chromium.call("Page.reload", json!({}), Some(&page)).await;
    chromium
        .wait_for(
            &page,
            "the page is ready to subscribe",
            "document.getElementById('enable').disabled === false",
        )
        .await;
    assert_eq!(
        chromium
            .evaluate(&page, "window.__pushqSubscribedWith === undefined", false)
            .await,
        json!(true),
        "nothing is subscribed before the click"
    );
    chromium
        .evaluate(&page, "document.getElementById('enable').click()", true)
        .await;
    chromium
        .wait_for(
            &page,
            "the page reports notifications on",
            "document.getElementById('status').textContent.includes('on for this browser')",
        )
        .await;
    if let Ok(path) = std::env::var("PUSHQ_TEST_SCREENSHOT") {
        let shot = chromium
            .call(
                "Page.captureScreenshot",
                json!({"format": "png"}),
                Some(&page),
            )
            .await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png"))
            .expect("base64");
        std::fs::write(path, png).expect("screenshot written");
    }
    let subscribed_with = chromium
        .evaluate(&page, "window.__pushqSubscribedWith", false)
        .await;
    assert_eq!(
        subscribed_with,
        json!({"userVisibleOnly": true, "applicationServerKey": app.vapid.public_key_base64url()})
    );
    let user = chromium
        .evaluate(&page, "localStorage.getItem('pushq-example-user')", false)
        .await;
    app.wait_until("the backend registered the subscription", || async {
        app.subscription_count().await == 1
    })
    .await;
    let (stored_user, stored_endpoint): (String, String) =
        sqlx::query_as("SELECT user_id, endpoint FROM subscriptions")
            .fetch_one(&app.pool)
            .await
            .expect("stored");
    assert_eq!(json!(stored_user), user);
    assert_eq!(stored_endpoint, device.endpoint);

    // The page's test button: backend → SDK → RabbitMQ → worker → push service.
    chromium
        .evaluate(&page, "document.getElementById('test').click()", true)
        .await;
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    let plaintext = received[0].text();
    let payload: Value = serde_json::from_str(&plaintext).expect("a JSON payload");
    assert_eq!(payload["title"], "Hello from pushq");

    // The push service would now hand those bytes to the browser. The test
    // waits on each state the push depends on instead of a deadline: the
    // registration's version activated, the worker attached (so it is
    // running, is not stopped as idle, and its console is recorded), then
    // the push handled by its call to showNotification, then the notification.
    let registration_id = chromium.active_registration(&format!("{origin}/")).await;
    let worker = chromium
        .attach_service_worker(&format!("{origin}/sw.js"))
        .await;
    chromium
        .call("Runtime.enable", json!({}), Some(&worker))
        .await;
    chromium.call("Log.enable", json!({}), Some(&worker)).await;
    chromium.evaluate(&worker, COUNT_SHOWN, false).await;
    let deliver_push = |data: String| {
        let (chromium, page, origin, registration_id) =
            (&chromium, &page, &origin, &registration_id);
        async move {
            chromium.mark("the test delivers a push");
            chromium
                .call(
                    "ServiceWorker.deliverPushMessage",
                    json!({"origin": origin, "registrationId": registration_id, "data": data}),
                    Some(page),
                )
                .await;
        }
    };
    deliver_push(plaintext.clone()).await;
    chromium
        .wait_for(
            &worker,
            "the service worker handled the push",
            "self.__pushqShown.settled === 1 || self.__pushqShown",
        )
        .await;
    chromium
        .wait_for(
            &worker,
            "the notification is shown",
            &format!("{SHOWN}.then((shown) => shown.length === 1 || shown)"),
        )
        .await;
    let shown = chromium.evaluate(&worker, SHOWN, false).await;
    assert_eq!(shown[0]["title"], "Hello from pushq");
    assert_eq!(shown[0]["body"], payload["body"]);
    assert_eq!(shown[0]["icon"], format!("{origin}/icon.svg"));
    assert_eq!(shown[0]["url"], format!("{origin}/?from=notification"));

    // A click: Chromium offers no protocol command to click a notification,
    // and it refuses to open windows for a click the page dispatches itself.
    // So the service worker's own handler runs on a dispatched click, and the
    // test records the window it asks to open.
    let clicked = chromium
        .evaluate(
            &worker,
            r#"(async () => {
  const opened = [];
  const openWindow = self.clients.openWindow.bind(self.clients);
  self.clients.openWindow = (url) => { opened.push(url); return openWindow(url).catch((refused) => String(refused)); };
  const [notification] = await self.registration.getNotifications();
  const handled = new Promise((resolve) => self.addEventListener('notificationclick', () => setTimeout(resolve, 100), { once: true }));
  self.dispatchEvent(new NotificationEvent('notificationclick', { notification }));
  await handled;
  return { opened, left: (await self.registration.getNotifications()).length };
})()"#,
            false,
        )
        .await;
    assert_eq!(
        clicked,
        json!({"opened": [format!("{origin}/?from=notification")], "left": 0}),
        "the click closes the notification and opens its page"
    );

    // A push that is not the backend's JSON still shows something sensible.
    deliver_push("plain words".into()).await;
    chromium
        .wait_for(
            &worker,
            "the service worker handled the plain push",
            "self.__pushqShown.settled === 2 || self.__pushqShown",
        )
        .await;
    chromium
        .wait_for(
            &worker,
            "the plain push is shown",
            &format!("{SHOWN}.then((shown) => shown.length === 1 || shown)"),
        )
        .await;
    let shown = chromium.evaluate(&worker, SHOWN, false).await;
    assert_eq!(shown[0]["title"], "New notification");
    assert_eq!(shown[0]["body"], "plain words");

    // Disabling unregisters at the backend, and the worker deletes it.
    chromium
        .evaluate(&page, "document.getElementById('disable').click()", true)
        .await;
    app.wait_until("the subscription is unregistered", || async {
        app.subscription_count().await == 0
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_backend_refuses_an_invalid_subscription_with_the_reason() {
    let app = TestApp::spawn().await;
    let origin = serve_example(&app).await;
    pushq_worker::push::client::install_crypto_provider();
    let client = reqwest::Client::new();

    let key = client
        .get(format!("{origin}/vapid-public-key"))
        .send()
        .await
        .expect("key");
    assert_eq!(
        key.text().await.expect("text"),
        app.vapid.public_key_base64url()
    );

    let device = app.browser();
    let mut subscription = device.to_json();
    subscription["keys"]["p256dh"] = json!("not-a-point-on-the-curve");
    let refused = client
        .post(format!("{origin}/subscriptions"))
        .header("content-type", "application/json")
        .body(json!({"user": "kate", "subscription": subscription}).to_string())
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status().as_u16(), 400);
    let reason: Value = serde_json::from_str(&refused.text().await.expect("body")).expect("json");
    assert!(
        reason["error"]
            .as_str()
            .is_some_and(|e| e.contains("p256dh")),
        "{reason}"
    );
    assert_eq!(app.subscription_count().await, 0, "nothing was published");
    app.stop().await;
}
