//! PostgreSQL: subscriptions and the deliveries idempotency record. Knows
//! nothing of HTTP or AMQP.

pub mod connect;
pub mod deliveries;
pub mod marks;
pub mod subscriptions;
pub mod workers;

use sqlx::PgPool;

pub use connect::{connect, prepare};
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
    /// Unreachable, or refused: the sentence names the variable to look at.
    /// Its own text, and its source too, so that callers find it in the chain.
    #[error("{0}")]
    Unavailable(#[source] crate::dependency::DependencyError),
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

/// Applies pending migrations; sqlx holds an advisory lock, so concurrent
/// replicas wait for each other instead of colliding.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)
}
