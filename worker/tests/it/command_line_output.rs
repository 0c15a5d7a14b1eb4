//! What the commands print: a failed write to standard output is an error,
//! while a reader that went away is not.

use crate::helpers::WAIT;

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
