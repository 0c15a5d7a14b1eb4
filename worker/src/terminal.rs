//! What the commands print for a person: standard output that tells a reader
//! gone away from a failed write, and stored text escaped so that it cannot
//! drive the operator's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
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

/// `text` with control characters escaped as Rust writes them (`\n`,
/// `\u{1b}`), so that a stored user id or tag cannot move the cursor, recolour
/// or clear the screen, or fake a line of its own. Bidirectional overrides
/// are escaped too: they reorder what follows on the line. Any other
/// character, accented or not Latin, stays as it is, readable.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(escaped, "{}", c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        for (stored, shown) in [
            ("alice", "alice"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("two\nlines", "two\\nlines"),
            ("tab\there\r", "tab\\there\\r"),
            ("csi\u{9b}2J", "csi\\u{9b}2J"),
            ("del\u{7f}", "del\\u{7f}"),
            ("back\\slash", "back\\slash"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            ("Zoë, 東京, Ελλάδα 🎉", "Zoë, 東京, Ελλάδα 🎉"),
        ] {
            assert_eq!(printable(stored), shown, "{stored:?}");
        }
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
    }

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
