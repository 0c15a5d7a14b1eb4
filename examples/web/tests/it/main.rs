//! The example web app: its router's answers, and its binary's start and stop.

mod process;
mod router;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// A real P-256 point and auth secret (RFC 8291 Appendix A's browser keys).
const P256DH: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

fn unique_prefix() -> String {
    format!(
        "pushq-example-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
