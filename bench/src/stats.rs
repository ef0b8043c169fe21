//! Latency statistics and server resource readings.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
}

impl Latency {
    /// Summarizes samples (nearest-rank percentiles).
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1000.0
        };
        Self { p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// CPU time and memory of a process, from `/proc` (Linux).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcessUsage {
    /// User plus system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Resident set size now, in MiB.
    pub rss_mib: f64,
    /// Peak resident set size, in MiB.
    pub peak_rss_mib: f64,
}

impl ProcessUsage {
    /// The summed usage of processes `pids` (peaks summed too: an upper bound of the peak of the
    /// sum); `None` when there are none or one cannot be read.
    pub fn read_all(pids: &[u32]) -> Option<Self> {
        let mut total = Self { cpu_seconds: 0.0, rss_mib: 0.0, peak_rss_mib: 0.0 };
        for &pid in pids {
            let one = Self::read(pid)?;
            total.cpu_seconds += one.cpu_seconds;
            total.rss_mib += one.rss_mib;
            total.peak_rss_mib += one.peak_rss_mib;
        }
        (!pids.is_empty()).then_some(total)
    }

    /// Reads the usage of process `pid`; `None` where `/proc` is unavailable.
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        };
        // Linux reports CPU time in clock ticks of 1/100 s on every common configuration.
        Some(Self {
            cpu_seconds: ticks / 100.0,
            rss_mib: kib("VmRSS:")? / 1024.0,
            peak_rss_mib: kib("VmHWM:")? / 1024.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Latency::of(&mut []).p99_ms, 0.0);
    }

    #[test]
    fn reads_its_own_process() {
        let usage = ProcessUsage::read(std::process::id()).expect("/proc on Linux");
        assert!(usage.rss_mib > 0.0 && usage.peak_rss_mib >= usage.rss_mib * 0.5);
    }
}
