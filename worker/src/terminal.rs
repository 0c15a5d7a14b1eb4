//! What the commands print for a person: standard output that tells a reader
//! gone away from a failed write.

use std::io::Write as _;

/// A line could not be written to standard output.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
pub struct StdoutError(#[source] pub std::io::Error);

impl StdoutError {
    /// The reader went away (`| head`): what it wanted it has, so the command
    /// ends quietly rather than failing.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes one line to standard output. Flushed at once, so that a full disk
/// or a closed reader is reported here and not lost at exit, when the
/// standard library flushes and ignores the error.
pub fn print_line(line: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(StdoutError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_pipe_is_a_reader_gone() {
        let gone = StdoutError(std::io::ErrorKind::BrokenPipe.into());
        let full = StdoutError(std::io::Error::from_raw_os_error(28));
        assert!(gone.is_broken_pipe());
        assert!(!full.is_broken_pipe());
        assert_eq!(
            pushq_schemas::error_text::sentence(&full),
            format!(
                "cannot write to standard output: {}",
                std::io::Error::from_raw_os_error(28)
            )
        );
    }
}
