//! The worker as its own `pushq-worker run` process, as operators run it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{WAIT, http_get};

/// A `pushq-worker run` child process, its log lines kept for assertions.
pub struct WorkerProcess {
    child: tokio::process::Child,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Reads stderr into `logs` until the process closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl WorkerProcess {
    /// Starts `pushq-worker run` with `vars` on a free HTTP port (JSON logs
    /// unless asked otherwise) and waits until it is ready; returns it and
    /// its HTTP address.
    pub(super) async fn start(vars: &HashMap<String, String>) -> (Self, SocketAddr) {
        let mut vars = vars.clone();
        let http_addr = free_local_addr();
        vars.insert("PUSHQ_HTTP_ADDR".into(), http_addr.to_string());
        vars.entry("PUSHQ_LOG_FORMAT".into())
            .or_insert_with(|| "json".into());
        let process = Self::spawn("run", &vars);
        wait_ready(http_addr).await;
        (process, http_addr)
    }

    /// Starts `pushq-worker <command>` (its words split at spaces) with
    /// `vars` besides the inherited environment, without waiting for anything.
    pub fn spawn(command: &str, vars: &HashMap<String, String>) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushq-worker"))
            .args(command.split_whitespace())
            .envs(vars)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pushq-worker starts");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let kept = logs.clone();
        let reader = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("logs").push(line);
            }
        });
        Self {
            child,
            logs,
            reader: Some(reader),
        }
    }

    /// Sends SIGTERM and returns the exit status, bounded by [`WAIT`].
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.stop_with("TERM").await
    }

    /// Sends `signal` (TERM, INT, KILL) unless the process already exited,
    /// and returns its exit status, bounded by [`WAIT`].
    pub async fn stop_with(&mut self, signal: &str) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.read_to_the_end().await;
            return status;
        }
        self.signal(signal).await;
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the worker exits in time after SIG{signal}"))
            .expect("exit status");
        self.read_to_the_end().await;
        status
    }

    /// The process has exited: its last lines may still be in the pipe, so
    /// the logs are complete only once the reader has met the end.
    async fn read_to_the_end(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(WAIT, reader).await;
        }
    }

    async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = tokio::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The process's peak resident memory so far (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        let pid = self.child.id().expect("still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kib / 1024.0
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// Waits, bounded by [`WAIT`], for `count` log lines holding `needle`.
    pub async fn wait_for_lines(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = self.log_lines();
            if lines.iter().filter(|line| line.contains(needle)).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {count} lines holding {needle:?} within {WAIT:?}; the log: {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status, once it has exited by itself (bounded by [`WAIT`]).
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the process exits by itself in time")
            .expect("exit status");
        self.read_to_the_end().await;
        status
    }
}

/// Polls `/readyz` until it answers 200, bounded by [`WAIT`].
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((200, _)) = http_get(addr, "/readyz").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker at {addr} was not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port nothing listens on right now, for a child to bind.
pub fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}
