//! The outcomes of a batch's attempts on their way out: recorded in one
//! statement (fenced by the claims), subscriptions past the failure
//! threshold dropped, and each job's result events gathered for the
//! consumer to publish before it acks.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use pushq_schemas::{DeliveryResult, InvalidEvent, ResultReason, ResultType, event_types};
use serde_json::json;
use tracing::Span;
use uuid::Uuid;

use super::Pipeline;
use super::deliver::Pending;
use super::job::{Job, Recipient};
use crate::push::classify::is_subscriptions_own;
use crate::results;
use crate::step::{FollowUp, Outcome};
use crate::store::StoreError;
use crate::store::deliveries::{self, DeliveryStatus, Health, Recorded};
use crate::store::subscriptions;

/// One recipient's outcome on its way to the table and the results exchange.
pub(super) struct Concluded {
    job: usize,
    /// The delivery's CLIENT span, or the job's when nothing was attempted.
    span: Span,
    recipient: Recipient,
    origin: String,
    attempt: u32,
    status: DeliveryStatus,
    http_status: Option<u16>,
    reason: Option<ResultReason>,
    pub retry_in_ms: Option<u64>,
    /// Recorded by an earlier attempt; only its result is missing.
    already_recorded: bool,
    /// False for a delivery our own limiter deferred before sending: it is
    /// not an attempt, and no result is published for it.
    pub attempt_counts: bool,
}

impl Concluded {
    pub fn new(
        pending: Pending,
        span: Span,
        attempt: u32,
        status: DeliveryStatus,
        http_status: Option<u16>,
        reason: Option<ResultReason>,
    ) -> Self {
        Self {
            job: pending.job,
            span,
            recipient: pending.recipient,
            origin: pending.origin,
            attempt,
            status,
            http_status,
            reason,
            retry_in_ms: None,
            already_recorded: false,
            attempt_counts: true,
        }
    }

    /// A delivery final before this message came: only its result is owed.
    pub fn recorded_before(pending: Pending, span: Span, recorded: Recorded) -> Self {
        let mut again = Self::new(
            pending,
            span,
            recorded.attempts.max(1),
            recorded.status,
            recorded.http_status,
            recorded.reason,
        );
        again.already_recorded = true;
        again
    }

    fn result_type(&self) -> Option<ResultType> {
        if !self.attempt_counts {
            return None;
        }
        match self.status {
            DeliveryStatus::Delivered => Some(ResultType::Succeeded),
            DeliveryStatus::Gone => Some(ResultType::Gone),
            DeliveryStatus::Expired => Some(ResultType::Expired),
            DeliveryStatus::Failed | DeliveryStatus::Exhausted => Some(ResultType::Failed),
            DeliveryStatus::Retrying => Some(ResultType::Retrying),
            DeliveryStatus::Sending => None,
        }
    }

    /// Only the subscription's own failures count against it (push/classify.rs).
    fn health(&self) -> Health {
        if !self.recipient.stored {
            return Health::Unchanged;
        }
        match (self.status, self.reason) {
            (DeliveryStatus::Delivered, _) => Health::Success,
            (DeliveryStatus::Failed, Some(reason))
                if is_subscriptions_own(reason, self.http_status) =>
            {
                Health::Failure
            }
            _ => Health::Unchanged,
        }
    }
}

/// Outcomes written, waiting to be applied ([`Pipeline::apply`]).
pub(super) struct Written {
    concluded: Vec<Concluded>,
    /// None when every outcome was recorded before.
    recording: Option<deliveries::Recording>,
}

/// What one job's recipients need next, gathered while they are handled.
#[derive(Default)]
pub(super) struct Batch {
    retries: BTreeMap<u64, Vec<Uuid>>,
    pub exhausted: Vec<Uuid>,
    requeue: bool,
    /// The database refused this message's data: it is dead-lettered.
    pub refused: Option<InvalidEvent>,
    results: Vec<FollowUp>,
    published: Vec<deliveries::Key>,
}

impl Batch {
    /// `id` tries again after `delay_ms`.
    pub fn retry(&mut self, id: Uuid, delay_ms: u64) {
        self.retries.entry(delay_ms).or_default().push(id);
    }

    /// The whole message goes back to the broker (a claim could not be read).
    pub fn requeue(&mut self) {
        self.requeue = true;
    }

    /// The job's outcome; `exhausted` is the dead letter's reason when any
    /// recipient's retries are used up.
    pub fn into_outcome(self, job: &Job, source: &str, exhausted: Option<InvalidEvent>) -> Outcome {
        if let Some(refused) = self.refused {
            return Outcome::DeadLetter(refused);
        }
        if self.requeue {
            return Outcome::requeue();
        }
        let retry_event = |ids: Vec<Uuid>| {
            job.internal_event(
                event_types::INTERNAL_RETRY,
                source,
                json!({ "subscriptions": ids }),
            )
        };
        let mut follow_ups = self.results;
        follow_ups.extend(
            self.retries
                .into_iter()
                .map(|(delay_ms, ids)| FollowUp::Retry {
                    delay_ms,
                    event: retry_event(ids),
                }),
        );
        if let (false, Some(reason)) = (self.exhausted.is_empty(), exhausted) {
            follow_ups.push(FollowUp::Exhausted {
                event: retry_event(self.exhausted),
                reason,
            });
        }
        Outcome::Ack {
            follow_ups,
            published: self.published,
        }
    }
}

impl Pipeline {
    /// Records outcomes (one statement, fenced by the claims) before their
    /// results are gathered ([`Pipeline::apply`]): a crash can repeat a
    /// result, never lose one. It needs no batch, so a fan-out goes on
    /// sending while it runs.
    pub(super) fn write<'a>(
        &'a self,
        jobs: &[Job],
        concluded: Vec<Concluded>,
    ) -> impl Future<Output = Result<Written, StoreError>> + use<'a> {
        let outcomes: Vec<deliveries::Outcome> = concluded
            .iter()
            .filter(|c| !c.already_recorded)
            .map(|c| deliveries::Outcome {
                key: jobs[c.job].key(&c.recipient),
                status: c.status,
                http_status: c.http_status,
                reason: c.reason,
                attempt_counts: c.attempt_counts,
                health: c.health(),
            })
            .collect();
        async move {
            let recording = if outcomes.is_empty() {
                None
            } else {
                Some(self.records.run(outcomes).await?)
            };
            Ok(Written {
                concluded,
                recording,
            })
        }
    }

    /// What follows a written record: subscriptions past the failure
    /// threshold dropped, each job's result events gathered.
    pub(super) async fn apply(
        &self,
        jobs: &[Job],
        written: Written,
        batches: &mut [Batch],
    ) -> Result<(), StoreError> {
        let Written {
            mut concluded,
            recording,
        } = written;
        if let Some(recording) = recording {
            // An outcome not recorded lost its claim: this replica was taken
            // for dead, and the one that took over records and publishes.
            concluded.retain(|c| {
                let kept = c.already_recorded
                    || recording.recorded.contains(&jobs[c.job].key(&c.recipient));
                if !kept {
                    tracing::warn!(event_id = %jobs[c.job].notification.id, subscription = %c.recipient.id, "another replica took this delivery over; its outcome is that replica's to record");
                }
                kept
            });
            let limit = self.settings.max_consecutive_failures;
            for (id, failures) in recording.failures {
                if limit > 0 && failures >= limit {
                    let deleted = subscriptions::delete_by_id(&self.pool, id).await?;
                    self.metrics().subscriptions_deleted("failing", deleted);
                    tracing::warn!(subscription = %id, failures, "subscription deleted after consecutive failures (PUSHQ_MAX_CONSECUTIVE_FAILURES)");
                }
            }
        }
        let now = Utc::now();
        for c in concluded {
            let job = &jobs[c.job];
            let Some(result_type) = c.result_type() else {
                c.span.record("pushq.outcome", "deferred");
                continue;
            };
            c.span.record("pushq.outcome", result_type.outcome());
            if matches!(result_type, ResultType::Failed) {
                c.span.record("otel.status_code", "error");
            }
            if !c.already_recorded {
                self.metrics().delivery(result_type, &c.origin);
                if c.status.is_final() {
                    self.metrics().delivery_latency(
                        (now - job.ttl_started).to_std().unwrap_or(Duration::ZERO),
                    );
                }
            }
            let data = DeliveryResult {
                notification: job.notification.id.clone(),
                notification_source: job.notification.source.clone(),
                subscription: c.recipient.stored.then(|| c.recipient.id.to_string()),
                user: c.recipient.user.clone(),
                push_service: c.origin.clone(),
                status: c.http_status,
                attempt: c.attempt,
                reason: c.reason,
                retry_in_ms: c.retry_in_ms,
            };
            let event = results::result_event(
                result_type,
                &data,
                &self.settings.source,
                job.trace_context(&c.span).as_ref(),
            );
            let batch = &mut batches[c.job];
            batch.results.push(FollowUp::Result { event });
            if c.status.is_final() {
                batch.published.push(job.key(&c.recipient));
            }
        }
        Ok(())
    }
}
