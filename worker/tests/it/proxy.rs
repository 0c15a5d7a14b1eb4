//! A TCP proxy the test can cut and restore, to make a server unreachable to
//! the worker alone (the test's own connections go direct).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    running: Arc<Mutex<CancellationToken>>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let running = CancellationToken::new();
        tokio::spawn(serve(listener, upstream, running.clone()));
        Self {
            addr,
            upstream,
            running: Arc::new(Mutex::new(running)),
        }
    }

    /// Refuses new connections and drops every open one, as a network
    /// partition that the worker's side notices would.
    pub fn cut(&self) {
        self.running.lock().expect("proxy").cancel();
    }

    /// Listens again on the same address.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("proxy binds its address again");
        let running = CancellationToken::new();
        *self.running.lock().expect("proxy") = running.clone();
        tokio::spawn(serve(listener, self.upstream, running));
    }
}

async fn serve(listener: TcpListener, upstream: SocketAddr, running: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = running.cancelled() => return,
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        let running = running.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                () = running.cancelled() => {}
            }
        });
    }
}
