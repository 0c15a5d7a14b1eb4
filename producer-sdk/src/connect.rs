//! Opening a producer's connection within a bound: a broker that accepts the
//! TCP connection and never answers (a hung server, a load balancer without
//! a backend) is an error after the bound, not a wait of minutes.

use std::net::Shutdown;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;

use crate::{PublishError, Topology, broker_logs};

/// How long [`crate::Producer::connect`] waits for the broker to complete
/// the connection, the channel and the exchange declaration.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port` of an AMQP URL, the part of it a message may show (never the
/// user or the password). Refuses what [`crate::Producer::connect`] would.
pub fn broker_address(amqp_url: &str) -> Result<String, PublishError> {
    parse(amqp_url).map(|uri| address(&uri))
}

fn parse(amqp_url: &str) -> Result<AMQPUri, PublishError> {
    let scheme = amqp_url.split_once("://").map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|scheme| {
        scheme.eq_ignore_ascii_case("amqp") || scheme.eq_ignore_ascii_case("amqps")
    }) {
        return Err(PublishError::InvalidUrl(
            "is not an amqp:// or amqps:// URL",
        ));
    }
    // lapin's own refusal may quote the whole URL, password included.
    amqp_url
        .parse()
        .map_err(|_: String| PublishError::InvalidUrl("is not a valid AMQP URL"))
}

fn address(uri: &AMQPUri) -> String {
    let host = &uri.authority.host;
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", uri.authority.port)
    } else {
        format!("{host}:{}", uri.authority.port)
    }
}

/// The connection and its confirmed channel, the exchange declared, all
/// within `timeout`.
pub(crate) async fn open(
    amqp_url: &str,
    topology: &Topology,
    timeout: Duration,
) -> Result<(Connection, Channel), PublishError> {
    let uri = parse(amqp_url)?;
    let deadline = Instant::now() + timeout;
    let guard = SocketGuard::default();
    let within = Within { deadline, timeout };
    let opened = steps(uri, topology, within, &guard.socket).await;
    if opened.is_ok() {
        guard.disarm();
    }
    opened
}

/// A lapin connection opened within `timeout`, for a program that manages
/// its own channels (the worker), with the SDK's care: its I/O thread never
/// logs a message body, and when the broker does not complete the
/// handshake in time, or this future is dropped first, the socket is shut
/// down, so that lapin's I/O thread ends instead of waiting on a silent
/// broker for as long as the process lives.
pub async fn open_connection(
    amqp_url: &str,
    properties: ConnectionProperties,
    timeout: Duration,
) -> lapin::Result<Connection> {
    let uri = parse(amqp_url).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a valid amqp:// or amqps:// URL",
        )
    })?;
    let within = Within {
        deadline: Instant::now() + timeout,
        timeout,
    };
    let guard = SocketGuard::default();
    let connection = tokio::time::timeout_at(
        within.deadline,
        connection(uri, within, guard.socket.clone(), properties),
    )
    .await
    .unwrap_or_else(|_| Err(timed_out(timeout)))?;
    guard.disarm();
    Ok(connection)
}

async fn steps(
    uri: AMQPUri,
    topology: &Topology,
    within: Within,
    socket: &Socket,
) -> Result<(Connection, Channel), PublishError> {
    let connection = within
        .step(
            "connecting",
            connection(uri, within, socket.clone(), ConnectionProperties::default()),
        )
        .await?;
    let channel = within
        .step("opening a channel", connection.create_channel())
        .await?;
    within
        .step(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    // Declared here too so that a producer started before any worker finds
    // its exchange; the arguments match the worker's, so either may go first.
    within
        .step(
            "declaring the exchange",
            channel.exchange_declare(
                topology.exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    Ok((connection, channel))
}

#[derive(Debug, Clone, Copy)]
struct Within {
    deadline: Instant,
    timeout: Duration,
}

impl Within {
    async fn step<T>(
        self,
        action: &'static str,
        step: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, PublishError> {
        tokio::time::timeout_at(self.deadline, step)
            .await
            .unwrap_or_else(|_| Err(timed_out(self.timeout)))
            .map_err(|source| PublishError::Broker { action, source })
    }
}

fn timed_out(timeout: Duration) -> lapin::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the broker did not answer within {:.1} s",
            timeout.as_secs_f64()
        ),
    )
    .into()
}

/// Connects like `Connection::connect`, with the I/O thread's logs filtered
/// and a second handle on the socket kept in `socket`.
async fn connection(
    uri: AMQPUri,
    within: Within,
    socket: Socket,
    properties: ConnectionProperties,
) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri,
        runtime,
        // lapin calls this on its I/O thread, before it reads any frame (and
        // again on that thread for each reconnection).
        async move |uri, runtime| {
            broker_logs::install_on_this_thread();
            // Bounded here too, so that a TCP connect nobody answers (a
            // dropped SYN) does not keep the I/O thread for the OS's minutes.
            let stream = tokio::time::timeout_at(
                within.deadline,
                uri.connect_with_config_async(OwnedTLSConfig::default().as_ref(), &runtime),
            )
            .await
            .map_err(|_| timed_out(within.timeout))??;
            match &stream {
                AsyncTcpStream::Plain(plain) => socket.keep(plain.get_ref()),
                AsyncTcpStream::Rustls(tls) => socket.keep(tls.get_ref().0.get_ref()),
                _ => {}
            }
            Ok(stream)
        },
        properties,
    )
    .await
}

/// A duplicate of the connection's socket, to shut it down from outside the
/// I/O thread that owns the stream.
#[derive(Debug, Clone, Default)]
struct Socket(Arc<Mutex<Option<std::net::TcpStream>>>);

impl Socket {
    fn keep(&self, stream: &tokio::net::TcpStream) {
        #[cfg(unix)]
        let duplicate = std::os::fd::AsFd::as_fd(stream).try_clone_to_owned();
        #[cfg(windows)]
        let duplicate = std::os::windows::io::AsSocket::as_socket(stream).try_clone_to_owned();
        if let Ok(duplicate) = duplicate {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(std::net::TcpStream::from(duplicate));
        }
    }

    /// Shuts the socket itself down, which the I/O thread reads as the end
    /// of the connection; dropping this duplicate alone would not.
    fn shut_down(&self) {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(socket) = kept {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Shuts the socket down when dropped armed: a start that failed, timed out
/// or was abandoned (its future dropped) leaves no I/O thread behind.
#[derive(Debug, Default)]
struct SocketGuard {
    socket: Socket,
    disarmed: bool,
}

impl SocketGuard {
    /// The start succeeded: the connection owns its socket from now on.
    fn disarm(mut self) {
        self.disarmed = true;
        self.socket
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if !self.disarmed {
            self.socket.shut_down();
        }
    }
}
