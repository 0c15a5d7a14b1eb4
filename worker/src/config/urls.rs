//! The two service URLs, checked at start: a URL no attempt can use (a port
//! over 65535, no host, another scheme) stops the start instead of being
//! retried for ever. A refusal never repeats the URL, which may hold a
//! password.

use std::str::FromStr;

use lapin::uri::AMQPUri;
use sqlx::postgres::PgConnectOptions;

use super::ConfigError;

pub(super) fn check_amqp_url(value: &str) -> Result<(), ConfigError> {
    let refuse = |why: String| {
        ConfigError(format!(
            "PUSHQ_AMQP_URL {why}: expected amqp://user:password@host:5672/vhost (amqps:// for TLS; %2f is the default virtual host)"
        ))
    };
    let url = url::Url::parse(value).map_err(|err| refuse(format!("is not a URL ({err})")))?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(refuse("must be an amqp:// or amqps:// URL".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("names no host".into()));
    }
    if url.port() == Some(0) {
        return Err(refuse("names port 0".into()));
    }
    // Its errors may quote the whole URL, password included.
    AMQPUri::from_str(value)
        .map(drop)
        .map_err(|_| refuse("is not a valid AMQP URL".into()))
}

pub(super) fn check_database_url(value: &str) -> Result<(), ConfigError> {
    let refuse = |why: String| {
        ConfigError(format!(
            "PUSHQ_DATABASE_URL {why}: expected postgres://user:password@host:5432/database"
        ))
    };
    let url = url::Url::parse(value).map_err(|err| refuse(format!("is not a URL ({err})")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(refuse("must be a postgres:// or postgresql:// URL".into()));
    }
    if url.port() == Some(0) {
        return Err(refuse("names port 0".into()));
    }
    // Without one, PostgreSQL picks the database named after the user, for
    // `postgres` the maintenance database: pushq's tables would land there.
    let database = url.path().trim_start_matches('/');
    if database.is_empty() {
        return Err(refuse("names no database".into()));
    }
    if database.contains(['/', '%']) {
        return Err(refuse(
            "names a database with `/` or `%` in it; give a plain name".into(),
        ));
    }
    PgConnectOptions::from_str(value).map(drop).map_err(|err| {
        // sqlx names the parameter it cannot take, never the password.
        refuse(format!("is not a valid PostgreSQL URL ({err})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_no_attempt_can_use_stops_the_start_and_the_password_is_not_shown() {
        for bad in [
            "amqp://guest:s3cret@127.0.0.1:99999/%2f",
            "amqp://guest:s3cret@/%2f",
            "amqp://guest:s3cret@127.0.0.1:0/%2f",
            "http://guest:s3cret@127.0.0.1:5672/",
        ] {
            let err = check_amqp_url(bad).expect_err(bad).to_string();
            assert!(err.starts_with("PUSHQ_AMQP_URL "), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        assert!(check_amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(check_amqp_url("amqps://rabbit.internal/prod").is_ok());
    }

    #[test]
    fn a_database_url_no_attempt_can_use_stops_the_start() {
        for bad in [
            "postgres://postgres:s3cret@127.0.0.1:99999/pushq",
            "mysql://postgres:s3cret@127.0.0.1/pushq",
            "postgres://postgres:s3cret@127.0.0.1/pushq?sslmode=sometimes",
            "postgres://postgres:s3cret@127.0.0.1",
            "postgres://postgres:s3cret@127.0.0.1:5432/",
            "postgres://postgres:s3cret@127.0.0.1:0/pushq",
            "postgres://postgres:s3cret@127.0.0.1/bad%ZZname",
        ] {
            let err = check_database_url(bad).expect_err(bad).to_string();
            assert!(err.starts_with("PUSHQ_DATABASE_URL "), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        assert!(check_database_url("postgres://postgres@127.0.0.1:5432/pushq").is_ok());
    }
}
