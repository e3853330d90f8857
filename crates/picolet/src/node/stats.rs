//! Facts about the host process for `/metrics` and `/metrics/resource`: the virtual Pico reports
//! the CPU time and memory of the process that is the node.

use picolet_core::metrics::PlatformStats;

/// Reads this process's CPU seconds (user + system) and resident memory.
pub fn process_stats() -> PlatformStats {
    PlatformStats {
        cpu_time_us: cpu_time_us().unwrap_or(0),
        memory_working_set_bytes: rss_bytes().unwrap_or(0),
        ..Default::default()
    }
}

/// Process CPU time from `CLOCK_PROCESS_CPUTIME_ID`: nanosecond resolution, where
/// `/proc/self/stat` counts 10 ms ticks (too coarse for an agent that is idle most of the time).
fn cpu_time_us() -> Option<u64> {
    let t = cpu_time::ProcessTime::try_now().ok()?.as_duration();
    u64::try_from(t.as_micros()).ok()
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_real_process_figures() {
        // Burn a little CPU so the counter cannot honestly be zero.
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = super::process_stats();
        assert!(s.memory_working_set_bytes > 1 << 20, "{s:?}");
        assert!(s.cpu_time_us > 0, "{s:?}");
    }
}
