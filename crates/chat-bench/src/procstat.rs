//! Readings of a process from `/proc`: resident memory (`VmRSS` in `/proc/PID/status`) and
//! CPU time (`utime + stime` in `/proc/PID/stat`).

use std::time::Instant;

/// One reading of one process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub rss_kib: Option<u64>,
    /// User + system CPU time in clock ticks.
    pub cpu_ticks: Option<u64>,
}

impl Sample {
    pub fn of(pid: u32) -> Self {
        Self {
            at: Instant::now(),
            rss_kib: rss_kib(pid),
            cpu_ticks: cpu_ticks(pid),
        }
    }

    pub fn of_self() -> Self {
        Self::of(std::process::id())
    }

    /// CPU used between two readings, as a percentage of one core.
    pub fn cpu_percent_since(&self, earlier: &Sample) -> Option<f64> {
        let ticks = self.cpu_ticks?.checked_sub(earlier.cpu_ticks?)?;
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        (secs > 0.0).then(|| ticks as f64 / clock_ticks_per_sec() as f64 / secs * 100.0)
    }
}

/// Readings of every server process of a run (one per node), taken one after the other.
#[derive(Debug, Clone)]
pub struct Servers {
    pub each: Vec<(u32, Sample)>,
}

impl Servers {
    /// Reads every PID; `None` without PIDs.
    pub fn of(pids: &[u32]) -> Option<Self> {
        (!pids.is_empty()).then(|| Self {
            each: pids.iter().map(|&pid| (pid, Sample::of(pid))).collect(),
        })
    }

    /// Resident memory of all the processes together; `None` when one could not be read.
    pub fn rss_kib(&self) -> Option<u64> {
        self.each.iter().map(|(_, s)| s.rss_kib).sum()
    }

    /// CPU used by all the processes together between two readings, as a percentage of one
    /// core; `None` when one of them could not be read.
    pub fn cpu_percent_since(&self, earlier: &Servers) -> Option<f64> {
        self.each
            .iter()
            .map(|(pid, s)| s.cpu_percent_since(earlier.sample_of(*pid)?))
            .sum()
    }

    /// The reading of process `pid`.
    pub fn sample_of(&self, pid: u32) -> Option<&Sample> {
        self.each.iter().find(|(p, _)| *p == pid).map(|(_, s)| s)
    }
}

/// A process's `VmRSS` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's user + system CPU time in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)`, read once through `getconf` (no unsafe FFI); 100 on Linux in
/// practice.
pub fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tchat-server\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vmrss(status), Some(12345));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_with_spaces_in_the_name() {
        let stat = "4242 (chat server) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16";
        assert_eq!(parse_cpu_ticks(stat), Some(333));
    }

    #[test]
    fn servers_add_up_and_need_every_reading() {
        let me = std::process::id();
        assert!(Servers::of(&[]).is_none());
        let one = Servers::of(&[me]).unwrap_or_else(|| panic!("no reading"));
        let two = Servers::of(&[me, me]).unwrap_or_else(|| panic!("no reading"));
        let (r1, r2) = (one.rss_kib().unwrap_or(0), two.rss_kib().unwrap_or(0));
        assert!(r1 > 0 && r2 >= r1, "{r1} {r2}");
        assert!(two.cpu_percent_since(&two).is_none(), "no time passed");
        // A process that does not exist: no sum rather than a partial one.
        let gone = Servers::of(&[me, u32::MAX]).unwrap_or_else(|| panic!("no reading"));
        assert!(gone.rss_kib().is_none());
    }

    #[test]
    fn reads_this_process() {
        let s = Sample::of_self();
        assert!(s.rss_kib.is_some_and(|k| k > 0));
        assert!(s.cpu_ticks.is_some());
    }
}
