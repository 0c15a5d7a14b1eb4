//! Reaching PostgreSQL: the target database first, the maintenance database
//! only when the target is missing, so that a role that may not connect to
//! `postgres` (managed services, PgBouncer) still starts. Failures follow
//! the dependency policy (crate::dependency).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection, PgPool};

use super::{StoreError, describe};
use crate::dependency::{self, Dependency, DependencyError, Patience, Unavailable};

/// Parses a database URL. TLS to a database on this machine protects
/// nothing and costs CPU on every query, so a loopback host gets no TLS
/// unless the URL (or PGSSLMODE) asks for an `sslmode` explicitly.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    // A prepared statement's generic plan is made once, from the table's
    // size then: one made while `deliveries` was nearly empty scans the whole
    // table for every batch for as long as the connection lives (measured:
    // PostgreSQL's CPU per notification doubled from 5,000 to 20,000 rows).
    // Each batch statement is planned for the table as it is instead. And
    // every statement of the worker reaches its rows by an index: a table
    // that grew since it was last analysed still looks small, and a joined
    // batch of a thousand keys was then hashed against a scan of all of it
    // (PostgreSQL's CPU per broadcast notification halved without). Where
    // no index serves, PostgreSQL still scans: this only weighs the choice.
    let options = PgConnectOptions::from_str(url)
        .map_err(StoreError::InvalidUrl)?
        .options([
            ("plan_cache_mode", "force_custom_plan"),
            ("enable_seqscan", "off"),
        ]);
    let explicit = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    let loopback = matches!(
        options.get_host(),
        "localhost" | "127.0.0.1" | "::1" | "[::1]"
    ) || options.get_host().starts_with('/');
    Ok(if loopback && !explicit {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    })
}

/// The server as an operator names it: host and port, never the URL.
pub fn dependency(options: &PgConnectOptions) -> Dependency {
    let host = options.get_host();
    Dependency::postgresql(if host.starts_with('/') {
        host.to_owned()
    } else {
        format!("{host}:{}", options.get_port())
    })
}

/// Connects a pool once the database answers; `max_connections` bounds what
/// one replica holds.
pub async fn connect(
    url: &str,
    max_connections: u32,
    patience: Patience,
) -> Result<PgPool, StoreError> {
    reach(url, max_connections, patience, Missing::Refuse).await
}

/// `run`/`migrate`/`demo`: reach the database (creating it if it is
/// missing and the role may), connect, migrate.
pub async fn prepare(
    url: &str,
    max_connections: u32,
    patience: Patience,
) -> Result<PgPool, StoreError> {
    let pool = reach(url, max_connections, patience, Missing::Create).await?;
    match super::migrate(&pool).await {
        Err(StoreError::Migrate(err))
            if super::migration_sqlstate(&err).as_deref() == Some(INSUFFICIENT_PRIVILEGE) =>
        {
            Err(StoreError::Unavailable(DependencyError::Refused {
                dependency: dependency(pool.connect_options().as_ref()),
                why: format!(
                    "refused the migrations ({}): the role needs to own the database, or CREATE on its schema, or run `pushq-worker migrate` once as a role that does",
                    super::describe_migration(&err)
                ),
            }))
        }
        Err(err) => Err(err),
        Ok(()) => Ok(pool),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Create,
    Refuse,
}

async fn reach(
    url: &str,
    max_connections: u32,
    patience: Patience,
    missing: Missing,
) -> Result<PgPool, StoreError> {
    let options = connect_options(url)?;
    dependency::wait_for(&dependency(&options), patience, || {
        answers(&options, missing)
    })
    .await
    .map_err(StoreError::Unavailable)?;
    // The server just answered, so the pool may open its connections as
    // they are needed.
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

/// One connection to the target database, closed again.
async fn answers(options: &PgConnectOptions, missing: Missing) -> Result<(), Unavailable> {
    let err = match PgConnection::connect_with(options).await {
        Ok(connection) => {
            let _ = connection.close().await;
            return Ok(());
        }
        Err(err) => err,
    };
    if sqlstate(&err).as_deref() == Some(UNDEFINED_DATABASE) {
        let name = database_name(options);
        return match missing {
            Missing::Create => create_database(options, &name).await,
            Missing::Refuse => Err(Unavailable::Refused(format!(
                "has no database {name:?}: create it with `pushq-worker migrate`"
            ))),
        };
    }
    Err(classify(&err))
}

const UNDEFINED_DATABASE: &str = "3D000";
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Safe when many replicas start at once: losing the race to create it is
/// success.
async fn create_database(options: &PgConnectOptions, name: &str) -> Result<(), Unavailable> {
    let by_hand = format!(
        "create it as a role that may (CREATE DATABASE {} OWNER {}), or point PUSHQ_DATABASE_URL at an existing database",
        quoted(name),
        quoted(options.get_username())
    );
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(|err| {
            Unavailable::Refused(format!(
                "has no database {name:?}, and connecting to the maintenance database \"postgres\" to create it failed ({}): {by_hand}",
                describe(&err)
            ))
        })?;
    let create = format!("CREATE DATABASE {}", quoted(name));
    let created = sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    match created {
        Ok(_) => Ok(()),
        Err(err) if matches!(sqlstate(&err).as_deref(), Some("42P04" | "23505")) => Ok(()),
        Err(err) => Err(Unavailable::Refused(format!(
            "has no database {name:?}, and creating it failed ({}): {by_hand}",
            describe(&err)
        ))),
    }
}

/// An SQL identifier, quoted, so that any name (upper case, spaces, quotes)
/// is taken as it is.
fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// PostgreSQL names the user's own database when the URL names none.
fn database_name(options: &PgConnectOptions) -> String {
    options
        .get_database()
        .unwrap_or(options.get_username())
        .to_owned()
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    Some(err.as_database_error()?.code()?.into_owned())
}

/// Whether waiting can fix a failed connection attempt.
fn classify(err: &sqlx::Error) -> Unavailable {
    let Some(code) = sqlstate(err) else {
        return match err {
            sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => {
                Unavailable::Refused(format!("refused the connection: {}", describe(err)))
            }
            _ => Unavailable::Transient(describe(err)),
        };
    };
    match code.as_str() {
        // Starting, shutting down, too many connections, a broken link:
        // all pass by themselves.
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
            Unavailable::Transient(describe(err))
        }
        "28P01" | "28000" => {
            Unavailable::Refused(format!("refused the user or password: {}", describe(err)))
        }
        _ => Unavailable::Refused(format!("refused the connection: {}", describe(err))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_host_and_port_never_the_password() {
        let options =
            connect_options("postgres://pushq:hunter2@db.internal:6432/pushq").expect("valid");
        let dependency = dependency(&options);
        assert_eq!(dependency.address, "db.internal:6432");
        assert!(!format!("{dependency:?}").contains("hunter2"));
    }

    #[test]
    fn a_url_without_a_database_means_the_users_own() {
        let options = connect_options("postgres://pushq@127.0.0.1/").expect("valid");
        assert_eq!(database_name(&options), "pushq");
    }
}
