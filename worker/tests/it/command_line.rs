//! The `pushq-worker` binary as an operator first meets it: each bad setting
//! stops the start with one sentence and exit status 2, before anything
//! connects (so these need neither RabbitMQ nor PostgreSQL, except where the
//! broker's answer is the point), and commands that need no settings are
//! not stopped by bad ones.

use p256::pkcs8::LineEnding;
use pushq_worker::push::VapidPrivateKey;

use crate::helpers::{AMQP_URL, WAIT};

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary to its end, bounded by [`WAIT`], without the caller's
/// RUST_LOG so that the command's own default applies.
pub async fn pushq(args: &[&str], vars: &[(&str, &str)]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushq-worker"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .envs(vars.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .unwrap_or_else(|_| panic!("pushq-worker {args:?} ends within {WAIT:?}"))
        .expect("pushq-worker runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Exit 2 and one line on stderr starting with `start`.
pub fn assert_refused(run: &Run, start: &str) {
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "one sentence: {}",
        run.stderr
    );
    assert!(
        run.stderr.starts_with(&format!("pushq-worker: {start}")),
        "{}",
        run.stderr
    );
}

fn key() -> String {
    VapidPrivateKey::generate().to_base64url()
}

#[tokio::test]
async fn vapid_subjects_apple_refuses_stop_the_start() {
    let key = key();
    for subject in [
        "mailto:me@localhost",
        "https://localhost",
        "mailto: ops@example.com",
    ] {
        let run = pushq(
            &["run"],
            &[
                ("PUSHQ_VAPID_PRIVATE_KEY", &key),
                ("PUSHQ_VAPID_SUBJECT", subject),
            ],
        )
        .await;
        assert_refused(&run, "PUSHQ_VAPID_SUBJECT ");
        assert!(run.stderr.contains("Apple refuses it"), "{}", run.stderr);
        assert!(!run.stderr.contains(&key), "the key leaks: {}", run.stderr);
    }
}

#[tokio::test]
async fn retry_delays_that_decrease_or_are_empty_stop_the_start() {
    let run = pushq(&["run"], &[("PUSHQ_RETRY_DELAYS_MS", "1000, 30000, 5000")]).await;
    assert_refused(
        &run,
        "PUSHQ_RETRY_DELAYS_MS entry 3 (5000) is smaller than entry 2 before it (30000)",
    );
    let run = pushq(&["run"], &[("PUSHQ_RETRY_DELAYS_MS", "")]).await;
    assert_refused(&run, "PUSHQ_RETRY_DELAYS_MS is set but empty");
    let run = pushq(
        &["run"],
        &[("PUSHQ_RETRY_DELAYS_MS", "18446744073709551615")],
    )
    .await;
    assert_refused(
        &run,
        "PUSHQ_RETRY_DELAYS_MS entry 1 (18446744073709551615) is longer than 28 days",
    );
}

#[tokio::test]
async fn an_invalid_rust_log_stops_the_start_naming_it() {
    let run = pushq(&["migrate"], &[("RUST_LOG", "pushq_worker=loud")]).await;
    assert_refused(&run, "RUST_LOG is not a valid log filter");
    // Parsed as a crate's name, it would turn every log off.
    let run = pushq(&["vapid", "public"], &[("RUST_LOG", "warning")]).await;
    assert_refused(&run, "RUST_LOG is not a valid log filter");
    assert!(run.stderr.contains("did you mean warn?"), "{}", run.stderr);
}

#[tokio::test]
async fn a_misspelt_setting_is_warned_about_once_without_colours_in_a_pipe() {
    let run = pushq(
        &["vapid", "public"],
        &[
            ("PUSHQ_VAPID_PRIVATE_KEY", &key()),
            ("PUSHQ_RETRY_DELAY_MS", "1000"),
            ("PUSHQ_LOG_FORMAT", "text"),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let warning =
        "PUSHQ_RETRY_DELAY_MS is not a pushq setting; did you mean PUSHQ_RETRY_DELAYS_MS?";
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("WARN"), "{}", run.stderr);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "no ANSI escapes: {:?}",
        run.stderr
    );
}

#[tokio::test]
async fn a_misspelt_setting_is_warned_about_by_a_command_that_does_not_log() {
    let unused = crate::helpers::free_local_addr().to_string();
    let run = pushq(
        &["probe"],
        &[
            ("PUSHQ_HTTP_ADR", "127.0.0.1:1"),
            ("PUSHQ_HTTP_ADDR", &unused),
        ],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert_eq!(
        lines[0],
        "pushq-worker: warning: PUSHQ_HTTP_ADR is not a pushq setting; did you mean PUSHQ_HTTP_ADDR?"
    );
    // reqwest's own text names only the URL: the cause must follow, once.
    let why = lines[1];
    assert!(
        why.starts_with(&format!(
            "pushq-worker: not ready: no answer from {unused}: "
        )),
        "{why}"
    );
    assert_eq!(why.matches("Connection refused").count(), 1, "{why}");
}

#[tokio::test]
async fn commands_that_need_no_settings_ignore_bad_ones() {
    let bad = [
        ("PUSHQ_VAPID_PRIVATE_KEY", "c2VjcmV0LW5vdC1hLWtleQ"),
        ("PUSHQ_VAPID_SUBJECT", "mailto:me@localhost"),
        ("PUSHQ_PREFETCH", "0"),
        ("RUST_LOG", "pushq_worker=loud"),
    ];
    let run = pushq(&["vapid", "generate"], &bad).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.starts_with("PUSHQ_VAPID_PRIVATE_KEY="),
        "{}",
        run.stdout
    );
    let run = pushq(&["--help"], &bad).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // A port nothing listens on once the listener is dropped.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let mut probe_vars = bad.to_vec();
    probe_vars.push(("PUSHQ_HTTP_ADDR", &unused));
    let run = pushq(&["probe"], &probe_vars).await;
    assert_eq!(run.code, Some(1), "not ready, not refused: {}", run.stderr);
    assert!(
        run.stderr.starts_with("pushq-worker: not ready"),
        "{}",
        run.stderr
    );
    let run = pushq(&["probe"], &[("PUSHQ_HTTP_ADDR", "nowhere")]).await;
    assert_refused(&run, "PUSHQ_HTTP_ADDR ");
}

#[tokio::test]
async fn a_pem_from_openssl_ecparam_is_read_and_another_curve_is_named() {
    let key = VapidPrivateKey::generate();
    let secret = p256::SecretKey::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            key.to_base64url(),
        )
        .expect("base64url"),
    )
    .expect("key");
    let sec1 = secret.to_sec1_pem(LineEnding::LF).expect("pem");
    // What `openssl ecparam -name prime256v1 -genkey` writes first; the
    // second names secp384r1.
    let p256_parameters =
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
    let p384_parameters =
        "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n";
    let dir = std::env::temp_dir();
    let id = uuid::Uuid::new_v4();
    let good = dir.join(format!("pushq-{id}-p256.pem"));
    let other = dir.join(format!("pushq-{id}-p384.pem"));
    std::fs::write(&good, format!("{p256_parameters}{}", *sec1)).expect("written");
    std::fs::write(&other, format!("{p384_parameters}{}", *sec1)).expect("written");

    let run = pushq(
        &["vapid", "public"],
        &[("PUSHQ_VAPID_PRIVATE_KEY_FILE", &good.to_string_lossy())],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.trim(), key.public_key_base64url());

    let run = pushq(
        &["vapid", "public"],
        &[("PUSHQ_VAPID_PRIVATE_KEY_FILE", &other.to_string_lossy())],
    )
    .await;
    assert_refused(&run, "PUSHQ_VAPID_PRIVATE_KEY_FILE ");
    assert!(run.stderr.contains("secp384r1"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("openssl ecparam -name prime256v1 -genkey -noout"),
        "{}",
        run.stderr
    );
    let body = sec1.lines().nth(1).expect("a body line");
    assert!(!run.stderr.contains(body), "the key leaks: {}", run.stderr);
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(other);
}

#[tokio::test]
async fn every_command_explains_itself_and_the_variables_it_reads() {
    let run = pushq(&["run", "--help"], &[]).await;
    assert_eq!(run.code, Some(0));
    for expected in [
        "PUSHQ_VAPID_SUBJECT",
        "PUSHQ_RETRY_DELAYS_MS [default: 1000,5000,",
        "PUSHQ_AMQP_URL [default: amqp://",
    ] {
        assert!(run.stdout.contains(expected), "{expected}: {}", run.stdout);
    }
    for command in [
        &["migrate"][..],
        &["vapid", "generate"],
        &["vapid", "public"],
        &["demo"],
        &["subscriptions", "list"],
        &["dead", "list"],
        &["dead", "replay"],
        &["probe"],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let run = pushq(&args, &[]).await;
        assert_eq!(run.code, Some(0), "{command:?}");
        let (about, _) = run.stdout.split_once("Usage:").expect("usage");
        assert!(
            about.trim().len() > 20,
            "{command:?} says what it does: {}",
            run.stdout
        );
        let reads_settings = command != ["vapid", "generate"];
        assert_eq!(
            run.stdout.contains("Environment"),
            reads_settings,
            "{command:?}: {}",
            run.stdout
        );
    }
    let run = pushq(&["dead", "replay", "--help"], &[]).await;
    assert!(run.stdout.contains("no limit"), "{}", run.stdout);
    assert!(
        !run.stdout.contains(&usize::MAX.to_string()),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn only_run_is_described_as_waiting_for_its_dependencies() {
    let run = pushq(&["run", "--help"], &[]).await;
    assert!(
        run.stdout.contains("Waits for RabbitMQ and PostgreSQL"),
        "{}",
        run.stdout
    );
    let commands: [(&[&str], &str); 5] = [
        (&["migrate"], "Tries PostgreSQL once"),
        (&["subscriptions", "list"], "Tries PostgreSQL once"),
        (&["dead", "list"], "Tries RabbitMQ once"),
        (&["dead", "replay"], "Tries RabbitMQ once"),
        (&["demo"], "Tries RabbitMQ and PostgreSQL for 3 s"),
    ];
    for (command, tries) in commands {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let help = pushq(&args, &[]).await.stdout;
        assert!(help.contains(tries), "{command:?}: {help}");
        for waiting in ["wait", "stops `run`", "stops run"] {
            assert!(
                !help.contains(waiting),
                "{command:?} says {waiting:?}: {help}"
            );
        }
    }
}

#[tokio::test]
async fn an_unknown_dead_letter_kind_is_refused_listing_the_known_ones() {
    let run = pushq(&["dead", "replay", "--kind", "bogus"], &[]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    for kind in pushq_worker::dead::kinds() {
        assert!(run.stderr.contains(kind), "{kind}: {}", run.stderr);
    }
    assert!(run.stderr.contains("retries_exhausted") && run.stderr.contains("delivery_limit"));
}

#[tokio::test]
async fn dead_letter_commands_before_any_worker_say_the_topology_is_missing() {
    let prefix = format!(
        "pushq-test-none-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    for command in [&["dead", "list"][..], &["dead", "replay"]] {
        let run = pushq(
            command,
            &[
                ("PUSHQ_AMQP_URL", AMQP_URL),
                ("PUSHQ_TOPOLOGY_PREFIX", &prefix),
            ],
        )
        .await;
        assert_eq!(run.code, Some(1), "{command:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim(),
            format!(
                "pushq-worker: the topology {prefix:?} does not exist yet on this broker (no {prefix}.dead queue): start a worker with it, or check PUSHQ_TOPOLOGY_PREFIX"
            ),
            "{command:?}"
        );
    }
}
