//! What the commands print: a failed write to standard output is an error,
//! while a reader that went away is not; stored text cannot drive the
//! operator's terminal; with JSON logs, the last sentence is JSON too.

use sqlx::{Connection as _, PgConnection};

use crate::command_line::pushq;
use crate::helpers::{WAIT, drop_database, postgres_base, unique};

#[tokio::test]
async fn output_that_cannot_be_written_fails_with_one_sentence() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full opens");
    let output = run_with_stdout(full.into()).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "pushq-worker: cannot write to standard output: {}",
            std::io::Error::from_raw_os_error(28)
        ),
    );
}

#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly() {
    // `vapid generate | head -0`: the reader is gone before the first line.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = run_with_stdout(writer.into()).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert_eq!(stderr, "", "nothing to say: the reader has what it wanted");
}

#[tokio::test]
async fn stored_control_characters_are_listed_escaped() {
    let database = unique("pushq_test_");
    let url = format!("{}/{database}", postgres_base());
    let vars = [("PUSHQ_DATABASE_URL", url.as_str())];
    let run = pushq(&["migrate"], &vars).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut db = PgConnection::connect(&url).await.expect("the database");
    // As no browser's page could register it: straight into the table.
    sqlx::query(
        "INSERT INTO subscriptions (id, user_id, endpoint, p256dh, auth, tags) VALUES ($1, $2, $3, 'k', 'a', $4)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind("\u{1b}[31mroot\u{1b}[0m")
    .bind("https://fcm.googleapis.com/fcm/send/x")
    .bind(vec!["a\nfake line", "Zoë"])
    .execute(&mut db)
    .await
    .expect("stored");
    let run = pushq(&["subscriptions", "list"], &vars).await;
    drop(db);
    drop_database(&database).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(!run.stdout.contains('\u{1b}'), "{:?}", run.stdout);
    assert_eq!(
        run.stdout.lines().count(),
        2,
        "a header and one line: {}",
        run.stdout
    );
    let line = run.stdout.lines().nth(1).expect("the subscription");
    assert!(line.contains("\\u{1b}[31mroot\\u{1b}[0m"), "{line}");
    assert!(line.contains("https://fcm.googleapis.com"), "{line}");
    assert!(line.ends_with("a\\nfake line,Zoë"), "{line}");
}

#[tokio::test]
async fn with_json_logs_the_sentence_a_command_ends_on_is_a_json_line() {
    let refused = [
        (
            "PUSHQ_DATABASE_URL",
            "postgres://no_such_role@127.0.0.1:5432/pushq",
        ),
        ("PUSHQ_LOG_FORMAT", "json"),
    ];
    let run = pushq(&["migrate"], &refused).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["message"].as_str().expect("a message");
    assert!(
        message.starts_with("PostgreSQL at 127.0.0.1:5432 (PUSHQ_DATABASE_URL) refused"),
        "{message}"
    );
    // Text logs keep the plain sentence.
    let run = pushq(&["migrate"], &refused[..1]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("pushq-worker: PostgreSQL at 127.0.0.1:5432"),
        "{}",
        run.stderr
    );
}

/// `pushq-worker vapid generate` with `stdout`, to its end (bounded by
/// [`WAIT`]). Not `Command::output()`: tokio's pipes stdout whatever was set.
async fn run_with_stdout(stdout: std::process::Stdio) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushq-worker"))
        .args(["vapid", "generate"])
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("it runs");
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("it ends in time")
        .expect("its status")
}
