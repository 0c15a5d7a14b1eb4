//! RabbitMQ and PostgreSQL as the worker reaches them: one policy for both.
//! What waiting can fix (nothing listens yet, the server is starting, full or
//! restarting, a name that does not resolve yet) is retried with backoff, one
//! line per attempt naming the variable whose address is awaited; what it
//! cannot fix (credentials or permissions refused, a database that may not be
//! created) stops at once with one sentence.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

/// A service the worker needs, named as an operator configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// `RabbitMQ`, `PostgreSQL`.
    pub name: &'static str,
    /// The variable holding its URL.
    pub variable: &'static str,
    /// `host:port`: never the URL, which may hold a password.
    pub address: String,
    /// Its service in compose.yaml, for the hint on how to start it.
    compose_service: &'static str,
}

impl Dependency {
    pub fn rabbitmq(address: String) -> Self {
        Self {
            name: "RabbitMQ",
            variable: "PUSHQ_AMQP_URL",
            address,
            compose_service: "rabbitmq",
        }
    }

    pub fn postgresql(address: String) -> Self {
        Self {
            name: "PostgreSQL",
            variable: "PUSHQ_DATABASE_URL",
            address,
            compose_service: "postgres",
        }
    }

    /// How to start it on a development machine, for a command that gives up.
    pub fn start_hint(&self) -> String {
        format!(
            "start it with `docker compose up -d {}` or the system's service, or point {} at a running one",
            self.compose_service, self.variable
        )
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {} ({})", self.name, self.address, self.variable)
    }
}

/// Why one attempt to reach a dependency failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Waiting may fix it; the text says what happened, e.g. `connection refused`.
    Transient(String),
    /// Waiting cannot fix it; the text says what to change.
    Refused(String),
}

/// How long a command waits for a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// A long-running worker waits until it is there (or it is stopped).
    Forever,
    /// A command run by hand tries for at most this long, then says why.
    Within(Duration),
}

impl Patience {
    /// One-shot commands (`migrate`, `subscriptions list`, `dead …`): one attempt.
    pub const ONCE: Self = Self::Within(Duration::ZERO);

    /// How long one attempt may take: a connection and its handshake, on
    /// a loaded machine or across a continent, fit in ATTEMPT_MAX; a
    /// command's patience bounds it further, but never below a second.
    fn attempt_bound(self, elapsed: Duration) -> Duration {
        match self {
            Self::Within(limit) if !limit.is_zero() => limit
                .saturating_sub(elapsed)
                .clamp(Duration::from_secs(1), ATTEMPT_MAX),
            _ => ATTEMPT_MAX,
        }
    }
}

const ATTEMPT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// Something waiting cannot fix: a setting or a permission must change.
    #[error("{dependency} {why}")]
    Refused { dependency: Dependency, why: String },
    /// Still unreachable when the command's patience ran out.
    #[error("cannot reach {dependency}: {why}; {hint}", hint = dependency.start_hint())]
    Unreachable { dependency: Dependency, why: String },
}

/// Calls `attempt` until it succeeds, waiting with backoff between transient
/// failures and logging each on one line; stops at once on a refusal.
pub async fn wait_for<T, F, Fut>(
    dependency: &Dependency,
    patience: Patience,
    mut attempt: F,
) -> Result<T, DependencyError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Unavailable>>,
{
    let started = Instant::now();
    let mut delays = backoff();
    loop {
        let bound = patience.attempt_bound(started.elapsed());
        let answered = tokio::time::timeout(bound, attempt()).await;
        let answered = answered.unwrap_or_else(|_| {
            // A server that accepts the connection and never answers (hung,
            // or a load balancer without a backend) would otherwise hold
            // every command silent for ever.
            Err(Unavailable::Transient(format!(
                "no answer within {:.0} s",
                bound.as_secs_f64()
            )))
        });
        let why = match answered {
            Ok(value) => return Ok(value),
            Err(Unavailable::Refused(why)) => {
                return Err(DependencyError::Refused {
                    dependency: dependency.clone(),
                    why,
                });
            }
            Err(Unavailable::Transient(why)) => why,
        };
        let delay = delays.next().unwrap_or(MAX_DELAY);
        if let Patience::Within(limit) = patience
            && started.elapsed() + delay > limit
        {
            return Err(DependencyError::Unreachable {
                dependency: dependency.clone(),
                why,
            });
        }
        // A command run by hand ends with the one sentence that says it
        // all; a worker's log shows every attempt.
        if patience == Patience::Forever {
            tracing::warn!(
                dependency = dependency.name,
                variable = dependency.variable,
                address = %dependency.address,
                retry_in_ms = delay.as_millis() as u64,
                "waiting for {dependency}: {why}; next attempt in {:.1} s",
                delay.as_secs_f64()
            );
        }
        tokio::time::sleep(delay).await;
    }
}

const MAX_DELAY: Duration = Duration::from_secs(10);

/// Jittered, so that replicas restarted together do not knock together;
/// the jitter adds up to the delay again, so the result is capped after it.
pub fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
        .map(|delay| delay.min(MAX_DELAY))
}

/// An I/O failure in a few words: `connection refused`, not
/// `Connection refused (os error 111)` nested in two wrappers.
pub fn io_reason(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        kind @ (ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::TimedOut
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::AddrNotAvailable
        | ErrorKind::UnexpectedEof) => kind.to_string(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rabbitmq() -> Dependency {
        Dependency::rabbitmq("127.0.0.1:5672".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_stops_at_the_first_attempt() {
        let mut attempts = 0;
        let result: Result<(), _> = wait_for(&rabbitmq(), Patience::Forever, || {
            attempts += 1;
            async { Err(Unavailable::Refused("refused the user and password".into())) }
        })
        .await;
        assert_eq!(attempts, 1);
        assert_eq!(
            result.expect_err("refused").to_string(),
            "RabbitMQ at 127.0.0.1:5672 (PUSHQ_AMQP_URL) refused the user and password"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_the_dependency_answers() {
        let mut attempts = 0;
        let result = wait_for(&rabbitmq(), Patience::Forever, || {
            attempts += 1;
            let attempt = attempts;
            async move {
                if attempt < 5 {
                    Err(Unavailable::Transient("connection refused".into()))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_gives_up_within_its_patience_and_says_how_to_start_it() {
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = wait_for(
            &rabbitmq(),
            Patience::Within(Duration::from_secs(3)),
            || async { Err(Unavailable::Transient("connection refused".into())) },
        )
        .await;
        assert!(started.elapsed() <= Duration::from_secs(3));
        let sentence = result.expect_err("refused").to_string();
        assert!(
            sentence.starts_with(
                "cannot reach RabbitMQ at 127.0.0.1:5672 (PUSHQ_AMQP_URL): connection refused; start it with `docker compose up -d rabbitmq`"
            ),
            "{sentence}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_answers_is_an_attempt_that_failed() {
        let result: Result<(), _> = wait_for(&rabbitmq(), Patience::ONCE, || {
            std::future::pending::<Result<(), Unavailable>>()
        })
        .await;
        let sentence = result.expect_err("no answer").to_string();
        assert!(sentence.contains("no answer within 10 s"), "{sentence}");
    }

    #[test]
    fn no_wait_between_attempts_is_longer_than_ten_seconds() {
        assert!(backoff().take(50).all(|delay| delay <= MAX_DELAY));
    }

    #[tokio::test(start_paused = true)]
    async fn once_means_one_attempt() {
        let mut attempts = 0;
        let _ = wait_for(&rabbitmq(), Patience::ONCE, || {
            attempts += 1;
            async { Err::<(), _>(Unavailable::Transient("connection refused".into())) }
        })
        .await;
        assert_eq!(attempts, 1);
    }
}
