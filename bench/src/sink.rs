//! The fast local sink: a push service that answers 201 at once and notes
//! when each subscription's message arrived. It neither verifies nor decrypts
//! (the tests' fake push service does): here it must cost as little as
//! possible, since it shares the two cores with the worker.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use tokio::sync::watch;

/// One request the sink answered.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The subscription's index (its endpoint is `/push/{n}`).
    pub n: u32,
    pub at: Instant,
    /// The first 16 bytes of the body: an aes128gcm record's salt, random
    /// per encryption. Two arrivals with the same salt are one request sent
    /// twice on the wire; different salts are two attempts by the worker.
    pub salt: [u8; 16],
    /// The client's port: which connection the request came on.
    pub peer_port: u16,
}

#[derive(Default)]
struct Receipts {
    /// Every arrival, in arrival order.
    arrivals: Mutex<Vec<Arrival>>,
    /// The subscriptions reached so far: the count waited for, so that a
    /// repeated arrival does not end a scenario early.
    reached: Mutex<std::collections::HashSet<u32>>,
}

pub struct Sink {
    pub host_entry: String,
    pub base_url: String,
    receipts: Arc<Receipts>,
    count: watch::Sender<usize>,
}

impl Sink {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let receipts = Arc::new(Receipts::default());
        let count = watch::channel(0usize).0;
        let app = Router::new()
            .route("/push/{n}", post(receive))
            .with_state((receipts.clone(), count.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Ok(Self {
            host_entry: addr.to_string(),
            base_url: format!("http://{addr}"),
            receipts,
            count,
        })
    }

    pub fn endpoint(&self, n: u32) -> String {
        format!("{}/push/{n}", self.base_url)
    }

    pub fn reset(&self) {
        self.receipts.arrivals.lock().map(|mut a| a.clear()).ok();
        self.receipts.reached.lock().map(|mut r| r.clear()).ok();
        self.count.send_replace(0);
    }

    /// Waits until `count` subscriptions were reached, at most `timeout`;
    /// returns every arrival so far.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Arrival> {
        let mut seen = self.count.subscribe();
        let _ = tokio::time::timeout(timeout, seen.wait_for(|n| *n >= count)).await;
        self.arrivals()
    }

    /// Every arrival so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.receipts
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

type SinkState = (Arc<Receipts>, watch::Sender<usize>);

/// Reads the body before answering, as a push service does: hyper closes a
/// connection whose request body was left unread (when it had not arrived
/// yet), and the worker would have to open another.
async fn receive(
    State((receipts, count)): State<SinkState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(n): Path<u32>,
    body: Bytes,
) -> StatusCode {
    let now = Instant::now();
    let mut salt = [0u8; 16];
    let len = body.len().min(16);
    salt[..len].copy_from_slice(&body[..len]);
    if let Ok(mut arrivals) = receipts.arrivals.lock() {
        arrivals.push(Arrival {
            n,
            at: now,
            salt,
            peer_port: peer.port(),
        });
    }
    let first = receipts
        .reached
        .lock()
        .map(|mut reached| reached.insert(n))
        .unwrap_or(true);
    if first {
        count.send_modify(|c| *c += 1);
    }
    StatusCode::CREATED
}
