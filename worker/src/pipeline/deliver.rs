//! Delivering prepared jobs together: claim every delivery in one round
//! trip, send them (bounded concurrency), conclude each answer by the one
//! rule of `retry::conclude`, then record (pipeline/record.rs).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures_util::future::OptionFuture;
use futures_util::{StreamExt, stream};
use pushq_schemas::data::endpoint_origin;
use pushq_schemas::{InvalidEvent, InvalidKind, ResultReason};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::Pipeline;
use super::job::{Job, Recipient};
use super::record::{Batch, Concluded};
use crate::push::classify::is_senders_fault;
use crate::push::{PushMessage, Verdict, classify_error, classify_status};
use crate::retry::{Conclusion, conclude};
use crate::step::Outcome;
use crate::store::StoreError;
use crate::store::deliveries::{Claim, DeliveryStatus};

/// How soon a delivery that a live replica is sending is looked at again:
/// by then it is final (and skipped), or its holder is dead and it is sent.
const HELD_ELSEWHERE_RETRY_MS: u64 = 1000;

/// A recipient waiting for its claim, with the index of its job.
pub(super) struct Pending {
    pub job: usize,
    pub recipient: Recipient,
    pub origin: String,
}

/// What a push service said (with its HTTP status), or `Err(wait)` when our
/// own rate limit deferred the message unsent.
type Answer = Result<(Verdict, Option<u16>), Duration>;

impl Pipeline {
    /// Delivers the recipients of several notifications together, with a
    /// constant number of database round trips for the lot. Returns one
    /// outcome per job, in order: its results, retries and dead letters to
    /// publish before the ack.
    pub(super) async fn deliver_many(&self, jobs: Vec<(Job, Vec<Recipient>)>) -> Vec<Outcome> {
        let (jobs, recipients): (Vec<Job>, Vec<Vec<Recipient>>) = jobs.into_iter().unzip();
        let mut batches: Vec<Batch> = jobs.iter().map(|_| Batch::default()).collect();
        let mut to_claim = Vec::new();
        // The same notification can sit twice in one batch (a producer that
        // published it twice, or a redelivery beside a retry): each delivery
        // is claimed once, by the first; the others have nothing left to do.
        let mut seen = HashSet::new();
        for (index, recipients) in recipients.into_iter().enumerate() {
            for recipient in recipients {
                if !seen.insert(jobs[index].key(&recipient)) {
                    continue;
                }
                let origin = endpoint_origin(&recipient.endpoint);
                match self.pauses.remaining_for(&origin, recipient.id) {
                    // Not an attempt: the push service asked us to wait.
                    Some(pause) => batches[index].retry(recipient.id, duration_ms(pause)),
                    None => to_claim.push(Pending {
                        job: index,
                        recipient,
                        origin,
                    }),
                }
            }
        }
        let mut jobs = jobs;
        match self.attempt_all(&mut jobs, to_claim, &mut batches).await {
            Ok(()) => batches
                .into_iter()
                .zip(&jobs)
                .map(|(batch, job)| self.outcome(batch, job))
                .collect(),
            // Claims the database refused were dead-lettered message by
            // message; anything failing here concerns the whole batch, which
            // waits and comes back.
            Err(err) => {
                tracing::warn!(error = %err, jobs = jobs.len(), "delivering a batch was interrupted; its messages wait in the delay queues and come back");
                jobs.iter().map(|_| Outcome::requeue()).collect()
            }
        }
    }

    async fn attempt_all(
        &self,
        jobs: &mut [Job],
        pending: Vec<Pending>,
        batches: &mut [Batch],
    ) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        // What this replica is sending already is held, by itself.
        let (_sending, pending, held_here) = self
            .sending
            .reserve(pending, |p| jobs[p.job].key(&p.recipient));
        for p in held_here {
            batches[p.job].retry(p.recipient.id, HELD_ELSEWHERE_RETRY_MS);
        }
        let claims = self.claim(jobs, &pending, batches).await?;
        // A delivery claimed again (its message redelivered after a crash)
        // tells when its notification was first received. Most claims are
        // first attempts: then no key is built twice.
        let claimed_again = claims
            .values()
            .any(|claim| matches!(claim, Claim::Granted { attempt: 2.., .. }));
        if claimed_again {
            for p in &pending {
                if let Some(Claim::Granted {
                    attempt: 2..,
                    first_claimed,
                }) = claims.get(&jobs[p.job].key(&p.recipient))
                {
                    jobs[p.job].received_no_later_than(*first_claimed);
                }
            }
        }
        let jobs: &[Job] = jobs;
        let mut concluded: Vec<Concluded> = Vec::new();
        let mut to_send = Vec::new();
        for p in pending {
            let job = &jobs[p.job];
            if batches[p.job].refused.is_some() {
                continue;
            }
            match claims.get(&job.key(&p.recipient)).copied() {
                Some(Claim::Granted { attempt, .. }) => {
                    let span = deliver_span(job, &p.origin, attempt);
                    if job.expired() {
                        span.in_scope(|| tracing::info!(event_id = %job.notification.id, push_service = %p.origin, "TTL passed before delivery; expired"));
                        concluded.push(Concluded::new(
                            p,
                            span,
                            attempt,
                            DeliveryStatus::Expired,
                            None,
                            Some(ResultReason::Expired),
                        ));
                    } else {
                        to_send.push((p, attempt, span));
                    }
                }
                // Final before this message came: its result, and an
                // exhausted one's dead letter, are owed until noted published
                // (a crash, or a publish that failed, came in between).
                Some(Claim::Done(recorded)) => {
                    if !recorded.result_published {
                        if recorded.status == DeliveryStatus::Exhausted {
                            batches[p.job].exhausted.push(p.recipient.id);
                        }
                        concluded.push(Concluded::recorded_before(p, job.span.clone(), recorded));
                    }
                }
                // Not an attempt, and no result: the holder publishes it.
                Some(Claim::HeldElsewhere) => {
                    batches[p.job].retry(p.recipient.id, HELD_ELSEWHERE_RETRY_MS);
                }
                None => batches[p.job].requeue(),
            }
        }
        let payloads: Vec<Vec<u8>> = jobs.iter().map(|job| job.send.payload_bytes()).collect();
        let concurrency = self.settings.fanout_concurrency.max(1);
        let mut answers = stream::iter(to_send)
            .map(|(p, attempt, span)| {
                let job = &jobs[p.job];
                let payload = &payloads[p.job];
                async move {
                    let answer = self
                        .send_one(job, &p.recipient, &p.origin, payload)
                        .instrument(span.clone())
                        .await;
                    (p, attempt, span, answer)
                }
            })
            .buffer_unordered(concurrency)
            // Recorded as the answers come, not when the last one does: a
            // replica that dies mid fan-out leaves unrecorded (and so sends
            // again) only what was in flight or answered during the record
            // statement in flight, not everything it had sent.
            .ready_chunks(concurrency);
        // Sending goes on while the answers before are written: one record
        // statement at a time, with whatever answers came meanwhile.
        let mut writing = None;
        let mut answered_all = false;
        loop {
            if writing.is_none() && !concluded.is_empty() {
                writing = Some(Box::pin(self.write(jobs, std::mem::take(&mut concluded))));
            }
            if answered_all && writing.is_none() {
                return Ok(());
            }
            let in_flight = writing.is_some();
            tokio::select! {
                answered = answers.next(), if !answered_all => match answered {
                    Some(answered) => self.conclude_all(jobs, answered, &mut concluded, batches),
                    None => answered_all = true,
                },
                Some(written) = OptionFuture::from(writing.as_mut()), if in_flight => {
                    writing = None;
                    self.apply(jobs, written?, batches).await?;
                }
            }
        }
    }

    fn conclude_all(
        &self,
        jobs: &[Job],
        answered: Vec<(Pending, u32, Span, Answer)>,
        concluded: &mut Vec<Concluded>,
        batches: &mut [Batch],
    ) {
        for (p, attempt, span, answer) in answered {
            concluded.push(self.conclude_answer(&jobs[p.job], p, attempt, span, answer, batches));
        }
    }

    /// What one answer comes to, noted in its job's batch.
    fn conclude_answer(
        &self,
        job: &Job,
        p: Pending,
        attempt: u32,
        span: Span,
        answer: Answer,
        batches: &mut [Batch],
    ) -> Concluded {
        // No await here: the guard only scopes this delivery's log lines.
        let _in_span = span.clone().entered();
        let (verdict, status) = match answer {
            Ok(answer) => answer,
            Err(wait) => {
                // Deferred by our own rate limit: back to the delay queues,
                // and the attempt does not count.
                batches[p.job].retry(p.recipient.id, duration_ms(wait));
                let mut deferred = Concluded::new(
                    p,
                    span,
                    attempt,
                    DeliveryStatus::Retrying,
                    None,
                    Some(ResultReason::Throttled),
                );
                deferred.attempt_counts = false;
                return deferred;
            }
        };
        if let Some(status) = status {
            span.record("http.response.status_code", status);
        }
        let conclusion = conclude(
            verdict,
            attempt,
            job.ttl_left(),
            &self.settings.schedule,
            jitter(),
        );
        if let Verdict::Retry { reason, after } = verdict {
            self.note_throttling(&p, reason, after, conclusion);
        }
        let event_id = &job.notification.id;
        let origin = p.origin.clone();
        let (delivery_status, reason, retry_in_ms) = match conclusion {
            Conclusion::Delivered => {
                tracing::debug!(push_service = %origin, "delivered");
                (DeliveryStatus::Delivered, None, None)
            }
            Conclusion::Gone => {
                tracing::info!(%event_id, subscription = %p.recipient.id, push_service = %origin, "subscription gone");
                (DeliveryStatus::Gone, Some(ResultReason::Gone), None)
            }
            Conclusion::Failed(reason) => {
                if is_senders_fault(reason) {
                    self.metrics().sender_fault(reason, &origin);
                }
                if matches!(reason, ResultReason::Unauthorized | ResultReason::Forbidden) {
                    tracing::error!(push_service = %origin, status, "the push service refused our VAPID credentials: check PUSHQ_VAPID_PRIVATE_KEY and PUSHQ_VAPID_SUBJECT; the subscription is kept");
                } else if is_senders_fault(reason) {
                    tracing::error!(%event_id, push_service = %origin, status, reason = reason.as_str(), "the push service refused the notification itself; no retry can help and the subscription is kept");
                } else {
                    tracing::warn!(%event_id, push_service = %origin, status, reason = reason.as_str(), "delivery failed");
                }
                (DeliveryStatus::Failed, Some(reason), None)
            }
            Conclusion::Retry { reason, delay_ms } => {
                tracing::info!(%event_id, push_service = %origin, attempt, reason = reason.as_str(), retry_in_ms = delay_ms, "will retry");
                batches[p.job].retry(p.recipient.id, delay_ms);
                (DeliveryStatus::Retrying, Some(reason), Some(delay_ms))
            }
            Conclusion::Exhausted { reason } => {
                tracing::warn!(%event_id, push_service = %origin, attempt, reason = reason.as_str(), "retries exhausted");
                batches[p.job].exhausted.push(p.recipient.id);
                (
                    DeliveryStatus::Exhausted,
                    Some(ResultReason::RetriesExhausted),
                    None,
                )
            }
            Conclusion::Expired { .. } => {
                tracing::info!(%event_id, push_service = %origin, attempt, "the next retry would start after the TTL; expired");
                (DeliveryStatus::Expired, Some(ResultReason::Expired), None)
            }
        };
        let mut concluded = Concluded::new(p, span, attempt, delivery_status, status, reason);
        concluded.retry_in_ms = retry_in_ms;
        concluded
    }

    /// A throttled answer concerns its subscription; the breaker decides
    /// whether the whole push service pauses (push/pauses.rs).
    fn note_throttling(
        &self,
        p: &Pending,
        reason: ResultReason,
        after: Option<Duration>,
        conclusion: Conclusion,
    ) {
        if reason != ResultReason::Throttled && after.is_none() {
            return;
        }
        let asked = match (after, conclusion) {
            (Some(after), _) => self.settings.schedule.clamp_retry_after(after),
            (None, Conclusion::Retry { delay_ms, .. }) => Duration::from_millis(delay_ms),
            (None, _) => Duration::ZERO,
        };
        if let Some(pause) = self.pauses.throttled(&p.origin, p.recipient.id, asked) {
            tracing::warn!(push_service = %p.origin, pause_ms = duration_ms(pause), "many subscriptions of this push service were throttled at once; pausing it");
        }
    }

    /// Encrypts, signs and POSTs one message with the TTL that is left; what
    /// the answer means, or `Err(wait)` when our own rate limit deferred it unsent.
    async fn send_one(
        &self,
        job: &Job,
        recipient: &Recipient,
        origin: &str,
        payload: &[u8],
    ) -> Answer {
        let result = self
            .push
            .deliver(PushMessage {
                endpoint: &recipient.endpoint,
                p256dh: &recipient.p256dh,
                auth: &recipient.auth,
                payload,
                ttl_seconds: job.ttl_header(),
                urgency: job.send.urgency,
                topic: job.send.topic.as_deref(),
            })
            .await;
        match result {
            Ok(response) => Ok((
                classify_status(
                    response.status,
                    response.retry_after.as_deref(),
                    SystemTime::now(),
                ),
                Some(response.status),
            )),
            Err(err) => classify_error(&err).map(|verdict| {
                tracing::debug!(push_service = %origin, error = %err, "no answer from the push service");
                (verdict, None)
            }),
        }
    }

    /// A job's outcome: its results, retries and dead letters to publish.
    fn outcome(&self, batch: Batch, job: &Job) -> Outcome {
        let exhausted = (!batch.exhausted.is_empty()).then(|| {
            InvalidEvent::new(
                InvalidKind::RetriesExhausted,
                format!(
                    "delivery failed after {} attempts; replay with `pushq-worker dead replay --kind retries_exhausted`",
                    self.settings.schedule.max_attempts()
                ),
            )
        });
        batch.into_outcome(job, &self.settings.source, exhausted)
    }
}

/// A CLIENT span for one attempt to deliver; DESIGN §2.6 names its attributes.
/// It carries the push service's host only: never the endpoint's path, which
/// identifies the browser.
fn deliver_span(job: &Job, origin: &str, attempt: u32) -> Span {
    let url = url::Url::parse(origin).ok();
    let host = url
        .as_ref()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    let span = tracing::info_span!(
        parent: &job.span,
        "pushq.deliver",
        otel.kind = "client",
        otel.status_code = Empty,
        server.address = host,
        server.port = Empty,
        pushq.attempt = attempt,
        http.response.status_code = Empty,
        pushq.outcome = Empty,
    );
    // Semantic conventions: required when not the scheme's default, so two
    // push services on one host can be told apart.
    if let Some(port) = url.as_ref().and_then(url::Url::port) {
        span.record("server.port", port);
    }
    span
}

pub(super) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Uniform in [0, 1), for full jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 1.0 - f64::EPSILON;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
