//! The process's own resource use in `/metrics`, under the names Prometheus' client libraries
//! give them (`process_resident_memory_bytes`, `process_cpu_seconds_total`, ...), so the
//! dashboards and alerts written for any exporter work unchanged: what `docker stats` showed
//! for each of the replaced services.
//!
//! Read from `/proc/self` at each scrape (Linux); elsewhere nothing is reported.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self` says of this process at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// The fields of `/proc/PID/stat` after the command name, which is in parentheses and may
/// itself hold spaces and parentheses (hence the last `)`).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().collect())
}

/// A sample from the text of `/proc/self/stat` and the machine's boot time (`btime` of
/// `/proc/stat`), clock ticks per second and page size. Field numbers are proc(5)'s.
pub fn parse_stat(
    stat: &str,
    boot_time_s: u64,
    ticks_per_s: u64,
    page_bytes: u64,
) -> Option<ProcessSample> {
    let fields = stat_fields(stat)?;
    // `fields[0]` is field 3 (state).
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    let ticks = ticks_per_s.max(1) as f64;
    Some(ProcessSample {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: boot_time_s as f64 + field(22)? as f64 / ticks,
        virtual_memory_bytes: field(23)?,
        resident_memory_bytes: field(24)?.saturating_mul(page_bytes),
        open_fds: None,
        max_fds: None,
    })
}

/// The boot time in seconds since the epoch, from `/proc/stat`'s `btime` line.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|t| t.trim().parse().ok())
}

/// This process, now; `None` where `/proc` cannot be read (not Linux).
#[cfg(target_os = "linux")]
pub fn sample() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf and getrlimit only read process-wide values into what they are given.
    let (ticks, page, max_fds) = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        let max_fds = (libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && limit.rlim_cur != libc::RLIM_INFINITY)
            .then_some(limit.rlim_cur);
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
            max_fds,
        )
    };
    let mut sample = parse_stat(
        &stat,
        boot,
        u64::try_from(ticks).ok()?,
        u64::try_from(page).ok()?,
    )?;
    sample.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64);
    sample.max_fds = max_fds;
    Some(sample)
}

#[cfg(not(target_os = "linux"))]
pub fn sample() -> Option<ProcessSample> {
    None
}

/// Adds the `process_*` families to a registry's exposition at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = sample() else {
            return Ok(());
        };
        let counter = ConstCounter::new(s.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            s.resident_memory_bytes as f64,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            s.virtual_memory_bytes as f64,
        )?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            s.start_time_seconds,
        )?;
        gauge(
            "process_threads",
            "Number of OS threads in the process",
            s.threads as f64,
        )?;
        if let Some(open) = s.open_fds {
            gauge(
                "process_open_fds",
                "Number of open file descriptors",
                open as f64,
            )?;
        }
        if let Some(max) = s.max_fds {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_whose_command_holds_spaces_and_parentheses_is_read_by_field_number() {
        // Fields 3.. of proc(5): utime 14 = 250 ticks, stime 15 = 50, num_threads 20 = 7,
        // starttime 22 = 1000 ticks, vsize 23, rss 24 = 300 pages.
        let stat = "4242 (agentrt (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    1000 123456789 300 18446744073709551615";
        let s = parse_stat(stat, 1_700_000_000, 100, 4096).expect("parsed");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(s.virtual_memory_bytes, 123_456_789);
        assert_eq!(s.resident_memory_bytes, 300 * 4096);
        assert_eq!(parse_stat("no parenthesis", 0, 100, 4096), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_sampled_from_proc() {
        let s = sample().expect("a sample on Linux");
        assert!(s.resident_memory_bytes > 0 && s.threads >= 1, "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
    }
}
