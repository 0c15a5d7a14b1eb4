//! Group commit for the deliveries' claims and records: while one statement
//! of a kind is in flight, the batches that callers bring meanwhile wait and
//! then go together as the next one. Statements, plans and WAL flushes per
//! delivery then fall as the load rises instead of rising with it, and an
//! idle replica's first batch still goes at once.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::StoreError;
use super::deliveries::{self, Claim, Health, Key, Outcome, Recording};

/// The most callers' batches joined into one statement.
const MAX_JOINED: usize = 64;

/// One kind of statement that callers' batches can share.
pub trait Statement: Send + Sync + 'static {
    type Item: Send + 'static;
    type Answer: Send + 'static;
    fn run<'a>(
        &'a self,
        items: &'a [Self::Item],
    ) -> BoxFuture<'a, Result<Self::Answer, StoreError>>;
    /// One caller's part of the answer to a joined statement.
    fn share(answer: &Self::Answer, items: &[Self::Item]) -> Self::Answer;
}

type Request<S> = (
    Vec<<S as Statement>::Item>,
    oneshot::Sender<Result<<S as Statement>::Answer, StoreError>>,
);

/// Runs a [`Statement`] for many callers, one statement at a time.
pub struct GroupCommit<S: Statement> {
    sender: mpsc::UnboundedSender<Request<S>>,
}

impl<S: Statement> std::fmt::Debug for GroupCommit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<S: Statement> GroupCommit<S> {
    /// Starts the task that runs the statements, one at a time; it ends
    /// when every handle is dropped.
    pub fn start(statement: S) -> Self {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Request<S>>();
        let statement = Arc::new(statement);
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            while receiver.recv_many(&mut waiting, MAX_JOINED).await > 0 {
                let requests = std::mem::take(&mut waiting);
                let statement = statement.clone();
                // A task of its own, so that a panic fails only this
                // statement's callers, never every later one.
                let _ = tokio::spawn(async move { run_joined(&*statement, requests).await }).await;
            }
        });
        Self { sender }
    }

    /// Runs the statement for `items`, joined with whatever other callers
    /// brought meanwhile.
    pub async fn run(&self, items: Vec<S::Item>) -> Result<S::Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.sender.send((items, reply)).is_err() {
            return Err(StoreError::Stopped);
        }
        answer.await.unwrap_or(Err(StoreError::Stopped))
    }
}

/// A joined statement whose data the database refuses is run again for
/// each caller alone, so that one caller's refused data fails only that
/// caller; any other failure is every caller's.
async fn run_joined<S: Statement>(statement: &S, requests: Vec<Request<S>>) {
    if requests.len() == 1 {
        let (items, reply) = requests.into_iter().next().expect("one request");
        let _ = reply.send(statement.run(&items).await);
        return;
    }
    let mut all = Vec::new();
    let mut callers: Vec<(Range<usize>, oneshot::Sender<_>)> = Vec::with_capacity(requests.len());
    for (items, reply) in requests {
        let start = all.len();
        all.extend(items);
        callers.push((start..all.len(), reply));
    }
    match statement.run(&all).await {
        Ok(answer) => {
            for (range, reply) in callers {
                let _ = reply.send(Ok(S::share(&answer, &all[range])));
            }
        }
        Err(err) if err.refused_data().is_some() => {
            tracing::debug!(error = %err, callers = callers.len(), "the database refused a joined statement's data; running each caller's alone");
            for (range, reply) in callers {
                let _ = reply.send(statement.run(&all[range]).await);
            }
        }
        // Anything else (a lost connection, an outage) would fail each
        // caller's statement alone too, one timeout after another.
        Err(err) => {
            let shared = Arc::new(err);
            for (_, reply) in callers {
                let _ = reply.send(Err(StoreError::Shared(shared.clone())));
            }
        }
    }
}

/// [`deliveries::claim_many`] for one replica.
#[derive(Debug)]
pub struct Claims {
    pub pool: PgPool,
    pub owner: Uuid,
}

impl Statement for Claims {
    type Item = (Key, bool);
    type Answer = HashMap<Key, Claim>;

    fn run<'a>(
        &'a self,
        items: &'a [Self::Item],
    ) -> BoxFuture<'a, Result<Self::Answer, StoreError>> {
        Box::pin(deliveries::claim_many(&self.pool, items, self.owner))
    }

    fn share(answer: &Self::Answer, items: &[Self::Item]) -> Self::Answer {
        items
            .iter()
            .filter_map(|(key, _)| Some((key.clone(), *answer.get(key)?)))
            .collect()
    }
}

/// [`deliveries::record_many`] for one replica.
#[derive(Debug)]
pub struct Records {
    pub pool: PgPool,
    pub owner: Uuid,
}

impl Statement for Records {
    type Item = Outcome;
    type Answer = Recording;

    fn run<'a>(
        &'a self,
        items: &'a [Self::Item],
    ) -> BoxFuture<'a, Result<Self::Answer, StoreError>> {
        Box::pin(deliveries::record_many(&self.pool, items, self.owner))
    }

    fn share(answer: &Self::Answer, items: &[Self::Item]) -> Self::Answer {
        let failed: HashSet<Uuid> = items
            .iter()
            .filter(|o| o.health == Health::Failure)
            .map(|o| o.key.subscription_id)
            .collect();
        Recording {
            recorded: items
                .iter()
                .filter(|o| answer.recorded.contains(&o.key))
                .map(|o| o.key.clone())
                .collect(),
            failures: answer
                .failures
                .iter()
                .filter(|(id, _)| failed.contains(id))
                .map(|(id, failures)| (*id, *failures))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check constraint's refusal (SQLSTATE 23514), as PostgreSQL sends it.
    #[derive(Debug, thiserror::Error)]
    #[error("new row violates check constraint")]
    struct CheckViolation;

    impl sqlx::error::DatabaseError for CheckViolation {
        fn message(&self) -> &str {
            "new row violates check constraint"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some("23514".into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::CheckViolation
        }
    }

    /// Sums its items and counts its statements. The database refuses any
    /// batch holding a negative item (as it refuses one message's data), and
    /// is unreachable for any batch holding zero.
    #[derive(Default)]
    struct Sum {
        statements: std::sync::Mutex<Vec<Vec<i64>>>,
    }

    impl Statement for Arc<Sum> {
        type Item = i64;
        type Answer = i64;

        fn run<'a>(&'a self, items: &'a [i64]) -> BoxFuture<'a, Result<i64, StoreError>> {
            self.statements
                .lock()
                .expect("no test thread panicked")
                .push(items.to_vec());
            let answer = if items.contains(&0) {
                Err(StoreError::Database {
                    action: "summing",
                    cause: sqlx::Error::PoolTimedOut,
                })
            } else if items.iter().any(|item| *item < 0) {
                Err(StoreError::Database {
                    action: "summing",
                    cause: sqlx::Error::Database(Box::new(CheckViolation)),
                })
            } else {
                Ok(items.iter().sum())
            };
            Box::pin(async move { answer })
        }

        fn share(_: &i64, items: &[i64]) -> i64 {
            items.iter().sum()
        }
    }

    type Answers = Vec<oneshot::Receiver<Result<i64, StoreError>>>;

    fn requests(batches: &[&[i64]]) -> (Vec<Request<Arc<Sum>>>, Answers) {
        batches
            .iter()
            .map(|items| {
                let (reply, answer) = oneshot::channel();
                ((items.to_vec(), reply), answer)
            })
            .unzip()
    }

    async fn answers(receivers: Answers) -> Vec<Option<i64>> {
        let mut answers = Vec::new();
        for receiver in receivers {
            answers.push(receiver.await.expect("every caller is answered").ok());
        }
        answers
    }

    #[tokio::test]
    async fn waiting_callers_share_one_statement_and_each_gets_its_own_part() {
        let sum = Arc::new(Sum::default());
        let (requests, receivers) = requests(&[&[1, 2], &[3], &[4, 5]]);
        run_joined(&sum, requests).await;
        assert_eq!(answers(receivers).await, vec![Some(3), Some(3), Some(9)]);
        assert_eq!(
            *sum.statements.lock().expect("no test thread panicked"),
            vec![vec![1, 2, 3, 4, 5]]
        );
    }

    #[tokio::test]
    async fn a_refused_joined_statement_fails_only_the_caller_whose_data_it_refused() {
        let sum = Arc::new(Sum::default());
        let (requests, receivers) = requests(&[&[1, 2], &[-5], &[3]]);
        run_joined(&sum, requests).await;
        assert_eq!(answers(receivers).await, vec![Some(3), None, Some(3)]);
        assert_eq!(
            *sum.statements.lock().expect("no test thread panicked"),
            vec![vec![1, 2, -5, 3], vec![1, 2], vec![-5], vec![3]]
        );
    }

    #[tokio::test]
    async fn any_other_failure_of_a_joined_statement_is_every_callers_without_running_again() {
        let sum = Arc::new(Sum::default());
        let (requests, receivers) = requests(&[&[1, 2], &[0], &[3]]);
        run_joined(&sum, requests).await;
        assert_eq!(answers(receivers).await, vec![None, None, None]);
        assert_eq!(
            *sum.statements.lock().expect("no test thread panicked"),
            vec![vec![1, 2, 0, 3]]
        );
    }

    #[tokio::test]
    async fn a_lone_caller_is_answered_through_the_running_task() {
        let sum = Arc::new(Sum::default());
        let group = GroupCommit::start(sum.clone());
        assert_eq!(group.run(vec![7, 8]).await.ok(), Some(15));
        assert!(group.run(vec![-1]).await.is_err());
    }
}
