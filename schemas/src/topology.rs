//! Exchange and queue names, all derived from one prefix so that environments
//! and tests can share a broker (DESIGN §2.1.1).

/// The names of every exchange and queue for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

pub const DEFAULT_PREFIX: &str = "pushq";

impl Topology {
    /// A prefix is used inside AMQP names (at most 255 bytes, with suffixes
    /// added), so it is kept short and to characters every tool quotes safely.
    pub fn new(prefix: impl Into<String>) -> Result<Self, String> {
        let prefix = prefix.into();
        let valid = !prefix.is_empty()
            && prefix.len() <= 100
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if valid && prefix.starts_with("amq.") {
            // RabbitMQ refuses to declare such names (ACCESS_REFUSED).
            Err(format!(
                "topology prefix {prefix:?} starts with amq., which RabbitMQ keeps for its own exchanges and queues"
            ))
        } else if valid {
            Ok(Self { prefix })
        } else {
            Err(format!(
                "topology prefix {prefix:?} must be 1 to 100 characters of letters, digits, '.', '-' or '_'"
            ))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange producers publish to, routing key = event type.
    pub fn exchange(&self) -> String {
        self.prefix.clone()
    }

    /// Topic exchange results are published to, routing key = result type.
    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// Where delayed messages (retries, and hops of the delay queues) come
    /// back when their time is up: consumed beside the jobs queue, so a
    /// backlog of new jobs never lengthens a delay.
    pub fn due_queue(&self) -> String {
        format!("{}.due", self.prefix)
    }

    pub fn subscriptions_queue(&self) -> String {
        format!("{}.subscriptions", self.prefix)
    }

    pub fn feedback_queue(&self) -> String {
        format!("{}.feedback", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// One of the delay queues of [`crate::delays::DELAY_QUEUE_MS`].
    pub fn delay_queue(&self, delay_ms: u64) -> String {
        format!("{}.delay.{delay_ms}", self.prefix)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new("acme-test").expect("valid prefix");
        assert_eq!(t.exchange(), "acme-test");
        assert_eq!(t.results_exchange(), "acme-test.results");
        assert_eq!(t.jobs_queue(), "acme-test.jobs");
        assert_eq!(t.subscriptions_queue(), "acme-test.subscriptions");
        assert_eq!(t.feedback_queue(), "acme-test.feedback");
        assert_eq!(t.dead_queue(), "acme-test.dead");
        assert_eq!(t.delay_queue(4096), "acme-test.delay.4096");
        assert_eq!(t.due_queue(), "acme-test.due");
        assert_eq!(Topology::default().jobs_queue(), "pushq.jobs");
    }

    #[test]
    fn refuses_prefixes_that_break_names() {
        assert!(Topology::new("").is_err());
        assert!(Topology::new("a b").is_err());
        assert!(Topology::new("x".repeat(101)).is_err());
        let reserved = Topology::new("amq.pushq").expect_err("RabbitMQ's own names");
        assert!(reserved.contains("starts with amq."), "{reserved}");
        assert!(Topology::new("pushq.amq").is_ok());
    }
}
