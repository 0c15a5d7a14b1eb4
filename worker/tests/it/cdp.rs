//! Just enough of the Chrome DevTools Protocol to drive Debian's headless
//! Chromium from a test: launch, send commands (flattened sessions), and
//! wait for events. Every wait is bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Chromium {
    _child: tokio::process::Child,
    _profile: TempDir,
    commands: mpsc::UnboundedSender<String>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    event_count: watch::Receiver<usize>,
    next_id: AtomicU64,
}

/// A profile directory removed when the browser goes.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);

impl Chromium {
    pub async fn launch() -> Self {
        let binary =
            std::env::var("PUSHQ_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "the browser test needs Chromium at {binary}: apt-get install chromium (or set PUSHQ_TEST_CHROMIUM)"
        );
        let profile =
            TempDir(std::env::temp_dir().join(format!("pushq-chromium-{}", uuid::Uuid::new_v4())));
        let mut child = tokio::process::Command::new(&binary)
            .args([
                "--headless=new",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("Chromium starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let url = tokio::time::timeout(TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return url.trim().to_owned();
                }
            }
            panic!("Chromium exited before listening for DevTools");
        })
        .await
        .expect("Chromium listens for DevTools in time");
        // Keep draining its stderr so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools websocket");
        let (mut sink, mut stream) = socket.split();
        let (commands, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (count_tx, event_count) = watch::channel(0);
        let (routed, kept) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if let Some(id) = value["id"].as_u64() {
                    if let Some(reply) = routed.lock().expect("pending").remove(&id) {
                        let _ = reply.send(value);
                    }
                } else {
                    let mut events = kept.lock().expect("events");
                    events.push(value);
                    count_tx.send_replace(events.len());
                }
            }
        });
        Self {
            _child: child,
            _profile: profile,
            commands,
            pending,
            events,
            event_count,
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends a command (to a page's or worker's session, or the browser's)
    /// and returns its `result`; a protocol error fails the test.
    pub async fn call(&self, method: &str, params: Value, session: Option<&str>) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (reply, answer) = oneshot::channel();
        self.pending.lock().expect("pending").insert(id, reply);
        self.commands
            .send(message.to_string())
            .expect("DevTools connection open");
        let answer = tokio::time::timeout(TIMEOUT, answer)
            .await
            .unwrap_or_else(|_| panic!("{method} got no answer"))
            .expect("answer");
        assert!(answer.get("error").is_none(), "{method} failed: {answer}");
        answer["result"].clone()
    }

    /// Evaluates an expression (awaiting a promise) and returns its value.
    pub async fn evaluate(&self, session: &str, expression: &str, user_gesture: bool) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true, "userGesture": user_gesture}),
                Some(session),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls an expression until it evaluates to `true`; until then it may
    /// also throw (the page still loading).
    pub async fn wait_for(&self, session: &str, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let result = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
                    Some(session),
                )
                .await;
            if result["result"]["value"] == json!(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}; last answer {result}\n{}",
                self.diagnosis()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Notes a step of the test among the browser's events, for [`Self::diagnosis`].
    pub fn mark(&self, step: &str) {
        let mut events = self.events.lock().expect("events");
        events.push(json!({"method": "pushq.mark", "params": {"step": step}}));
    }

    /// What the browser reported about its service workers and consoles, so
    /// that a failed wait explains itself: each version's latest state, the
    /// workers' errors, and every console message and exception seen.
    pub fn diagnosis(&self) -> String {
        let events = self.events.lock().expect("events");
        let mut versions: Vec<(String, Value)> = Vec::new();
        let mut lines = Vec::new();
        for event in events.iter() {
            let params = &event["params"];
            match event["method"].as_str().unwrap_or_default() {
                "ServiceWorker.workerVersionUpdated" => {
                    for version in params["versions"].as_array().into_iter().flatten() {
                        lines.push(format!(
                            "version {} is {} / {}",
                            version["versionId"], version["status"], version["runningStatus"]
                        ));
                        let id = version["versionId"].as_str().unwrap_or_default().to_owned();
                        versions.retain(|(known, _)| *known != id);
                        versions.push((id, version.clone()));
                    }
                }
                "ServiceWorker.workerErrorReported" => {
                    lines.push(format!("service worker error: {}", params["errorMessage"]));
                }
                "Runtime.consoleAPICalled" => {
                    let args: Vec<String> = params["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|arg| arg.get("value").unwrap_or(&arg["description"]).to_string())
                        .collect();
                    lines.push(format!(
                        "console.{} in session {}: {}",
                        params["type"].as_str().unwrap_or_default(),
                        event["sessionId"],
                        args.join(" ")
                    ));
                }
                "Runtime.exceptionThrown" => lines.push(format!(
                    "exception in session {}: {}",
                    event["sessionId"], params["exceptionDetails"]
                )),
                "Log.entryAdded" => lines.push(format!(
                    "log in session {}: {} {}",
                    event["sessionId"], params["entry"]["level"], params["entry"]["text"]
                )),
                "pushq.mark" => lines.push(format!("the test: {}", params["step"])),
                _ => {}
            }
        }
        let mut report = String::from("service worker versions (latest state of each):\n");
        for (_, version) in versions {
            report.push_str(&format!(
                "  version {} of registration {} {}: {} / {}\n",
                version["versionId"],
                version["registrationId"],
                version["scriptURL"],
                version["status"],
                version["runningStatus"]
            ));
        }
        report.push_str("what the browser said:\n");
        for line in lines {
            report.push_str(&format!("  {line}\n"));
        }
        report
    }

    /// Waits until the registration at `scope` has an activated version
    /// that is running; returns the registration id. A push delivered to a
    /// registration without an active version is dropped by the browser.
    pub async fn active_registration(&self, scope: &str) -> String {
        let registration = self
            .event("the service worker's registration", |event| {
                event["method"] == "ServiceWorker.workerRegistrationUpdated"
                    && event["params"]["registrations"]
                        .as_array()
                        .is_some_and(|all| all.iter().any(|r| r["scopeURL"] == scope))
            })
            .await;
        let registration_id = registration["params"]["registrations"]
            .as_array()
            .and_then(|all| all.iter().find(|r| r["scopeURL"] == scope))
            .map(|r| r["registrationId"].clone())
            .expect("registration id");
        let mut count = self.event_count.clone();
        let activated = tokio::time::timeout(TIMEOUT, async {
            loop {
                if self.version_of(&registration_id, "activated") {
                    return;
                }
                if count.changed().await.is_err() {
                    panic!("DevTools connection closed");
                }
            }
        })
        .await;
        assert!(
            activated.is_ok(),
            "no activated service worker for {scope}\n{}",
            self.diagnosis()
        );
        registration_id
            .as_str()
            .expect("registration id")
            .to_owned()
    }

    /// Whether the latest state of some version of `registration` has `status`.
    fn version_of(&self, registration: &Value, status: &str) -> bool {
        let events = self.events.lock().expect("events");
        let mut latest: HashMap<String, Value> = HashMap::new();
        for event in events
            .iter()
            .filter(|e| e["method"] == "ServiceWorker.workerVersionUpdated")
        {
            for version in event["params"]["versions"].as_array().into_iter().flatten() {
                if version["registrationId"] == *registration {
                    latest.insert(
                        version["versionId"].as_str().unwrap_or_default().to_owned(),
                        version.clone(),
                    );
                }
            }
        }
        latest.values().any(|v| v["status"] == status)
    }

    /// The first event (already received or coming) that `matches`.
    pub async fn event(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let mut count = self.event_count.clone();
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(event) = self
                    .events
                    .lock()
                    .expect("events")
                    .iter()
                    .find(|e| matches(e))
                {
                    return event.clone();
                }
                if count.changed().await.is_err() {
                    panic!("DevTools connection closed");
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no event: {what}"))
    }

    /// Opens a tab and attaches to it; returns the session id.
    pub async fn new_page(&self) -> String {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}), None)
            .await;
        self.attach(target["targetId"].as_str().expect("target id"))
            .await
    }

    pub async fn attach(&self, target_id: &str) -> String {
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                None,
            )
            .await;
        attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned()
    }

    /// Attaches to the service worker whose script URL starts with `script`.
    pub async fn attach_service_worker(&self, script: &str) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let targets = self.call("Target.getTargets", json!({}), None).await;
            let found = targets["targetInfos"].as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| {
                        t["type"] == "service_worker"
                            && t["url"].as_str().is_some_and(|url| url.starts_with(script))
                    })
                    .and_then(|t| t["targetId"].as_str().map(str::to_owned))
            });
            if let Some(target_id) = found {
                return self.attach(&target_id).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no service worker at {script}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
