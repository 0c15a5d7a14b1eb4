//! What a push service's answer means for the delivery (DESIGN §4). Pure
//! functions, so the whole table is unit-tested without a network.

use std::time::{Duration, SystemTime};

use pushq_schemas::ResultReason;

use super::client::DeliveryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 201/202: the push service took it.
    Delivered,
    /// 404/410: the subscription no longer exists; delete it, never retry.
    Gone,
    /// Will not get better by retrying.
    Failed(ResultReason),
    /// Transient; `after` is the push service's own Retry-After, if any.
    Retry {
        reason: ResultReason,
        after: Option<Duration>,
    },
}

/// Classifies an HTTP answer. `retry_after` is the raw header value.
pub fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    let after = retry_after.and_then(|value| parse_retry_after(value, now));
    match status {
        201 | 202 => Verdict::Delivered,
        404 | 410 => Verdict::Gone,
        400 => Verdict::Failed(ResultReason::BadRequest),
        401 => Verdict::Failed(ResultReason::Unauthorized),
        403 => Verdict::Failed(ResultReason::Forbidden),
        413 => Verdict::Failed(ResultReason::PayloadTooLarge),
        429 => Verdict::Retry {
            reason: ResultReason::Throttled,
            after,
        },
        // A proxy or load balancer gave up waiting (408), or the connection
        // reached a server that does not serve this origin (421, HTTP/2
        // connection reuse): neither concerns the subscription, and a new
        // attempt (on a new connection) may pass.
        408 => Verdict::Retry {
            reason: ResultReason::Timeout,
            after,
        },
        421 => Verdict::Retry {
            reason: ResultReason::ConnectionError,
            after,
        },
        // WNS answers 406 "Not Acceptable" when a channel is throttled.
        406 if after.is_some() => Verdict::Retry {
            reason: ResultReason::Throttled,
            after,
        },
        500..=599 => Verdict::Retry {
            reason: ResultReason::ServerError,
            after,
        },
        _ => Verdict::Failed(ResultReason::UnexpectedStatus),
    }
}

/// What no answer means: a timeout or a broken connection may pass, a
/// refused endpoint or keys we cannot encrypt for will not. `Err(wait)` for a
/// deferral by our own rate limit, which is not an attempt at all.
pub fn classify_error(err: &DeliveryError) -> Result<Verdict, Duration> {
    Ok(match err {
        DeliveryError::Timeout => Verdict::Retry {
            reason: ResultReason::Timeout,
            after: None,
        },
        DeliveryError::Connect(_) | DeliveryError::Request(_) => Verdict::Retry {
            reason: ResultReason::ConnectionError,
            after: None,
        },
        DeliveryError::Refused(_) => Verdict::Failed(ResultReason::EndpointRefused),
        DeliveryError::Encrypt(_) | DeliveryError::Keys(_) | DeliveryError::Vapid => {
            Verdict::Failed(ResultReason::BadRequest)
        }
        DeliveryError::Deferred(wait) => return Err(*wait),
    })
}

/// Whether a failure is the subscription's own, so that it counts towards
/// `PUSHQ_MAX_CONSECUTIVE_FAILURES` (DESIGN §4). Only an answer that
/// singles out this endpoint does: an `unexpected_status` that is a success
/// or a redirect (a 200, a 301: the endpoint no longer leads to a push
/// service). Everything else is ours or passing, and would empty the table
/// if it counted: 401/403 refuse our VAPID key or subject, 400/413 the
/// notification, another 4xx (407 from a proxy, say) our side of the
/// connection, `endpoint_refused` our own policy, an encryption or signing
/// error our side, and `retries_exhausted` a push service's outage. A gone
/// subscription (404/410) is deleted at once, without counting.
pub fn is_subscriptions_own(reason: ResultReason, status: Option<u16>) -> bool {
    reason == ResultReason::UnexpectedStatus && status.is_some_and(|s| (200..400).contains(&s))
}

/// Whether a failure with `reason` is the sender's: our credentials or the
/// notification itself, which no retry and no other subscription fixes. These
/// are logged as errors and counted in `pushq_sender_faults_total`.
pub fn is_senders_fault(reason: ResultReason) -> bool {
    matches!(
        reason,
        ResultReason::Unauthorized
            | ResultReason::Forbidden
            | ResultReason::BadRequest
            | ResultReason::PayloadTooLarge
    )
}

/// `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). A date in
/// the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let date = SystemTime::from(date.with_timezone(&chrono::Utc));
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: u16) -> Verdict {
        classify_status(status, None, SystemTime::now())
    }

    #[test]
    fn every_row_of_the_delivery_rules() {
        assert_eq!(verdict(201), Verdict::Delivered);
        assert_eq!(verdict(202), Verdict::Delivered);
        assert_eq!(verdict(404), Verdict::Gone);
        assert_eq!(verdict(410), Verdict::Gone);
        assert_eq!(verdict(400), Verdict::Failed(ResultReason::BadRequest));
        assert_eq!(verdict(401), Verdict::Failed(ResultReason::Unauthorized));
        assert_eq!(verdict(403), Verdict::Failed(ResultReason::Forbidden));
        assert_eq!(verdict(413), Verdict::Failed(ResultReason::PayloadTooLarge));
        assert_eq!(
            verdict(429),
            Verdict::Retry {
                reason: ResultReason::Throttled,
                after: None
            }
        );
        assert!(matches!(
            verdict(408),
            Verdict::Retry {
                reason: ResultReason::Timeout,
                ..
            }
        ));
        assert!(matches!(
            verdict(421),
            Verdict::Retry {
                reason: ResultReason::ConnectionError,
                ..
            }
        ));
        for status in [500, 502, 503, 504] {
            assert!(matches!(
                verdict(status),
                Verdict::Retry {
                    reason: ResultReason::ServerError,
                    ..
                }
            ));
        }
        for status in [200, 204, 301, 302, 307, 406, 418] {
            assert_eq!(
                verdict(status),
                Verdict::Failed(ResultReason::UnexpectedStatus),
                "{status}"
            );
        }
    }

    #[test]
    fn only_an_endpoint_that_is_no_push_service_counts_against_its_subscription() {
        use ResultReason::*;
        let counted: Vec<ResultReason> = [
            BadRequest,
            Unauthorized,
            Forbidden,
            PayloadTooLarge,
            Throttled,
            ServerError,
            Timeout,
            ConnectionError,
            EndpointRefused,
            RetriesExhausted,
            Expired,
            UnexpectedStatus,
        ]
        .into_iter()
        .filter(|reason| is_subscriptions_own(*reason, Some(301)))
        .collect();
        assert_eq!(counted, [UnexpectedStatus]);
        for reason in [Unauthorized, Forbidden, BadRequest, PayloadTooLarge] {
            assert!(is_senders_fault(reason) && !is_subscriptions_own(reason, Some(401)));
        }
        for status in [200, 204, 301, 302, 307] {
            assert!(
                is_subscriptions_own(UnexpectedStatus, Some(status)),
                "{status}"
            );
        }
        for status in [405, 406, 407, 418, 451] {
            assert!(
                !is_subscriptions_own(UnexpectedStatus, Some(status)),
                "{status}"
            );
        }
        assert!(!is_subscriptions_own(UnexpectedStatus, None));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(0))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            classify_status(406, Some("30"), now),
            Verdict::Retry {
                reason: ResultReason::Throttled,
                after: Some(Duration::from_secs(30))
            }
        );
    }
}
