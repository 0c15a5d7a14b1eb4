//! PostgreSQL: subscriptions and the deliveries idempotency record. Knows
//! nothing of HTTP or AMQP.

pub mod deliveries;
pub mod marks;
pub mod subscriptions;
pub mod workers;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection, PgPool};

pub use deliveries::{Claim, DeliveryStatus};
pub use subscriptions::StoredSubscription;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL is invalid")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("database error while {action}")]
    Database {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The SQLSTATE when the database refused the data itself (a data
    /// exception, a constraint, a limit such as an index entry's size):
    /// the statement fails the same way every time, unlike a lost
    /// connection, so the message that carries the data is at fault.
    pub fn refused_data(&self) -> Option<String> {
        let Self::Database { source, .. } = self else {
            return None;
        };
        let code = source.as_database_error()?.code()?;
        ["22", "23", "54"]
            .iter()
            .any(|class| code.starts_with(class))
            .then(|| code.into_owned())
    }
}

pub(crate) fn db_error(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { action, source }
}

/// Migrations are compiled in, so a deployed binary needs no files beside it.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Creates the database if it is missing. Safe when many replicas start at
/// once: losing the race to create it is success.
pub async fn create_database_if_missing(url: &str) -> Result<(), StoreError> {
    let options = connect_options(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(db_error("connecting to the postgres maintenance database"))?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await
        .map_err(db_error("looking up the database"))?;
    if exists.is_none() {
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
        {
            let lost_race = err
                .as_database_error()
                .and_then(|db| db.code())
                .is_some_and(|code| code == "42P04" || code == "23505");
            if !lost_race {
                return Err(db_error("creating the database")(err));
            }
        }
    }
    let _ = admin.close().await;
    Ok(())
}

/// Parses a database URL. TLS to a database on this machine protects
/// nothing and costs CPU on every query, so a loopback host gets no TLS
/// unless the URL (or PGSSLMODE) asks for an `sslmode` explicitly.
fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(StoreError::InvalidUrl)?;
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

/// Connects a pool; `max_connections` bounds what one replica holds.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = connect_options(url)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(db_error("connecting"))
}

/// Applies pending migrations; sqlx holds an advisory lock, so concurrent
/// replicas wait for each other instead of colliding.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)
}

/// `run`/`migrate`/`demo`: create if missing, connect, migrate.
pub async fn prepare(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    create_database_if_missing(url).await?;
    let pool = connect(url, max_connections).await?;
    migrate(&pool).await?;
    Ok(pool)
}
