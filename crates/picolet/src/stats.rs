//! Facts about the host process for `/metrics` and `/metrics/resource`: the virtual Pico reports
//! the CPU time and memory of the process that is the node.

use picolet_core::metrics::PlatformStats;

/// Linux reports CPU time in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const USER_HZ: f64 = 100.0;

/// Reads this process's CPU seconds (user + system) and resident memory.
pub fn process_stats() -> PlatformStats {
    PlatformStats {
        cpu_seconds: cpu_seconds().unwrap_or(0.0),
        memory_working_set_bytes: rss_bytes().unwrap_or(0),
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after it start at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state field.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
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
        assert!(s.cpu_seconds > 0.0, "{s:?}");
    }
}
