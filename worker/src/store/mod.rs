//! PostgreSQL: subscriptions and the deliveries idempotency record. Knows
//! nothing of HTTP or AMQP.

pub mod connect;
pub mod deliveries;
pub mod group_commit;
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
    /// Shown with the server's own words, not sqlx's text, which adds the
    /// line of PostgreSQL's C source the error came from ("at line 3655").
    #[error("database error while {action}: {}", describe(cause))]
    Database {
        action: &'static str,
        cause: sqlx::Error,
    },
    #[error("applying migrations failed: {}", describe_migration(.0))]
    Migrate(sqlx::migrate::MigrateError),
    /// Unreachable, or refused: the sentence names the variable to look at.
    /// Its own text, and its source too, so that callers find it in the chain.
    #[error("{0}")]
    Unavailable(#[source] crate::dependency::DependencyError),
    /// A joined statement ended without an answer: its task panicked, or
    /// the process is shutting down.
    #[error("the replica's database writer has stopped")]
    Stopped,
    /// One failure of a statement that several callers shared (group commit).
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
}

impl StoreError {
    /// The SQLSTATE when the database refused the data itself (a data
    /// exception, a constraint, a limit such as an index entry's size):
    /// the statement fails the same way every time, unlike a lost
    /// connection, so the message that carries the data is at fault.
    pub fn refused_data(&self) -> Option<String> {
        let cause = match self {
            Self::Database { cause, .. } => cause,
            Self::Shared(shared) => return shared.refused_data(),
            _ => return None,
        };
        let code = cause.as_database_error()?.code()?;
        ["22", "23", "54"]
            .iter()
            .any(|class| code.starts_with(class))
            .then(|| code.into_owned())
    }
}

pub(crate) fn db_error(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |cause| StoreError::Database { action, cause }
}

/// The server's own words with their SQLSTATE (they name the user, never
/// the password), the I/O failure in a few words, or sqlx's text.
pub(crate) fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => crate::dependency::io_reason(io),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(UNDEFINED_TABLE) => format!(
                "{} ({UNDEFINED_TABLE}): the database has no pushq tables yet; create them with `pushq-worker migrate`",
                db.message()
            ),
            Some(code) => format!("{} ({code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

const UNDEFINED_TABLE: &str = "42P01";

pub(crate) fn describe_migration(err: &sqlx::migrate::MigrateError) -> String {
    use sqlx::migrate::MigrateError;
    match err {
        MigrateError::Execute(err) => describe(err),
        MigrateError::ExecuteMigration(err, version) => {
            format!("migration {version}: {}", describe(err))
        }
        other => other.to_string(),
    }
}

/// The SQLSTATE a failed migration ended with.
pub(crate) fn migration_sqlstate(err: &sqlx::migrate::MigrateError) -> Option<String> {
    use sqlx::migrate::MigrateError;
    let (MigrateError::Execute(err) | MigrateError::ExecuteMigration(err, _)) = err else {
        return None;
    };
    Some(err.as_database_error()?.code()?.into_owned())
}

/// Migrations are compiled in, so a deployed binary needs no files beside it.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies pending migrations; sqlx holds an advisory lock, so concurrent
/// replicas wait for each other instead of colliding.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)
}
