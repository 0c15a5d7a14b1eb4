//! What the benchmark measures besides time: the worker process's CPU and
//! memory (from /proc), percentiles, and the crypto floor of this machine.

use std::time::{Duration, Instant};

use p256::elliptic_curve::sec1::ToEncodedPoint;
use pushq_worker::push::ece::{self, UserAgentKeys};
use pushq_worker::push::{VapidPrivateKey, VapidSigner};
use ring::rand::SystemRandom;

/// CPU time (user + system) a process has used so far, in µs.
pub fn process_cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let parsed = crate::machine::procs::parse_stat(&stat)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat is not what Linux writes"))?;
    Ok(parsed.ticks * 1_000_000 / crate::machine::procs::ticks_per_second())
}

/// Peak resident memory of a process, in MB.
pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

/// The value below which `q` of the sorted samples fall.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn browser_keys() -> ([u8; 65], [u8; 16]) {
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let point: [u8; 65] = secret
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .try_into()
        .unwrap_or([4; 65]);
    let mut auth = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
    (point, auth)
}

/// µs per RFC 8291 encryption of `payload_len` bytes on one core, as the worker does it.
pub fn ece_us(iterations: u32, payload_len: usize) -> f64 {
    let rng = SystemRandom::new();
    let (point, auth) = browser_keys();
    let payload = vec![b'x'; payload_len];
    let started = Instant::now();
    for _ in 0..iterations {
        let keys = UserAgentKeys {
            p256dh: &point,
            auth: &auth,
        };
        let _ = std::hint::black_box(ece::encrypt(&rng, keys, &payload));
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

/// µs per VAPID signature (each origin's token is signed once and cached).
pub fn vapid_sign_us(iterations: u32) -> f64 {
    let signer = match VapidSigner::new(&VapidPrivateKey::generate(), "mailto:bench@pushq.example")
    {
        Ok(signer) => signer,
        Err(_) => return f64::NAN,
    };
    let started = Instant::now();
    for i in 0..iterations {
        // A new origin each time defeats the cache: this is the signing cost.
        let _ = std::hint::black_box(signer.authorization(&format!("https://push{i}.example")));
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

/// µs per encryption through the `web-push` crate (OpenSSL), same payload.
pub fn web_push_crate_us(iterations: u32, payload_len: usize) -> f64 {
    use base64::Engine;
    let (point, auth) = browser_keys();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let info = web_push::SubscriptionInfo::new(
        "https://fcm.googleapis.com/fcm/send/bench".to_owned(),
        b64(&point),
        b64(&auth),
    );
    let payload = vec![b'x'; payload_len.min(3052)];
    let started = Instant::now();
    for _ in 0..iterations {
        let mut builder = web_push::WebPushMessageBuilder::new(&info);
        builder.set_payload(web_push::ContentEncoding::Aes128Gcm, &payload);
        let _ = std::hint::black_box(builder.build());
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

/// CPU model and core count, for the record.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}
