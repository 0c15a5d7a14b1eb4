//! A TCP forwarder to the real RabbitMQ or PostgreSQL on a port of the
//! test's choosing, opened when the test says: a dependency that is not
//! there yet, then is. One variant plays a managed PostgreSQL on which the
//! role may not connect to the `postgres` maintenance database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Forwarder {
    accepting: JoinHandle<()>,
    /// Connections to the `postgres` database that were refused.
    pub maintenance_refused: Arc<AtomicUsize>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Forwarder {
    /// Forwards every connection on `listen` to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self::serve(listen, upstream, false).await
    }

    /// Forwards PostgreSQL connections to `upstream`, but answers a startup
    /// message naming the `postgres` database as PostgreSQL does for a role
    /// without CONNECT on it.
    pub async fn postgres_without_maintenance_database(
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Self {
        Self::serve(listen, upstream, true).await
    }

    async fn serve(listen: SocketAddr, upstream: SocketAddr, refuse_postgres: bool) -> Self {
        let listener = TcpListener::bind(listen).await.expect("the port is free");
        let maintenance_refused = Arc::new(AtomicUsize::new(0));
        let refused = maintenance_refused.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let refused = refused.clone();
                tokio::spawn(async move {
                    let _ = pipe(client, upstream, refuse_postgres.then_some(&*refused)).await;
                });
            }
        });
        Self {
            accepting,
            maintenance_refused,
        }
    }
}

async fn pipe(
    mut client: TcpStream,
    upstream: SocketAddr,
    refuse_postgres: Option<&AtomicUsize>,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    if let Some(refused) = refuse_postgres {
        // The worker turns TLS off on loopback, so the first message is the
        // startup message: length, protocol version, then name/value pairs.
        let length = client.read_u32().await?;
        let mut body = vec![0; (length as usize).saturating_sub(4)];
        client.read_exact(&mut body).await?;
        if startup_database(&body).as_deref() == Some("postgres") {
            refused.fetch_add(1, Ordering::Relaxed);
            client.write_all(&permission_denied()).await?;
            return client.shutdown().await;
        }
        server.write_u32(length).await?;
        server.write_all(&body).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

fn startup_database(body: &[u8]) -> Option<String> {
    let mut fields = body.get(4..)?.split(|&byte| byte == 0);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name == b"database" {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    None
}

/// PostgreSQL's ErrorResponse for a role without CONNECT on a database.
fn permission_denied() -> Vec<u8> {
    let mut fields = Vec::new();
    for (code, text) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "42501"),
        (b'M', "permission denied for database \"postgres\""),
        (b'D', "User does not have CONNECT privilege."),
    ] {
        fields.push(code);
        fields.extend_from_slice(text.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    message
}

/// A listener that accepts connections and never answers: a hung server,
/// or a load balancer without a backend. Dropping it closes them all.
pub struct Silent {
    accepting: JoinHandle<()>,
    pub addr: SocketAddr,
}

impl Silent {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("bound");
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        Self { accepting, addr }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
