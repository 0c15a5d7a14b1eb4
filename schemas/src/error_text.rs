//! Errors as one line for people, for the worker, the SDK's users and the
//! examples alike: each cause once. Many libraries repeat
//! their source's text in their own message (sqlx's "error communicating
//! with database: Connection refused (os error 111)" over the io::Error
//! itself), so printing every level doubles it.

use std::error::Error;

/// The error and its causes, `: `-separated, skipping a cause whose text
/// the line already holds.
pub fn sentence(err: &dyn Error) -> String {
    let mut line = err.to_string();
    append_causes(&mut line, err);
    line
}

fn append_causes(line: &mut String, err: &dyn Error) {
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("could not prepare the database")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("error communicating with database: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn a_cause_repeated_by_its_wrapper_is_shown_once() {
        let err = Outer(Middle(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        assert_eq!(
            sentence(&err),
            "could not prepare the database: error communicating with database: Connection refused (os error 111)"
        );
    }
}
