//! What `--waits` adds (docs/internals.md), in a table of its own: its exit program runs on
//! every flush's return and its tracepoint on every work item, offending or not, so it is
//! measured where nothing is reported: flushes of the module's own queue and trivial work items, with wqflush's default method without and with `--waits`, beside no probe.

use std::fmt::Write as _;

use super::{
    Options, WAITS_CONFIGS, WAITS_REPEATS, WORK_ITEMS,
    results::Results,
    table::{Stat, Table, ratio_cells, stat_cells},
};

/// `--waits` stays opt-in when it raises a non-offending flush's cost by more than this.
const FLUSH_GOAL: f64 = 1.02;
/// What a work item may cost with `--waits`, against no probe.
const WORK_ITEM_GOAL: f64 = 1.05;

/// The table, its heading naming the method `--attach auto` chose.
pub fn table(r: &Results, opts: &Options) -> String {
    let mut t = Table::default();
    let method = method(r);
    t.head(
        "",
        &[
            "no probe",
            &format!("wqflush default ({method})"),
            "wqflush default --waits",
        ],
    );
    flush_rows(&mut t, r, opts.iterations as f64);
    work_item_rows(&mut t, r);
    format!(
        "\nWhat --waits adds, where nothing is reported ({}; each figure the fastest of {} \
         interleaved runs a round):\n\n{}",
        WAITS_CONFIGS.join(" "),
        WAITS_REPEATS,
        t.render()
    )
}

/// Flushes of the module's own queue (`bench`), `n` a run: what the exit program adds.
fn flush_rows(t: &mut Table, r: &Results, n: f64) {
    t.row(
        &format!("own queue: ns per flush_workqueue(own_wq) ({n} per run)"),
        stat(r, "waits_bench_ns", |ns| ns / n, 0),
    );
    t.row("  ratio to no probe", ratio(r, "waits_bench_ns", "none"));
    t.row(
        "  ratio to the same method without --waits",
        only_waits(ratio(r, "waits_bench_ns", "default")),
    );
    t.row(
        "  wqflush's programs: ns (runs) per flush (kernel's bpf_stats, untimed)",
        program_time(r, "waits_prog_flush", n),
    );
}

/// Work items (`workitems`): what the tracepoint adds, one writer, then one on each CPU.
fn work_item_rows(t: &mut Table, r: &Results) {
    let items = WORK_ITEMS as f64;
    t.row(
        &format!("work item: ns per queue_work + flush_work on own_wq ({items} per run)"),
        stat(r, "workitem_ns", |ns| ns / items, 0),
    );
    t.row("  ratio to no probe", ratio(r, "workitem_ns", "none"));
    t.row(
        "  wqflush's programs: ns (runs) per work item (kernel's bpf_stats, untimed)",
        program_time(r, "waits_prog_item", items),
    );
    t.row(
        &format!(
            "work items per second, a writer on each CPU ({} per run)",
            2.0 * items
        ),
        stat(r, "workitems_2cpu_ns", |ns| 2.0 * items / (ns / 1e9), 0),
    );
    // Items per second is the inverse of the time: no probe's time over the config's.
    t.row(
        "  ratio to no probe",
        WAITS_CONFIGS
            .iter()
            .map(|c| match *c {
                "none" => "1".to_owned(),
                _ => Stat::of(&r.ratios("workitems_2cpu_ns", "none", c)).show(3),
            })
            .collect(),
    );
}

/// The method `--attach auto` chose, as its attach line named it (`?` if it printed none; all
/// of them should a run ever differ).
fn method(r: &Results) -> String {
    let mut all = r.words("method", "default");
    for w in r.words("method", "default-waits") {
        if !all.contains(&w) {
            all.push(w);
        }
    }
    match all.is_empty() {
        true => "?".into(),
        false => all.join("/"),
    }
}

/// Per config: the median [min-max] of `f(value)`.
fn stat(r: &Results, metric: &str, f: impl Fn(f64) -> f64, digits: usize) -> Vec<String> {
    stat_cells(r, &WAITS_CONFIGS, metric, f, digits)
}

/// Per config: its ratio to config `b`, round by round.
fn ratio(r: &Results, metric: &str, b: &str) -> Vec<String> {
    ratio_cells(r, &WAITS_CONFIGS, metric, b)
}

/// Per config: the median of what its programs took per operation (time, then runs) by the
/// kernel's statistics; `-` for no probe.
fn program_time(r: &Results, metric: &str, per_run: f64) -> Vec<String> {
    WAITS_CONFIGS
        .iter()
        .map(|c| {
            let (ns, runs) = per_op(r, metric, c, per_run);
            match (ns.median, runs.median) {
                _ if *c == "none" => "-".to_owned(),
                (Some(ns), Some(runs)) => format!("{ns:.0} ({runs:.1})"),
                _ => "?".to_owned(),
            }
        })
        .collect()
}

/// The time and the runs of `config`'s programs per operation, over the rounds.
fn per_op(r: &Results, metric: &str, config: &str, per_run: f64) -> (Stat, Stat) {
    let pairs = r.pairs(metric, config);
    let ns: Vec<f64> = pairs.values().map(|p| p.0 / per_run).collect();
    let runs: Vec<f64> = pairs.values().map(|p| p.1 / per_run).collect();
    (Stat::of(&ns), Stat::of(&runs))
}

/// A row that compares `--waits` with the default alone: no probe has nothing to say.
fn only_waits(mut cells: Vec<String>) -> Vec<String> {
    cells[0] = "-".into();
    cells
}

/// The goals of `--waits`, from the medians of the per-round ratios.
pub fn goals(r: &Results, opts: &Options) -> String {
    let med = |v: Vec<f64>| Stat::of(&v).median;
    let who = format!("default ({}) with --waits", method(r));
    let mut out = String::new();
    let mut line = |ok: bool, what: String| {
        let verdict = if ok { "met" } else { "MISSED" };
        let _ = writeln!(out, "  [{verdict}] {who}: {what}");
    };
    match med(r.ratios("waits_bench_ns", "default-waits", "default")) {
        Some(x) => line(
            x <= FLUSH_GOAL,
            format!(
                "own-queue flush {x:.3}x without --waits (goal <= {FLUSH_GOAL}x; above it \
                 --waits stays opt-in)"
            ),
        ),
        None => line(false, "own-queue flush: not measured".into()),
    }
    match med(r.ratios("workitem_ns", "default-waits", "none")) {
        Some(x) => line(
            x <= WORK_ITEM_GOAL,
            format!("work item {x:.3}x no probe (goal <= {WORK_ITEM_GOAL}x)"),
        ),
        None => line(false, "work item: not measured".into()),
    }
    let without = med(r.ratios("workitem_ns", "default", "none"));
    let tput = |c| med(r.ratios("workitems_2cpu_ns", "none", c));
    if let (Some(w), Some(a), Some(b)) = (without, tput("default"), tput("default-waits")) {
        let _ = writeln!(
            out,
            "  [info] default: work item {w:.3}x no probe without --waits (nothing of wqflush runs \
             per work item then: its distance from 1 is the noise); work-item throughput {a:.3}x \
             no probe's without --waits, {b:.3}x with"
        );
    }
    out.push_str(&program_share(r, opts));
    out
}

/// What `--waits`' programs take by the kernel's own statistics, against a work item with no
/// probe: a figure the other guests' load does not move (the probes' dispatch is not in it).
fn program_share(r: &Results, opts: &Options) -> String {
    let items = WORK_ITEMS as f64;
    let item: Vec<f64> = r
        .nums("workitem_ns", "none")
        .values()
        .map(|x| x / items)
        .collect();
    let (per_item, _) = per_op(r, "waits_prog_item", "default-waits", items);
    let (per_flush, _) = per_op(
        r,
        "waits_prog_flush",
        "default-waits",
        opts.iterations as f64,
    );
    match (Stat::of(&item).median, per_item.median, per_flush.median) {
        (Some(w), Some(p), Some(f)) => format!(
            "  [info] default with --waits: its programs take {p:.0} ns per work item by the \
             kernel's bpf_stats, {:.2}% of a work item with no probe; {f:.0} ns per own-queue \
             flush\n",
            100.0 * p / w
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wqflush_vmtest::Series;

    #[test]
    fn goals_follow_the_measured_ratios() {
        let r = Results::parse(
            "method 1 default kprobe\nmethod 1 default-waits kprobe\n\
             waits_bench_ns 1 none 1000\nwaits_bench_ns 1 default 2000\n\
             waits_bench_ns 1 default-waits 2030\nworkitem_ns 1 none 10000\n\
             workitem_ns 1 default 10000\nworkitem_ns 1 default-waits 10600\n\
             workitems_2cpu_ns 1 none 1000\nworkitems_2cpu_ns 1 default 1000\n\
             workitems_2cpu_ns 1 default-waits 1250\n\
             waits_prog_item 1 default-waits 400 20\n",
        )
        .unwrap();
        let opts = Options {
            series: Series::V7,
            rounds: 1,
            iterations: 10,
            flushes: 2,
            sites: 1,
            waits_only: true,
            scan_only: false,
            scan_series: Series::V6_1,
            arch: wqflush_vmtest::Arch::Amd64,
        };
        let g = goals(&r, &opts);
        assert!(g.contains("[met] default (kprobe) with --waits: own-queue flush 1.015x"));
        assert!(g.contains("[MISSED] default (kprobe) with --waits: work item 1.060x"));
        assert!(g.contains("throughput 1.000x no probe's without --waits, 0.800x with"));
        let t = table(&r, &opts);
        assert!(t.contains("wqflush default (kprobe)"));
        assert!(t.contains(" 1.015 |"));
    }
}
