//! The `--metrics ADDR:PORT` metrics: the per-call-site flush counts, the number of call sites,
//! the events lost and how wqflush is attached, in Prometheus's text format (http.rs serves
//! them).
//!
//! The daemon owns the counts; it publishes them as a [`Snapshot`] behind a mutex, and every
//! scrape renders that snapshot into a fresh registry. Counters are therefore the absolute totals
//! since wqflush started, which is what Prometheus expects of a counter.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow};
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info as InfoMetric;
use prometheus_client::registry::Registry;

/// The only path served.
pub const PATH: &str = "/metrics";

/// One call site's flushes of one system workqueue.
#[derive(Clone, Debug, Default)]
pub struct SiteMetric {
    pub wq: String,
    pub caller: String,
    /// "" when built in.
    pub module: String,
    pub count: u64,
    /// `--waits`: the kernel's wait figures for the site, once a flush from it returned.
    pub waits: Option<monitor_ebpf::WaitStats>,
    /// `--waits`: its flushes reported stuck (None without --waits).
    pub stuck: Option<u64>,
}

/// What a scrape reports; the daemon replaces or updates it as events arrive.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sites: Vec<SiteMetric>,
    pub lost: u64,
    /// Flushes the kernel did not run the probe for; None where it keeps no such count.
    pub missed: Option<u64>,
    /// `--scan`: the loaded modules' functions that flush a system queue (None without it).
    pub static_sites: Option<Vec<StaticSiteMetric>>,
}

/// A function in a loaded module that flushes a system workqueue (`--scan`).
#[derive(Clone, Debug, Default)]
pub struct StaticSiteMetric {
    pub wq: String,
    pub caller: String,
    pub module: String,
}

/// Facts fixed for the life of the process, exported as `wqflush_info`.
#[derive(Clone, Debug)]
pub struct Info {
    /// `kprobe-multi`, `fentry` or `kprobe`.
    pub attach: String,
    /// `uname -r`.
    pub kernel: String,
    /// Where the system queues come from: `kallsyms`, `kernel image` or `name`.
    pub matched_by: String,
    /// `address` or `name` (kept for dashboards written before `matched_by`).
    pub kallsyms_mode: String,
}

pub type Shared = Arc<Mutex<Snapshot>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    wq: String,
    caller: String,
    module: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    attach: String,
    kernel: String,
    // Before kallsyms_mode: `kallsyms_mode="address"} 1` stays a suffix of the line.
    matched_by: String,
    kallsyms_mode: String,
}

/// "9101" -> 127.0.0.1:9101 (loopback unless an address is given: kernel call sites are nobody
/// else's business by default); "0.0.0.0:9101", "[::1]:9101" as given.
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    let addr = match s.parse::<u16>() {
        Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        Err(_) => s.parse::<SocketAddr>().map_err(|_| {
            anyhow!(
                "invalid metrics address {s:?}: expected PORT, IPV4:PORT or [IPV6]:PORT \
                 (e.g. 9101, 0.0.0.0:9101, [::1]:9101){}",
                addr_hint(s)
            )
        })?,
    };
    if addr.port() == 0 {
        // The kernel would pick a random port, which Prometheus could not be told about.
        return Err(anyhow!(
            "invalid metrics address {s:?}: port 0 is not a usable port; give a fixed one such as 9101"
        ));
    }
    Ok(addr)
}

/// Why a metrics address did not parse, for the common mistakes.
fn addr_hint(s: &str) -> &'static str {
    const BRACKETS: &str = "; write an IPv6 address in brackets before the port, e.g. [::1]:9101";
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "; the port is missing",
        // `::1:9101` is itself an IPv6 address: without brackets the port cannot be told apart.
        Ok(IpAddr::V6(_)) => BRACKETS,
        Err(_) if s.matches(':').count() > 1 && !s.starts_with('[') => BRACKETS,
        Err(_)
            if s.rsplit_once(':')
                .is_some_and(|(host, _)| host.contains(char::is_alphabetic)) =>
        {
            "; host names are not resolved, give an IP address (127.0.0.1 for localhost)"
        }
        Err(_) => "",
    }
}

/// The exposition text (Prometheus text format 0.0.4) for one scrape.
pub fn render(info: &Info, snap: &Snapshot) -> Result<String> {
    let mut registry = Registry::default();
    // The registry adds the `_total` suffix of counters, `_info` of infos, and a final period.
    registry.register(
        "wqflush_flushes",
        "Flushes of a kernel-global (system_*) workqueue, by workqueue and call site (caller function and module, empty for built-in code)",
        flushes(snap),
    );
    registry.register(
        "wqflush_call_sites",
        "Distinct call sites seen flushing a system workqueue",
        ConstGauge::new(snap.sites.len()),
    );
    registry.register(
        "wqflush_events_lost",
        "First sightings of call sites the kernel could not deliver because the ring buffer was full; their flushes are still counted",
        ConstCounter::new(snap.lost),
    );
    if let Some(missed) = snap.missed {
        registry.register(
            "wqflush_probe_missed",
            "Flushes the kernel did not run the probe for, by its own counters (recursion_misses, kprobe missed); absent where this kernel keeps no such count",
            ConstCounter::new(missed),
        );
    }
    if let Some(statics) = &snap.static_sites {
        registry.register(
            "wqflush_static_sites",
            "Functions in the loaded modules whose code flushes a system workqueue (wqflush --scan), by workqueue, function and module, whether or not they have run",
            static_sites(statics),
        );
    }
    let info_labels = InfoLabels {
        attach: info.attach.clone(),
        kernel: info.kernel.clone(),
        matched_by: info.matched_by.clone(),
        kallsyms_mode: info.kallsyms_mode.clone(),
    };
    registry.register(
        "wqflush",
        "How wqflush watches: probe type (kprobe-multi, fentry or kprobe), kernel release, where the system workqueues come from (kallsyms, kernel image or name) and whether they are recognized by address or by name",
        InfoMetric::new(info_labels),
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).context("cannot encode the metrics")?;
    wait_histogram(&mut text, snap);
    stuck_counter(&mut text, snap);
    Ok(text)
}

/// `--waits`: `wqflush_flush_wait_seconds`, from the kernel's per-site buckets (the client
/// library builds histograms from observations only, so the text is written here).
fn wait_histogram(text: &mut String, snap: &Snapshot) {
    use std::fmt::Write as _;
    let series = by_labels(
        snap,
        |site| site.waits,
        |s, w| {
            s.waits += w.waits;
            s.total_ns += w.total_ns;
            for (b, n) in s.buckets.iter_mut().zip(w.buckets) {
                *b += n;
            }
        },
    );
    if series.is_empty() {
        return;
    }
    text.push_str(
        "# HELP wqflush_flush_wait_seconds How long offending flushes waited until they returned (--waits), by workqueue and call site.\n\
         # TYPE wqflush_flush_wait_seconds histogram\n",
    );
    for (l, w) in series {
        let labels = format!(
            "wq=\"{}\",caller=\"{}\",module=\"{}\"",
            escape(&l.wq),
            escape(&l.caller),
            escape(&l.module)
        );
        let mut cumulative = 0;
        for (i, n) in w.buckets.iter().enumerate() {
            cumulative += n;
            let le = match monitor_ebpf::WAIT_BOUNDS_NS.get(i) {
                Some(&ns) => format!("{}", ns as f64 / 1e9),
                None => "+Inf".into(),
            };
            let _ = writeln!(
                text,
                "wqflush_flush_wait_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            text,
            "wqflush_flush_wait_seconds_sum{{{labels}}} {}",
            w.total_ns as f64 / 1e9
        );
        let _ = writeln!(
            text,
            "wqflush_flush_wait_seconds_count{{{labels}}} {}",
            w.waits
        );
    }
}

/// `--waits`: `wqflush_stuck_flushes_total`, per site (sites of one label set summed). Written
/// after the registry's text, like the histogram.
fn stuck_counter(text: &mut String, snap: &Snapshot) {
    use std::fmt::Write as _;
    let series = by_labels(snap, |site| site.stuck, |m, n| *m += n);
    if series.is_empty() {
        return;
    }
    text.push_str(
        "# HELP wqflush_stuck_flushes Offending flushes reported stuck (still waiting after --stuck-after; --waits), by workqueue and call site.\n\
         # TYPE wqflush_stuck_flushes counter\n",
    );
    for (l, n) in series {
        let _ = writeln!(
            text,
            "wqflush_stuck_flushes_total{{wq=\"{}\",caller=\"{}\",module=\"{}\"}} {n}",
            escape(&l.wq),
            escape(&l.caller),
            escape(&l.module)
        );
    }
}

impl SiteMetric {
    fn labels(&self) -> SiteLabels {
        SiteLabels {
            wq: self.wq.clone(),
            caller: self.caller.clone(),
            module: self.module.clone(),
        }
    }
}

/// One series per label set, in first-seen order: `value` of each site that has one, sites that
/// differ only in what the labels leave out (the offset within the caller) combined by `add`.
fn by_labels<T>(
    snap: &Snapshot,
    value: impl Fn(&SiteMetric) -> Option<T>,
    add: impl Fn(&mut T, T),
) -> Vec<(SiteLabels, T)> {
    let mut series: Vec<(SiteLabels, T)> = Vec::new();
    for site in &snap.sites {
        let Some(v) = value(site) else { continue };
        let labels = site.labels();
        match series.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, sum)) => add(sum, v),
            None => series.push((labels, v)),
        }
    }
    series
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One counter per label set. Sites that differ only in what the labels leave out (the offset
/// within the caller, the stack) become one series, so their counts add up.
fn static_sites(statics: &[StaticSiteMetric]) -> Family<SiteLabels, Gauge> {
    let family = Family::<SiteLabels, Gauge>::default();
    for s in statics {
        let labels = SiteLabels {
            wq: s.wq.clone(),
            caller: s.caller.clone(),
            module: s.module.clone(),
        };
        family.get_or_create(&labels).set(1);
    }
    family
}

fn flushes(snap: &Snapshot) -> Family<SiteLabels, Counter> {
    let family = Family::<SiteLabels, Counter>::default();
    for site in &snap.sites {
        family.get_or_create(&site.labels()).inc_by(site.count);
    }
    family
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn info() -> Info {
        Info {
            attach: "fentry".into(),
            kernel: "6.1.0-56-amd64".into(),
            matched_by: "kallsyms".into(),
            kallsyms_mode: "address".into(),
        }
    }

    fn site(wq: &str, caller: &str, module: &str, count: u64) -> SiteMetric {
        SiteMetric {
            wq: wq.into(),
            caller: caller.into(),
            module: module.into(),
            count,
            waits: None,
            stuck: None,
        }
    }

    pub(crate) fn sample() -> Snapshot {
        Snapshot {
            sites: vec![
                site(
                    "system_unbound_wq",
                    "wqflush_test_flush_pointer",
                    "wqflush_test",
                    4,
                ),
                site(
                    "system_wq",
                    "wqflush_test_flush_scheduled",
                    "wqflush_test",
                    3,
                ),
                site(
                    "system_wq",
                    "wqflush_test_flush_scheduled",
                    "wqflush_test",
                    2,
                ),
                site("system_long_wq", "rfkill_fop_release", "", 1),
            ],
            lost: 7,
            missed: Some(3),
            static_sites: None,
        }
    }

    #[test]
    fn parse_addr_accepts_port_and_socket_addresses() {
        for (input, want) in [
            ("9101", "127.0.0.1:9101"),
            (" 9101 ", "127.0.0.1:9101"),
            ("0.0.0.0:9101", "0.0.0.0:9101"),
            ("192.0.2.1:80", "192.0.2.1:80"),
            ("[::1]:9101", "[::1]:9101"),
            ("[::]:9101", "[::]:9101"),
        ] {
            let got = parse_addr(input).unwrap_or_else(|e| panic!("{input:?}: {e:#}"));
            assert_eq!(got.to_string(), want, "{input:?}");
        }
    }

    #[test]
    fn parse_addr_rejects_with_a_reason() {
        for (input, reason) in [
            ("", "expected PORT"),
            ("metrics", "expected PORT"),
            ("70000", "expected PORT"),
            ("127.0.0.1", "port is missing"),
            ("::1", "brackets"),
            ("fe80::1%eth0:9101", "brackets"),
            ("::1:9101", "brackets"),
            ("localhost:9101", "host names are not resolved"),
            ("0", "port 0"),
            ("127.0.0.1:0", "port 0"),
        ] {
            let err = format!("{:#}", parse_addr(input).expect_err(input));
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
    }

    #[test]
    fn render_sums_sites_and_exports_every_metric() {
        let text = render(&info(), &sample()).expect("render");
        for line in [
            "# HELP wqflush_flushes_total Flushes of a kernel-global (system_*) workqueue, by workqueue and call site (caller function and module, empty for built-in code).",
            "# TYPE wqflush_flushes_total counter",
            r#"wqflush_flushes_total{wq="system_unbound_wq",caller="wqflush_test_flush_pointer",module="wqflush_test"} 4"#,
            r#"wqflush_flushes_total{wq="system_wq",caller="wqflush_test_flush_scheduled",module="wqflush_test"} 5"#,
            r#"wqflush_flushes_total{wq="system_long_wq",caller="rfkill_fop_release",module=""} 1"#,
            "# TYPE wqflush_call_sites gauge",
            "wqflush_call_sites 4",
            "# TYPE wqflush_events_lost_total counter",
            "wqflush_events_lost_total 7",
            "# TYPE wqflush_probe_missed_total counter",
            "wqflush_probe_missed_total 3",
            "# TYPE wqflush_info gauge",
            r#"wqflush_info{attach="fentry",kernel="6.1.0-56-amd64",matched_by="kallsyms",kallsyms_mode="address"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            !text.contains("# EOF"),
            "OpenMetrics marker in Prometheus text:\n{text}"
        );
    }

    #[test]
    fn waits_render_a_cumulative_histogram() {
        let mut s = site("system_wq", "slow_flush", "foo", 2);
        let mut w = monitor_ebpf::WaitStats {
            waits: 2,
            total_ns: 700_000_000,
            max_ns: 500_000_000,
            ..Default::default()
        };
        w.buckets[5] = 1; // <= 100 ms
        w.buckets[6] = 1; // <= 1 s
        s.waits = Some(w);
        let snap = Snapshot {
            sites: vec![s],
            lost: 0,
            missed: None,
            static_sites: None,
        };
        let text = render(&info(), &snap).expect("render");
        let labels = r#"wq="system_wq",caller="slow_flush",module="foo""#;
        for line in [
            "# TYPE wqflush_flush_wait_seconds histogram".to_owned(),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="0.01"}} 0"#),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="0.1"}} 1"#),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="1"}} 2"#),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="+Inf"}} 2"#),
            format!("wqflush_flush_wait_seconds_sum{{{labels}}} 0.7"),
            format!("wqflush_flush_wait_seconds_count{{{labels}}} 2"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let text = render(&info(), &sample()).expect("render");
        assert!(!text.contains("wait_seconds"), "{text}");
    }

    #[test]
    fn stuck_flushes_are_counted_per_label_set_with_waits_only() {
        // Two sites of one caller (two call offsets) sum into one series; a site with none
        // stuck still has its series at 0 once --waits is on.
        let stuck = |n| {
            let mut s = site("system_long_wq", "flush_self", "foo", 1);
            s.stuck = Some(n);
            s
        };
        let mut other = site("system_wq", "quiet", "", 3);
        other.stuck = Some(0);
        let snap = Snapshot {
            sites: vec![stuck(1), stuck(2), other],
            lost: 0,
            missed: None,
            static_sites: None,
        };
        let text = render(&info(), &snap).expect("render");
        for line in [
            "# TYPE wqflush_stuck_flushes counter",
            r#"wqflush_stuck_flushes_total{wq="system_long_wq",caller="flush_self",module="foo"} 3"#,
            r#"wqflush_stuck_flushes_total{wq="system_wq",caller="quiet",module=""} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let text = render(&info(), &sample()).expect("render");
        assert!(!text.contains("stuck"), "{text}");
    }

    #[test]
    fn static_sites_are_a_gauge_per_site_with_scan_only() {
        let text = render(&info(), &sample()).expect("render");
        assert!(!text.contains("wqflush_static_sites"), "{text}");
        let mut snap = sample();
        snap.static_sites = Some(vec![StaticSiteMetric {
            wq: "system_wq".into(),
            caller: "foo_exit".into(),
            module: "foo".into(),
        }]);
        let text = render(&info(), &snap).expect("render");
        for line in [
            "# TYPE wqflush_static_sites gauge",
            r#"wqflush_static_sites{wq="system_wq",caller="foo_exit",module="foo"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn render_escapes_label_values_and_handles_no_sites() {
        let snap = Snapshot {
            sites: vec![site("system_wq", "odd\"name\\", "", 1)],
            lost: 0,
            missed: None,
            static_sites: None,
        };
        let text = render(&info(), &snap).expect("render");
        assert!(text.contains(r#"caller="odd\"name\\""#), "{text}");
        let text = render(&info(), &Snapshot::default()).expect("render");
        assert!(text.lines().any(|l| l == "wqflush_call_sites 0"), "{text}");
        assert!(
            text.lines().any(|l| l == "wqflush_events_lost_total 0"),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("wqflush_flushes_total")),
            "{text}"
        );
        assert!(
            !text.contains("wqflush_probe_missed"),
            "no count kept, no metric: {text}"
        );
    }
}
