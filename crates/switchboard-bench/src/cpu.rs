//! CPU time of a server process, read before and after each throughput
//! measurement and reported per million delivered messages, so that
//! "faster" cannot hide "burns more".
//!
//! The time is the kernel's count of the process's run time in
//! nanoseconds, all threads, those gone included: the process's CPU-time
//! clock (`clock_getcpuclockid`). `/proc/PID/stat` holds the same time in
//! clock ticks (10 ms): on a run of a few hundred milliseconds of CPU that
//! rounding alone moved a row by several per cent, so it is only the
//! fallback where the clock cannot be read.

/// Name of the CPU metric of the throughput rows.
pub const METRIC: &str = "CPU s per M msgs";

/// User + system CPU seconds `pid` has used so far (all its threads).
pub fn secs(pid: u32) -> Option<f64> {
    clock_secs(pid).or_else(|| stat_secs(pid))
}

/// `pid`'s CPU-time clock, in seconds (nanosecond resolution).
fn clock_secs(pid: u32) -> Option<f64> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid place for the clock id.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid place for the time.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return None;
    }
    Some(t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

/// utime + stime from `/proc/PID/stat`, in seconds (tick resolution).
fn stat_secs(pid: u32) -> Option<f64> {
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
    fn the_clock_agrees_with_the_ticks_of_proc_stat() {
        // Another process: a child that spins for a while.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh");
        let pid = child.id();
        let clock = clock_secs(pid).expect("the child's CPU clock");
        let ticks = stat_secs(pid).expect("the child's /proc stat");
        // Ticks round down; both count the same run time.
        let tick = 1.0 / ticks_per_sec();
        assert!(
            clock + 2.0 * tick >= ticks && ticks + 2.0 * tick >= clock,
            "clock {clock} s, ticks {ticks} s"
        );
        child.wait().expect("child");
        assert_eq!(clock_secs(u32::MAX), None, "not a valid pid");
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
