//! Group commit for the deliveries' claims and records: while one statement
//! of a kind is in flight, the batches that callers bring meanwhile wait and
//! then go together as the next one. Statements, plans and WAL flushes per
//! delivery then fall as the load rises instead of rising with it, and an
//! idle replica's first batch still goes at once.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

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
    /// Starts the task that runs the statements; it ends when every handle
    /// is dropped.
    pub fn start(statement: S) -> Self {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Request<S>>();
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            while receiver.recv_many(&mut waiting, MAX_JOINED).await > 0 {
                run_joined(&statement, std::mem::take(&mut waiting)).await;
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

/// A joined statement that fails is run again for each caller alone, so
/// that one caller's refused data fails only that caller.
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
        Err(err) => {
            tracing::debug!(error = %err, callers = callers.len(), "a joined statement failed; running each caller's alone");
            for (range, reply) in callers {
                let _ = reply.send(statement.run(&all[range]).await);
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

    /// Sums its items and counts its statements; refuses any batch holding
    /// a negative item, as the database refuses one message's data.
    #[derive(Default)]
    struct Sum {
        statements: std::sync::Mutex<Vec<Vec<i64>>>,
    }

    impl Statement for std::sync::Arc<Sum> {
        type Item = i64;
        type Answer = i64;

        fn run<'a>(&'a self, items: &'a [i64]) -> BoxFuture<'a, Result<i64, StoreError>> {
            self.statements
                .lock()
                .expect("no test thread panicked")
                .push(items.to_vec());
            let refused = items.iter().any(|item| *item < 0);
            let sum = items.iter().sum();
            Box::pin(async move {
                if refused {
                    Err(StoreError::Stopped)
                } else {
                    Ok(sum)
                }
            })
        }

        fn share(_: &i64, items: &[i64]) -> i64 {
            items.iter().sum()
        }
    }

    type Answers = Vec<oneshot::Receiver<Result<i64, StoreError>>>;

    fn requests(batches: &[&[i64]]) -> (Vec<Request<std::sync::Arc<Sum>>>, Answers) {
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
        let sum = std::sync::Arc::new(Sum::default());
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
        let sum = std::sync::Arc::new(Sum::default());
        let (requests, receivers) = requests(&[&[1, 2], &[-5], &[3]]);
        run_joined(&sum, requests).await;
        assert_eq!(answers(receivers).await, vec![Some(3), None, Some(3)]);
        assert_eq!(
            *sum.statements.lock().expect("no test thread panicked"),
            vec![vec![1, 2, -5, 3], vec![1, 2], vec![-5], vec![3]]
        );
    }

    #[tokio::test]
    async fn a_lone_caller_is_answered_through_the_running_task() {
        let sum = std::sync::Arc::new(Sum::default());
        let group = GroupCommit::start(sum.clone());
        assert_eq!(group.run(vec![7, 8]).await.ok(), Some(15));
        assert!(group.run(vec![-1]).await.is_err());
    }
}
