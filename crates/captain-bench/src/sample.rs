//! CPU and memory of a process from `/proc`: CPU as utime+stime ticks, RSS from `VmRSS`, peak
//! RSS from `VmHWM`. A [`CpuWindow`] turns two readings into "percent of one core".

use std::time::Instant;

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcReading {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>` (`pid` = "self" for the bench itself); zeros if the process is gone.
pub fn read(pid: &str) -> ProcReading {
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat_ticks(&s))
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    ProcReading {
        cpu_ticks,
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
    }
}

/// utime + stime (fields 14 and 15), counted after the `)` that ends the command name.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU used by a set of processes over a window.
pub struct CpuWindow {
    pids: Vec<String>,
    start_ticks: Vec<u64>,
    started: Instant,
}

impl CpuWindow {
    pub fn start(pids: &[String]) -> Self {
        Self {
            pids: pids.to_vec(),
            start_ticks: pids.iter().map(|p| read(p).cpu_ticks).collect(),
            started: Instant::now(),
        }
    }

    /// Percent of one core used by all the processes together since `start` (200 = 2 cores).
    pub fn percent(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let used: u64 = self
            .pids
            .iter()
            .zip(&self.start_ticks)
            .map(|(p, t0)| read(p).cpu_ticks.saturating_sub(*t0))
            .sum();
        100.0 * used as f64 / TICKS_PER_SEC / secs
    }
}

/// RSS of processes in MiB: the sum of the current values and the sum of the peaks.
pub fn rss_mib(pids: &[String]) -> (f64, f64) {
    let readings: Vec<ProcReading> = pids.iter().map(|p| read(p)).collect();
    let rss = readings.iter().map(|r| r.rss_kib).sum::<u64>() as f64 / 1024.0;
    let hwm = readings.iter().map(|r| r.hwm_kib).sum::<u64>() as f64 / 1024.0;
    (rss, hwm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_spaces_and_parens_in_the_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
    }

    #[test]
    fn status_values_are_kib() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }

    #[test]
    fn the_bench_can_read_itself() {
        assert!(read("self").rss_kib > 0);
    }
}
