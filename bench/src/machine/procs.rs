//! CPU time from /proc: every process's user + system time, grouped into
//! the servers the benchmark talks to, and the whole machine's busy time.

use std::collections::HashMap;

/// One process as /proc/<pid>/stat shows it, times in clock ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub ppid: u32,
    /// utime + stime: this process's own threads.
    pub ticks: u64,
    /// cutime + cstime: the children it has waited for (a postmaster's
    /// exited backends end up here).
    pub child_ticks: u64,
}

/// Parses one /proc/<pid>/stat line. The command name is in parentheses and
/// may itself hold spaces and parentheses, so the fields are counted from
/// the last ')'.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let (head, rest) = line.rsplit_once(')')?;
    let (pid, comm) = head.split_once(" (")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        pid: pid.trim().parse().ok()?,
        comm: comm.to_owned(),
        ppid: u32::try_from(field(1)?).ok()?,
        ticks: field(11)? + field(12)?,
        child_ticks: field(13)? + field(14)?,
    })
}

/// The machine's busy time (every CPU, everything but idle and iowait) from
/// the first line of /proc/stat, in ticks.
pub fn parse_machine_busy(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| values.get(i).copied().unwrap_or(0))
        .sum();
    Some(busy)
}

/// A process of interest, with its command line for telling servers apart.
#[derive(Debug, Clone)]
pub struct Proc {
    pub stat: ProcStat,
    pub cmdline: String,
}

/// Every process whose command name is one of `comms`, with its command line.
pub fn processes(comms: &[&str]) -> HashMap<u32, Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
            if !comms.contains(&stat.comm.as_str()) {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default();
            Some((pid, Proc { stat, cmdline }))
        })
        .collect()
}

/// CPU ticks of a group of processes: each one's own time, plus, for those
/// whose parent is not in the group (a postmaster, RabbitMQ's VM), the time
/// of the children they have reaped, so that a backend which exited during
/// the scenario is still counted.
pub fn group_ticks<'a>(group: impl Iterator<Item = &'a ProcStat> + Clone) -> u64 {
    let pids: std::collections::HashSet<u32> = group.clone().map(|p| p.pid).collect();
    group
        .map(|p| {
            p.ticks
                + if pids.contains(&p.ppid) {
                    0
                } else {
                    p.child_ticks
                }
        })
        .sum()
}

/// Ticks per second of the times in /proc (USER_HZ).
pub fn ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_times_and_parent() {
        let line = "2221 (postgres) S 1 2221 2221 0 -1 4194304 80364 5331148 0 222 17 141 3728 2297 20 0 1 0 2336 222543872 7635";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                pid: 2221,
                comm: "postgres".into(),
                ppid: 1,
                ticks: 17 + 141,
                child_ticks: 3728 + 2297,
            })
        );
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "42 (a) b (c)) R 7 42 42 0 -1 0 0 0 0 0 5 6 7 8 20 0 1 0 1 1 1";
        let stat = parse_stat(line).expect("the line parses");
        assert_eq!((stat.pid, stat.comm.as_str()), (42, "a) b (c)"));
        assert_eq!((stat.ppid, stat.ticks, stat.child_ticks), (7, 11, 15));
    }

    #[test]
    fn a_truncated_line_is_refused() {
        assert_eq!(parse_stat("42 (x) R 7 42"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 2 30 5000 40 5 6 7 0 0\ncpu0 50 1 15 2500 20 2 3 3 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(100 + 2 + 30 + 5 + 6 + 7));
        assert_eq!(parse_machine_busy("intr 1 2 3"), None);
    }

    #[test]
    fn a_group_counts_reaped_children_of_its_roots_only() {
        let proc = |pid, ppid, ticks, child_ticks| ProcStat {
            pid,
            comm: "postgres".into(),
            ppid,
            ticks,
            child_ticks,
        };
        // The postmaster (parent 1) has reaped 1000 ticks of backends. A
        // member's own reaped children reach the root's count when that
        // member exits (cutime is cumulative), so they are not added now.
        let group = [
            proc(10, 1, 5, 1000),
            proc(11, 10, 20, 3),
            proc(12, 10, 30, 0),
        ];
        assert_eq!(group_ticks(group.iter()), 5 + 1000 + 20 + 30);
    }
}
