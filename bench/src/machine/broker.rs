//! The broker's work for the worker, from `rabbitmqctl list_connections`
//! (no management plugin needed): octets and socket reads/writes on the
//! worker's connections.

use std::time::Duration;

/// What RabbitMQ counts on a set of connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounters {
    /// Octets RabbitMQ received from the client.
    pub recv_oct: u64,
    /// Octets RabbitMQ sent to the client.
    pub send_oct: u64,
    /// Socket reads RabbitMQ made (`inet:getstat` `recv_cnt`): TCP
    /// segments as read, not AMQP frames, several frames may share one.
    pub recv_cnt: u64,
    /// Socket writes RabbitMQ made (`send_cnt`).
    pub send_cnt: u64,
}

const COLUMNS: [&str; 5] = [
    "recv_oct",
    "send_oct",
    "recv_cnt",
    "send_cnt",
    "client_properties",
];

/// Sums the counters of the connections whose client properties contain
/// `name_part` in `rabbitmqctl list_connections --quiet --no-table-headers`
/// output with [`COLUMNS`], one tab-separated connection a line. `None`
/// when none matches or a matching line does not parse.
pub fn parse_listing(listing: &str, name_part: &str) -> Option<ConnectionCounters> {
    let mut sum = ConnectionCounters::default();
    let mut matched = 0;
    for line in listing.lines().filter(|line| line.contains(name_part)) {
        let numbers: Vec<u64> = line
            .split('\t')
            .take(4)
            .map(|field| field.trim().parse().ok())
            .collect::<Option<_>>()?;
        let [recv_oct, send_oct, recv_cnt, send_cnt] = numbers[..] else {
            return None;
        };
        sum.recv_oct += recv_oct;
        sum.send_oct += send_oct;
        sum.recv_cnt += recv_cnt;
        sum.send_cnt += send_cnt;
        matched += 1;
    }
    (matched > 0).then_some(sum)
}

/// The counters of the connections named with `name_part`, or `None` when
/// `rabbitmqctl` is missing, refused, slow or lists none.
pub async fn connection_counters(name_part: &str) -> Option<ConnectionCounters> {
    let output = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new("rabbitmqctl")
            .args(["list_connections", "--quiet", "--no-table-headers"])
            .args(COLUMNS)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_listing(&String::from_utf8_lossy(&output.stdout), name_part)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
1200\t3400\t10\t20\t[{\"connection_name\",longstr,<<\"pushq-bench-1a2b-worker-77\">>},{\"product\",longstr,<<\"lapin\">>}]
999\t999\t9\t9\t[{\"product\",longstr,<<\"lapin\">>}]
800\t600\t5\t7\t[{\"connection_name\",longstr,<<\"pushq-bench-1a2b-worker-78\">>}]
";

    #[test]
    fn the_named_connections_are_summed_and_the_others_left_out() {
        assert_eq!(
            parse_listing(LISTING, "pushq-bench-1a2b-worker-"),
            Some(ConnectionCounters {
                recv_oct: 2000,
                send_oct: 4000,
                recv_cnt: 15,
                send_cnt: 27,
            })
        );
    }

    #[test]
    fn no_matching_connection_or_a_garbled_line_gives_none() {
        assert_eq!(parse_listing(LISTING, "pushq-bench-ffff-worker-"), None);
        assert_eq!(parse_listing("", "x"), None);
        assert_eq!(
            parse_listing("n/a\t1\t2\t3\tpushq-bench-1a2b-worker-1", "worker"),
            None
        );
    }
}
