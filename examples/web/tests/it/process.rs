//! The built binary: a private key given as the public one stops it with the
//! sentence that says so; a broker it cannot reach or a bad URL, with one
//! line; SIGTERM or SIGINT stops it cleanly, exit 0, serving or still
//! connecting.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{AMQP_URL, P256DH, unique_prefix};

const WAIT: Duration = Duration::from_secs(20);
/// A raw P-256 private key, as `pushq-worker vapid generate` prints one.
const PRIVATE_KEY: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";

fn start(public_key: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushq-example-web"))
        .env("PUSHQ_VAPID_PUBLIC_KEY", public_key)
        .env("PUSHQ_AMQP_URL", AMQP_URL)
        .env("PUSHQ_TOPOLOGY_PREFIX", unique_prefix())
        .env("EXAMPLE_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, received)
}

fn wait_for_exit(child: &mut Child) -> ExitStatus {
    wait_for_exit_within(child, WAIT)
}

fn wait_for_exit_within(child: &mut Child, bound: Duration) -> ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not exit within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line until one contains `needle`, bounded by [`WAIT`].
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {WAIT:?}: {seen:#?}");
}

#[test]
fn a_private_key_as_the_public_one_stops_it_with_a_sentence() {
    let (mut child, lines) = start(PRIVATE_KEY);
    let status = wait_for_exit(&mut child);
    assert!(!status.success(), "{status}");
    let seen = wait_for_line(&lines, "this looks like the private key");
    assert!(
        seen.iter().all(|line| !line.contains(PRIVATE_KEY)),
        "the key is never printed: {seen:#?}"
    );
}

fn send_signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

fn a_signal_while_serving_stops_it_cleanly(signal: &str) {
    let (mut child, lines) = start(P256DH);
    wait_for_line(&lines, "the example is on");
    send_signal(&child, signal);
    let status = wait_for_exit(&mut child);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigterm_stops_it_cleanly() {
    a_signal_while_serving_stops_it_cleanly("-TERM");
}

#[test]
fn sigint_stops_it_cleanly() {
    a_signal_while_serving_stops_it_cleanly("-INT");
}

/// A broker that never answers holds the example in its 10 s connect bound:
/// a stop signal then must not wait for it.
fn a_signal_while_connecting_stops_it_at_once(signal: &str) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = silent.local_addr().expect("addr");
    let (accepted, connection) = mpsc::channel();
    // std's accept has no timeout: the thread hands the connection over and
    // the wait for it is bounded below. The connection is kept open, so the
    // example sees a broker that is there and silent.
    std::thread::spawn(move || {
        let _ = accepted.send(silent.accept().map(|(stream, _)| stream));
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushq-example-web"))
        .env("PUSHQ_VAPID_PUBLIC_KEY", P256DH)
        .env(
            "PUSHQ_AMQP_URL",
            format!("amqp://guest:guest@{address}/%2f"),
        )
        .env("EXAMPLE_ADDR", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let _connection = match connection.recv_timeout(WAIT) {
        Ok(accepted) => accepted.expect("accept"),
        Err(_) => {
            let _ = child.kill();
            panic!("the example did not connect to {address} within {WAIT:?}");
        }
    };
    send_signal(&child, signal);
    let sent = Instant::now();
    let status = wait_for_exit_within(&mut child, Duration::from_secs(5));
    let stderr = std::io::read_to_string(child.stderr.take().expect("stderr")).expect("stderr");
    assert_eq!(
        status.code(),
        Some(0),
        "{status} after {:?}: {stderr}",
        sent.elapsed()
    );
}

#[test]
fn sigterm_while_connecting_to_a_silent_broker_stops_it_at_once() {
    a_signal_while_connecting_stops_it_at_once("-TERM");
}

#[test]
fn sigint_while_connecting_to_a_silent_broker_stops_it_at_once() {
    a_signal_while_connecting_stops_it_at_once("-INT");
}

/// Runs the binary with the broker at `amqp_url` and lapin's default filter
/// until it exits; its status and every stderr line.
fn run_to_exit(amqp_url: &str) -> (ExitStatus, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushq-example-web"))
        .env("PUSHQ_VAPID_PUBLIC_KEY", P256DH)
        .env("PUSHQ_AMQP_URL", amqp_url)
        .env("EXAMPLE_ADDR", "127.0.0.1:0")
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let status = wait_for_exit(&mut child);
    let stderr = child.stderr.take().expect("stderr");
    // The process has exited: its stderr is at its end.
    let lines = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    (status, lines)
}

#[test]
fn an_unreachable_broker_stops_it_with_one_line_naming_the_variable_and_address() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = free.local_addr().expect("addr").to_string();
    drop(free);
    let (status, lines) = run_to_exit(&format!("amqp://guest:s3cret@{address}/%2f"));
    assert_eq!(status.code(), Some(1), "{status}: {lines:#?}");
    let [line] = lines.as_slice() else {
        panic!("one line: {lines:#?}");
    };
    assert!(line.starts_with("pushq-example-web: "), "{line}");
    assert!(line.contains("PUSHQ_AMQP_URL"), "{line}");
    assert!(line.contains(&address), "{line}");
    assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
    assert!(!line.contains("s3cret"), "{line}");
}

#[test]
fn a_url_without_a_scheme_is_a_setting_to_fix() {
    let (status, lines) = run_to_exit("127.0.0.1:5672");
    assert_eq!(status.code(), Some(2), "{status}: {lines:#?}");
    let [line] = lines.as_slice() else {
        panic!("one line: {lines:#?}");
    };
    assert!(
        line.starts_with("pushq-example-web: PUSHQ_AMQP_URL")
            && line.contains("not an amqp:// or amqps:// URL"),
        "{line}"
    );
}
