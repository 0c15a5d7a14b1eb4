//! Parsers of single settings: each returns the value or the sentence that
//! stops the start.

use std::time::Duration;

use super::ConfigError;

pub const DEFAULT_RETRY_DELAYS_MS: &str = "1000,5000,30000,120000,600000,1800000,3600000,7200000";

/// RFC 8292 asks for a `mailto:` or `https:` URL push services can reach the
/// sender at; Apple answers 403 (BadJwtToken) to any other, to one at
/// `localhost`, and to one holding a space.
pub(super) fn validate_subject(subject: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| {
        Err(ConfigError(format!(
            "PUSHQ_VAPID_SUBJECT {why} (Apple refuses it): expected a mailto: or https: URL push services can reach you at, like mailto:ops@example.com, not {subject:?}"
        )))
    };
    if subject.chars().any(char::is_whitespace) {
        return refuse("holds a space");
    }
    let Ok(url) = url::Url::parse(subject) else {
        return refuse("is not a URL");
    };
    let host = match url.scheme() {
        "mailto" => match url.path().rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => domain.to_owned(),
            _ => return refuse("names no address"),
        },
        "https" => url.host_str().unwrap_or_default().to_owned(),
        _ => return refuse("is neither a mailto: nor an https: URL"),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return refuse("names no host");
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return refuse("is at localhost");
    }
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>();
    if ip.is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified()) {
        return refuse("is at a loopback address");
    }
    Ok(())
}

pub(super) fn parse_number<T>(name: &str, value: &str, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + num_bounds::Max,
{
    match value.trim().parse::<T>() {
        Ok(number) if number >= min => Ok(number),
        _ => Err(ConfigError(format!(
            "{name} must be a whole number from {min} to {}, not {value:?}",
            T::MAX
        ))),
    }
}

pub(super) mod num_bounds {
    pub trait Max {
        const MAX: Self;
    }
    impl Max for u16 {
        const MAX: Self = u16::MAX;
    }
    impl Max for u32 {
        const MAX: Self = u32::MAX;
    }
    impl Max for u64 {
        const MAX: Self = u64::MAX;
    }
}

/// 28 days, FCM's longest TTL: push services keep a notification at most
/// about that long, so a retry later than that could never deliver.
pub const MAX_RETRY_DELAY_MS: u64 = 28 * 24 * 3600 * 1000;

fn too_long(entry: usize, part: &str) -> String {
    format!(
        "entry {entry} ({part}) is longer than 28 days ({MAX_RETRY_DELAY_MS} ms), the longest a push service keeps a notification"
    )
}

/// `None` is the variable unset. A value that is set but empty is refused:
/// it reads as "no retries", and silently getting eight would surprise more
/// than a refusal. Entries may have spaces around them; a later delay may not
/// be shorter than an earlier one, since the schedule backs off.
pub(super) fn parse_delays(value: Option<&str>) -> Result<Vec<Duration>, ConfigError> {
    let Some(value) = value else {
        return parse_delays(Some(DEFAULT_RETRY_DELAYS_MS));
    };
    let refuse = |why: String| {
        Err(ConfigError(format!(
            "PUSHQ_RETRY_DELAYS_MS {why}: expected comma-separated positive milliseconds that never decrease, like {DEFAULT_RETRY_DELAYS_MS} (unset it for that default)"
        )))
    };
    if value.trim().is_empty() {
        return refuse("is set but empty".into());
    }
    let mut delays: Vec<u64> = Vec::new();
    for (index, part) in value.split(',').map(str::trim).enumerate() {
        let entry = index + 1;
        let ms = match part.parse::<u64>() {
            Ok(ms) if ms > MAX_RETRY_DELAY_MS => return refuse(too_long(entry, part)),
            Ok(ms) if ms > 0 => ms,
            _ if part.is_empty() => return refuse(format!("has an empty entry {entry}")),
            // Past u64 too, and just as undeliverable.
            _ if part.bytes().all(|b| b.is_ascii_digit()) => return refuse(too_long(entry, part)),
            _ => return refuse(format!("entry {entry} ({part:?}) is not a positive number")),
        };
        if let Some(&before) = delays.last()
            && ms < before
        {
            return refuse(format!(
                "entry {entry} ({ms}) is smaller than entry {index} before it ({before})"
            ));
        }
        delays.push(ms);
    }
    Ok(delays.into_iter().map(Duration::from_millis).collect())
}
