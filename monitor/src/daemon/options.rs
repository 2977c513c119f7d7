//! What `watch` and `check` are asked to do: their options, as the command line parses them
//! (clap) and the daemon reads them, in one place.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{kernel::target::MatchMode, output::metrics, probe::Attach};

#[derive(Args, Clone)]
pub struct Options {
    /// Print one JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (30s, 500ms, 5m, 1h; a bare number is seconds)
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How to probe the flush function
    #[arg(long, value_enum, default_value_t = Attach::Auto)]
    pub attach: Attach,
    /// How to recognize a system workqueue
    #[arg(long = "match", value_enum, default_value_t = MatchMode::Auto)]
    pub match_mode: MatchMode,
    /// Create this file once the probe is live
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Count but do not warn about call sites listed in FILE (`caller`, `module:caller`, globs)
    #[arg(long, value_name = "FILE")]
    pub ignore: Option<PathBuf>,
    /// Also write each warning to the kernel log (/dev/kmsg), as the kernel's WARN() would
    #[arg(long)]
    pub kmsg: bool,
    /// Serve Prometheus metrics on [ADDR:]PORT (a bare port binds 127.0.0.1)
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_metrics_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Also time each offending flush until it returns and name the work items it waited for
    /// and report a flush that never returns (adds a probe on every flush's return and on every
    /// work item's end)
    #[arg(long)]
    pub waits: bool,
    /// With --waits: report a flush still waiting after this long as STUCK (10s, 500ms, 2m)
    #[arg(
        long,
        requires = "waits",
        value_parser = parse_duration,
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub stuck_after: Duration,
    /// Also scan the loaded modules' code for functions that flush a system workqueue, and at
    /// the end list those that did not flush during the run (`wqflush scan` does it for files)
    #[arg(long)]
    pub scan: bool,
    #[command(flatten)]
    pub debuginfo: DebugInfoArgs,
}

#[derive(Args, Clone, Default)]
pub struct DebugInfoArgs {
    /// Also look for debug info (vmlinux, MODULE.ko with .debug_info) in DIR, before the system's
    /// places; a file is used only when its build-id is the running one's (repeatable)
    #[arg(long = "debuginfo", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    metrics::parse_addr(s).map_err(|e| format!("{e:#}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
    }
}
