//! CPU time of a server process: user + system seconds from
//! `/proc/PID/stat`, read before and after each throughput measurement and
//! reported per million delivered messages, so that "faster" cannot hide
//! "burns more".

/// Name of the CPU metric of the throughput rows.
pub const METRIC: &str = "CPU s per M msgs";

/// User + system CPU seconds `pid` has used so far (all its threads).
pub fn secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|ticks| ticks as f64 / ticks_per_sec())
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in ticks.
fn parse_stat(stat: &str) -> Option<u64> {
    // the command name (field 2) may hold spaces and parentheses: count
    // fields after its closing parenthesis
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds per million messages, from the CPU seconds before and
/// after a run and the messages delivered in it.
pub fn per_million(before: Option<f64>, after: Option<f64>, delivered: u64) -> Option<f64> {
    let (b, a) = (before?, after?);
    (delivered > 0 && a >= b).then(|| (a - b) / (delivered as f64 / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_odd_command_names() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat(line), Some(280));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_burns_cpu_when_it_spins() {
        // Spins until the kernel has counted 50 ms of CPU time for this
        // process, within a generous wall-clock bound: on a machine shared
        // with other work, 150 ms of wall time may hold much less CPU.
        let pid = std::process::id();
        let before = secs(pid).expect("own /proc stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && std::time::Instant::now() < deadline {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = secs(pid).unwrap();
        }
        assert!(
            after - before >= 0.05,
            "{before} → {after} in 30 s of spinning"
        );
        assert_eq!(per_million(Some(1.0), Some(3.0), 2_000_000), Some(1.0));
        assert_eq!(per_million(Some(1.0), Some(3.0), 0), None);
        assert_eq!(per_million(None, Some(3.0), 5), None);
    }
}
