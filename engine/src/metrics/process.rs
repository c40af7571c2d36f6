//! The process's own resource use for `/metrics` (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, the Prometheus client conventions), read from Linux's
//! `/proc/self/stat` and `/proc/self/status`; the parsing is pure and tested apart from the
//! files.

/// `/proc` gives CPU times in `USER_HZ` ticks, which the kernel fixes at 100 for user space on
/// the architectures we build for (x86-64, arm64), whatever its internal tick rate.
const USER_HZ: f64 = 100.0;

/// CPU time and resident memory of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
}

/// This process's usage now (`None` where `/proc` is not Linux's).
pub fn usage() -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(ProcessUsage {
        cpu_seconds: cpu_seconds(&stat)?,
        resident_bytes: resident_bytes(&status)?,
    })
}

/// User plus system CPU time from a `/proc/PID/stat` line: after the command (in parentheses,
/// which may itself hold spaces and parentheses), fields 14 and 15 in clock ticks.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    // Fields from the 3rd (state) on.
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?) as f64 / USER_HZ)
}

/// The resident set from `/proc/PID/status`'s `VmRSS:` line (in kB).
pub fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command with spaces and parentheses does not shift the fields.
    #[test]
    fn a_stat_line_gives_cpu_time_and_a_status_the_resident_bytes() {
        let stat = "4242 (sar (don) yx) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    250 50 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
        let status = "Name:\tsardonyx\nVmPeak:\t  99999 kB\nVmRSS:\t    8192 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(8192 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
    }

    /// This process holds some memory.
    #[test]
    fn this_process_has_a_usage() {
        let u = usage().unwrap();
        assert!(u.resident_bytes > 0);
        assert!(u.cpu_seconds >= 0.0);
    }
}
