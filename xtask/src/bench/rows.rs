//! The bench's table, row by row, and the goals checked against it.

use std::{fmt::Write as _, time::Duration};

use super::{
    CONFIGS, FLOORS, METHODS, Options, STORM, WAITS_CONFIGS,
    results::Results,
    table::{Stat, Table, ratio_cells, stat_cells},
    waits,
};

/// USER_HZ: the unit of utime/stime in /proc/PID/stat, 100 on x86 and on arm64 alike (whatever
/// the kernel's own HZ: Debian's arm64 kernels run at 250).
const USER_HZ: f64 = 100.0;

/// The whole report: heading, tables, context and goals (with `--waits-only`, those of the
/// `--waits` phase alone).
pub fn table(r: &Results, opts: &Options, release: &str, took: Option<Duration>) -> String {
    let configs = match opts.waits_only {
        true => WAITS_CONFIGS.join(" "),
        false => format!("{}; {}", CONFIGS.join(" "), WAITS_CONFIGS.join(" ")),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nwqflush bench: Debian {release}{} under QEMU/TCG (-smp 2), {} interleaved rounds \
         ({configs}); median [min-max]{}",
        // Debian's releases end in their architecture; a replay may not know the release.
        match release.ends_with(opts.arch.debian()) {
            true => String::new(),
            false => format!(" ({})", opts.arch.debian()),
        },
        opts.rounds,
        took.map_or(String::new(), |t| format!("; took {} s", t.as_secs()))
    );
    if !opts.waits_only {
        out.push_str(&main_table(r, opts));
    }
    out.push_str(&waits::table(r, opts));
    out.push_str("\ngoals:\n");
    if !opts.waits_only {
        out.push_str(&goals(r, opts));
    }
    out.push_str(&waits::goals(r, opts));
    out
}

/// The methods against no probe and bpftrace, and what reading kallsyms costs here.
fn main_table(r: &Results, opts: &Options) -> String {
    let mut t = Table::default();
    t.head(
        "",
        &[
            "no probe",
            "wqflush kprobe-multi",
            "wqflush fentry",
            "wqflush kprobe",
            "bpftrace",
        ],
    );
    own_queue(&mut t, r, opts);
    offending(&mut t, r, opts);
    start_and_memory(&mut t, r, opts);
    storm(&mut t, r);
    let mut out = String::from("\n");
    out.push_str(&t.render());
    if let (Some(k), Some(d)) = (r.once("kallsyms_ns"), r.once("doctor_ns")) {
        let _ = writeln!(
            out,
            "\nIn this guest, reading /proc/kallsyms once took {:.0} ms and `wqflush doctor` \
             (kallsyms, BTF, no probe loaded) {:.0} ms.",
            k / 1e6,
            d / 1e6
        );
    }
    out
}

/// Per config: the median [min-max] of `metric / scale`.
fn stat(r: &Results, metric: &str, scale: f64, digits: usize) -> Vec<String> {
    stat_cells(r, &CONFIGS, metric, |x| x / scale, digits)
}

/// Per config: its ratio to config `b`, round by round.
fn ratio(r: &Results, metric: &str, b: &str) -> Vec<String> {
    ratio_cells(r, &CONFIGS, metric, b)
}

/// A row where the no-probe column has nothing to say.
fn monitors_only(mut cells: Vec<String>) -> Vec<String> {
    cells[0] = "-".into();
    cells
}

fn own_queue(t: &mut Table, r: &Results, opts: &Options) {
    let n = opts.iterations as f64;
    t.row(
        &format!("own queue: ns per flush_workqueue(own_wq) ({n} per run)"),
        stat(r, "bench_ns", n, 0),
    );
    t.row("  ratio to no probe", ratio(r, "bench_ns", "none"));
    t.row("  ratio to bpftrace", ratio(r, "bench_ns", "bpftrace"));
    t.row(
        "  an empty program on the same hook (bpftrace `{}`)",
        floor_cells(|_, floor| {
            let v: Vec<f64> = r.nums("bench_ns", floor).values().map(|x| x / n).collect();
            Stat::of(&v).show(0)
        }),
    );
    t.row(
        "    its ratio to no probe",
        floor_cells(|_, floor| Stat::of(&r.ratios("bench_ns", floor, "none")).show(3)),
    );
    t.row(
        "    wqflush's ratio to it",
        floor_cells(|c, floor| Stat::of(&r.ratios("bench_ns", c, floor)).show(3)),
    );
}

/// One cell per column, filled for the methods that have an empty probe of the same kind.
fn floor_cells(cell: impl Fn(&str, &str) -> String) -> Vec<String> {
    CONFIGS
        .iter()
        .map(
            |c| match FLOORS.iter().find(|f| f.strip_prefix("empty-") == Some(c)) {
                Some(floor) => cell(c, floor),
                None => "-".to_owned(),
            },
        )
        .collect()
}

fn offending(t: &mut Table, r: &Results, opts: &Options) {
    t.row(
        &format!("system_wq: wall s for {} flushes from 2 CPUs", opts.flushes),
        stat(r, "flood_ns", 1e9, 2),
    );
    t.row("  ratio to no probe", ratio(r, "flood_ns", "none"));
    t.row("  ratio to bpftrace", ratio(r, "flood_ns", "bpftrace"));
    t.row("  counted / module's count", flood_counts(r));
    t.row("  lost / uncounted / missed", flood_losses(r));
    t.row(
        "  the probe program's ns per run (kernel's bpf_stats, storm)",
        monitors_only(stat(r, "storm_prog_ns", 1.0, 0)),
    );
    t.row(
        "    ratio to bpftrace's",
        monitors_only(ratio(r, "storm_prog_ns", "bpftrace")),
    );
    t.row(
        "  monitor's user+sys CPU s during the flood",
        monitors_only(stat(r, "flood_cpu_ticks", USER_HZ, 2)),
    );
}

/// Against the module's own count of the run, per round: wqflush's summary count at the
/// pointer call site, or bpftrace's stacks through it.
fn flood_counts(r: &Results) -> Vec<String> {
    let func = "wqflush_test_flush_pointer";
    CONFIGS
        .iter()
        .map(|c| {
            let module = r.nums("flood_module", c);
            let first_module = module.values().next().copied().unwrap_or(0.0);
            let counted = r.counted(c, "flood", func);
            match *c {
                "none" => format!("- / {first_module}"),
                _ if counted.is_empty() => "?".into(),
                _ if r.exact(c, "flood", func) => {
                    let first = counted.values().next().map_or(0, |x| x.0);
                    format!("{first} / {first_module} (all equal)")
                }
                _ => {
                    let all: Vec<String> = counted
                        .iter()
                        .map(|(n, x)| format!("{}/{}", x.0, module.get(n).unwrap_or(&0.0)))
                        .collect();
                    format!("DIFFER {}", all.join(" "))
                }
            }
        })
        .collect()
}

fn flood_losses(r: &Results) -> Vec<String> {
    CONFIGS
        .iter()
        .map(|c| match r.summaries("flood", c) {
            _ if *c == "none" => "-".into(),
            _ if *c == "bpftrace" => "n/a (map)".into(),
            Ok(s) if !s.is_empty() => {
                let lost: u64 = s.values().map(|s| s.lost).sum();
                let uncounted: u64 = s.values().map(|s| s.uncounted).sum();
                // null where the kernel keeps no count (kprobe before 6.7).
                let missed: Option<u64> = s.values().map(|s| s.missed).sum();
                let missed = missed.map_or("null".into(), |n| n.to_string());
                format!("{lost} / {uncounted} / {missed} (sum)")
            }
            _ => "?".into(),
        })
        .collect()
}

fn start_and_memory(t: &mut Table, r: &Results, opts: &Options) {
    t.row(
        "time-to-live: ms from exec to live",
        monitors_only(stat(r, "attach_ns", 1e6, 0)),
    );
    t.row(
        "  ratio to bpftrace's attach",
        monitors_only(ratio(r, "attach_ns", "bpftrace")),
    );
    t.row(
        "`check -- true`: ms end to end",
        monitors_only(stat(r, "check_ns", 1e6, 0)),
    );
    t.row(
        "RSS MB after attach",
        monitors_only(stat(r, "rss_attach_kb", 1024.0, 1)),
    );
    t.row(
        &format!("RSS MB after {} distinct call sites", opts.sites),
        monitors_only(stat(r, "rss_sites_kb", 1024.0, 1)),
    );
    t.row(
        "  sites in the summary (first sightings streamed live)",
        sites_reported(r),
    );
    t.row(
        &format!("RSS MB after {} call sites, one every ~1 ms", opts.sites),
        monitors_only(stat(r, "rss_paced_kb", 1024.0, 1)),
    );
    t.row(
        "  first sightings streamed live / lost",
        paced_streamed(r, "paced"),
    );
    t.row(
        "  the same while a 300 MB debug file loads: live / lost",
        paced_streamed(r, "stalled"),
    );
}

fn sites_reported(r: &Results) -> Vec<String> {
    let median = |v: Vec<f64>| Stat::of(&v).show(0);
    CONFIGS
        .iter()
        .map(|c| match *c {
            "none" => "-".into(),
            "bpftrace" => {
                let stacks = r.counted(c, "sites", "wqflush_test_flush_sites");
                format!(
                    "{} (at exit)",
                    median(stacks.values().map(|x| x.1 as f64).collect())
                )
            }
            _ => format!(
                "{} ({} live)",
                median(r.nums("sites_summary_sites", c).into_values().collect()),
                median(r.nums("sites_records", c).into_values().collect())
            ),
        })
        .collect()
}

/// `phase`: `paced`, or `stalled` (the first source-line lookup waits for a debug file).
fn paced_streamed(r: &Results, phase: &str) -> Vec<String> {
    CONFIGS
        .iter()
        .map(|c| {
            let live: Vec<f64> = r
                .nums(&format!("{phase}_records"), c)
                .into_values()
                .collect();
            let lost: Vec<f64> = r.nums(&format!("{phase}_lost"), c).into_values().collect();
            if live.is_empty() {
                return "-".into();
            }
            format!("{} / {}", Stat::of(&live).show(0), Stat::of(&lost).show(0))
        })
        .collect()
}

fn storm(t: &mut Table, r: &Results) {
    let cells = |cell: &dyn Fn(&str) -> Option<String>| -> Vec<String> {
        CONFIGS
            .iter()
            .map(|c| cell(c).unwrap_or_else(|| "-".into()))
            .collect()
    };
    t.row(
        &format!("storm: {STORM} flushes from 4 kthreads on CPU 0: counted / fired"),
        cells(&|c| {
            let fired = r.nums("storm_module", c);
            let counted = r.counted(c, "storm", "wqflush_test_flush_storm");
            let per_round: Vec<String> = fired
                .iter()
                .map(|(n, f)| format!("{}/{f}", counted.get(n).map_or(0, |x| x.0)))
                .collect();
            (!per_round.is_empty()).then(|| per_round.join(" "))
        }),
    );
    t.row(
        "  missed (the kernel's count of skipped runs)",
        cells(&|c| {
            let s = r.summaries("storm", c).ok().filter(|s| !s.is_empty())?;
            let v: Vec<String> = s
                .values()
                .map(|s| s.missed.map_or("null".into(), |n| n.to_string()))
                .collect();
            Some(v.join(" "))
        }),
    );
}

/// Each goal met or missed, per wqflush method, from the medians.
fn goals(r: &Results, opts: &Options) -> String {
    let mut out = String::new();
    for c in METHODS {
        if r.nums("bench_ns", c).is_empty() {
            let _ = writeln!(out, "  [n/a] {c}: not available on this kernel");
            continue;
        }
        let mut g = Goals { out, method: c };
        g.cost(r);
        g.counts(r, opts);
        g.start(r);
        out = g.out;
    }
    out
}

fn median(v: Vec<f64>) -> Option<f64> {
    Stat::of(&v).median
}

/// The goal lines of one method.
struct Goals<'a> {
    out: String,
    method: &'a str,
}

impl Goals<'_> {
    fn line(&mut self, ok: bool, what: String) {
        let verdict = if ok { "met" } else { "MISSED" };
        let _ = writeln!(self.out, "  [{verdict}] {}: {what}", self.method);
    }

    /// What a flush costs: the empty program's floor, own-queue flushes, the offending flood.
    fn cost(&mut self, r: &Results) {
        let c = self.method;
        let floor = format!("empty-{c}");
        let empty = median(r.ratios("bench_ns", &floor, "none"));
        if let (Some(e), Some(w)) = (empty, median(r.ratios("bench_ns", c, &floor))) {
            let _ = writeln!(
                self.out,
                "  [info] {c}: an empty program on the same hook costs {e:.3}x no probe; \
                 wqflush costs {w:.3}x that"
            );
        }
        if let Some(x) = median(r.ratios("bench_ns", c, "none")) {
            self.line(
                x <= 1.02,
                format!("own-queue flush {x:.3}x no probe (goal <= 1.02x)"),
            );
        }
        if let Some(x) = median(r.ratios("bench_ns", c, "bpftrace")) {
            self.line(
                x <= 1.0,
                format!("own-queue flush {x:.3}x bpftrace (goal <= 1x)"),
            );
        }
        if let Some(x) = median(r.ratios("flood_ns", c, "bpftrace")) {
            self.line(
                x <= 1.0,
                format!("offending flood {x:.3}x bpftrace's time (goal <= 1x, aim 0.8x)"),
            );
        }
    }

    /// Exact counts: the flood, what went uncounted or skipped, the storm.
    fn counts(&mut self, r: &Results, opts: &Options) {
        let c = self.method;
        let exact = r.exact(c, "flood", "wqflush_test_flush_pointer");
        let flushes = opts.flushes;
        self.line(
            exact,
            format!("counted every one of the {flushes} offending flushes"),
        );
        let uncounted: u64 = r
            .summaries("flood", c)
            .map_or(1, |s| s.values().map(|s| s.uncounted).sum());
        self.line(uncounted == 0, format!("uncounted {uncounted} (goal 0)"));
        let missed: Option<u64> = r
            .summaries("flood", c)
            .ok()
            .and_then(|s| s.values().map(|s| s.missed).sum());
        if let Some(m) = missed {
            self.line(
                m == 0,
                format!("flood: the kernel skipped the probe {m} times (goal 0)"),
            );
        }
        let storm = r.exact(c, "storm", "wqflush_test_flush_storm");
        self.line(storm, "counted every flush of the storm".into());
    }

    /// Start-up and memory: time-to-live, alone and against bpftrace's attach, `check -- true`
    /// end to end, and RSS.
    fn start(&mut self, r: &Results) {
        let c = self.method;
        if let Some(ms) = median(r.nums("attach_ns", c).values().map(|x| x / 1e6).collect()) {
            self.line(
                ms <= 400.0,
                format!("time-to-live {ms:.0} ms (goal <= 400 ms)"),
            );
        }
        if let Some(x) = median(r.ratios("attach_ns", c, "bpftrace")) {
            self.line(
                x <= 0.02,
                format!("time-to-live {x:.3}x bpftrace's attach (goal <= 0.02x)"),
            );
        }
        if let Some(ms) = median(r.nums("check_ns", c).values().map(|x| x / 1e6).collect()) {
            self.line(
                ms <= 500.0,
                format!("check -- true {ms:.0} ms (goal <= 500 ms)"),
            );
        }
        for (m, what) in [
            ("rss_attach_kb", "after attach"),
            ("rss_sites_kb", "after the sites"),
            ("rss_paced_kb", "after the paced sites (all streamed live)"),
        ] {
            if let Some(mb) = median(r.nums(m, c).values().map(|x| x / 1024.0).collect()) {
                self.line(mb <= 10.0, format!("RSS {what} {mb:.1} MB (goal <= 10 MB)"));
            }
        }
        let lost: Vec<f64> = r.nums("stalled_lost", c).into_values().collect();
        if let Some(most) = lost.iter().copied().reduce(f64::max) {
            self.line(
                most == 0.0,
                format!(
                    "first sightings lost while a 300 MB debug file loads: {most:.0} at most \
                     (goal 0)"
                ),
            );
        }
    }
}
