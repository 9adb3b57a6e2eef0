//! What a training process uses, read from Linux's `/proc`: CPU time summed over its threads
//! (`/proc/PID/task/*/schedstat`, nanoseconds on a CPU, so no clock-tick conversion) and its
//! resident memory (`VmRSS` in `/proc/PID/status`). The worker samples its attempt's process
//! every few seconds; the job page and `/metrics` show the samples.

use std::path::Path;
use std::time::{Duration, Instant};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub at: Instant,
    /// CPU time of all its threads so far.
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// Reads process `pid` now; `None` once it has gone (or on a system without `/proc`).
pub fn read(pid: u32) -> Option<Reading> {
    let dir = Path::new("/proc").join(pid.to_string());
    let mut cpu_ns: u64 = 0;
    for task in std::fs::read_dir(dir.join("task")).ok()?.flatten() {
        // A thread that ends between the listing and the read just stops counting.
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            cpu_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())?;
    Some(Reading {
        at: Instant::now(),
        cpu: Duration::from_nanos(cpu_ns),
        rss_bytes: rss_kib * 1024,
    })
}

/// CPU use between two readings, in percent of one core (200 = two cores busy throughout).
pub fn cpu_percent(before: &Reading, after: &Reading) -> f64 {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    after.cpu.saturating_sub(before.cpu).as_secs_f64() / wall * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_reads_as_busy() {
        let me = std::process::id();
        let a = read(me).expect("this process");
        // Spin one thread for 200 ms: about 100% of a core in between.
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = read(me).expect("this process");
        let pct = cpu_percent(&a, &b);
        assert!(pct > 50.0, "{pct}% while spinning");
        assert!(b.rss_bytes > 1 << 20, "{} bytes resident", b.rss_bytes);
        assert!(read(u32::MAX).is_none(), "no such process");
    }
}
