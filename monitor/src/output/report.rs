//! What the user reads: a kernel-style warning per new call site and a summary at the end, as
//! text or as JSON lines (one object per line; the contract is in docs/json.md), and optionally the
//! same warning in the kernel log.

use std::{io::Write, sync::Arc};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    kernel::module_versions::{ModuleVersions, Versions},
    kernel::queues::SystemQueue,
    output::ignore::IgnoreList,
    output::kmsg::{self, Kmsg},
    sites::{Lost, Site, SiteWaits, Sites},
    sources::frames::{self, FrameLines, FrameSources, SourceEntry},
    symbols::Frame,
};

/// The remedy, from Tetsuo Handa's 2022 announcement to module maintainers.
pub const FIX_HINT: &str = "flush or cancel only the work items this code queued (flush_work(), \
    cancel_work_sync(), flush_delayed_work()), or queue them on a workqueue of its own \
    (alloc_workqueue() at init, destroy_workqueue() at exit) and flush that one";

pub struct Reporter<W: Write> {
    out: W,
    json: bool,
    queues: Vec<SystemQueue>,
    ignore: IgnoreList,
    kmsg: Option<Kmsg>,
    /// The running kernel's release, on every JSON record.
    kernel: Arc<str>,
    modules: ModuleVersions,
    /// `--waits`: sites carry wait figures.
    waits: bool,
    /// Source lines where debug info has them (None in unit tests: nothing of this system).
    sources: Option<FrameSources>,
}

/// `--waits`: a work function that ran on the flushed queue while a flush from the site waited.
#[derive(Serialize)]
struct WaitedFor<'a> {
    function: Option<&'a str>,
    module: Option<&'a str>,
    count: u64,
}

fn waited_for(w: Option<&SiteWaits>) -> Vec<WaitedFor<'_>> {
    w.map(|w| {
        w.waited_for
            .iter()
            .map(|(f, n)| WaitedFor {
                function: f.func.as_deref(),
                module: f.module.as_deref(),
                count: *n,
            })
            .collect()
    })
    .unwrap_or_default()
}

/// `--waits`: a reported flush returned.
#[derive(Serialize)]
struct WaitedRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    kernel: Arc<str>,
    wq: Option<&'a str>,
    caller: Option<&'a str>,
    call_site: String,
    module: Option<&'a str>,
    pid: u32,
    wait_ns: u64,
    waited_for: Vec<WaitedFor<'a>>,
}

/// `--waits --stuck-after`: a work item running on the stuck flush's queue.
#[derive(Serialize)]
struct RunningItem<'a> {
    function: Option<&'a str>,
    module: Option<&'a str>,
    /// The worker running it.
    pid: u32,
}

/// `--waits --stuck-after`: a flush still waiting.
#[derive(Serialize)]
struct StuckRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    kernel: Arc<str>,
    wq: Option<&'a str>,
    wq_name: Option<&'a str>,
    caller: Option<&'a str>,
    call_site: String,
    module: Option<&'a str>,
    pid: u32,
    comm: &'a str,
    waiting_ns: u64,
    running: Vec<RunningItem<'a>>,
}

/// What a stuck report is about (see [`Reporter::stuck`]).
pub struct StuckFlush<'a> {
    /// Index of the flushed queue in the system queue table.
    pub queue: usize,
    /// The kernel's name of the queue, when known.
    pub wq_name: Option<&'a str>,
    pub caller: Option<&'a Frame>,
    pub pid: u32,
    pub comm: &'a str,
    pub waiting_ns: u64,
    /// Work items of that queue that started and have not finished.
    pub running: &'a [WorkerItem],
}

/// A work item a worker is running.
pub struct WorkerItem {
    /// The worker's thread id.
    pub pid: u32,
    /// The work function.
    pub frame: Frame,
}

#[derive(Serialize)]
struct SiteRecord<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    /// The release, on a flush record (the summary has it once for all its sites).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<Arc<str>>,
    /// The pointer variable, e.g. "system_long_wq"; null when matched by name only.
    wq: Option<&'a str>,
    wq_name: Option<&'a str>,
    matched_by: &'static str,
    caller: Option<&'a str>,
    call_site: String,
    module: Option<&'a str>,
    module_version: Option<Arc<str>>,
    module_srcversion: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<Vec<String>>,
    /// `file:line` of the flush call in the caller (of the innermost inlined level), or null.
    source: Option<String>,
    /// (`flush` only) the stack with its source lines, one entry per inline level; null when
    /// no frame has debug info.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_source: Option<Option<Vec<SourceEntry>>>,
    // The task of the first sighting; null when that event was lost (ring buffer full).
    pid: Option<u32>,
    tgid: Option<u32>,
    comm: Option<&'a str>,
    cpu: Option<u32>,
    worker: Option<bool>,
    /// For a worker: the queue of the work item it runs, and whether that is the queue it
    /// flushes (the flush then waits for itself).
    worker_wq: Option<&'a str>,
    worker_wq_name: Option<&'a str>,
    deadlock: Option<bool>,
    wq_addr: Option<String>,
    /// CLOCK_MONOTONIC nanoseconds of the first sighting.
    time_ns: Option<u64>,
    count: u64,
    ignored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'static str>,
    /// `--waits` only (absent without): flushes that returned, their summed and longest wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    waits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_ns_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_ns_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waited_for: Option<Vec<WaitedFor<'a>>>,
    /// `--waits` only: its flushes reported stuck.
    #[serde(skip_serializing_if = "Option::is_none")]
    stuck: Option<u64>,
}

impl<'a> SiteRecord<'a> {
    fn with_waits(mut self, site: &'a Site) -> Self {
        let w = site.waits.as_deref();
        let stats = w.map(|w| w.stats).unwrap_or_default();
        self.waits = Some(stats.waits);
        self.wait_ns_total = Some(stats.total_ns);
        self.wait_ns_max = Some(stats.max_ns);
        self.waited_for = Some(waited_for(w));
        self.stuck = Some(u64::from(site.stuck));
        self
    }
}

#[derive(Serialize)]
struct SummaryRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    kernel: Arc<str>,
    sites: Vec<SiteRecord<'a>>,
    flushes: u64,
    /// First sightings the ring buffer had no room for (their flushes are counted).
    lost: u64,
    /// Flushes not counted because the kernel's counter map was full.
    uncounted: u64,
    /// Flushes the kernel did not run the probe for, by its own counters; null where this
    /// kernel keeps no such count for the method in use.
    missed: Option<u64>,
    /// `--waits` only: offending flushes whose wait was not tracked (a queue's 4 slots or the
    /// in-flight table full) plus work items not counted (that table full).
    #[serde(skip_serializing_if = "Option::is_none")]
    waits_lost: Option<u64>,
    /// `--waits` only: flushes past --stuck-after whose task had left the flush (the kernel did
    /// not run the exit probe for them); never reported as stuck.
    #[serde(skip_serializing_if = "Option::is_none")]
    exits_missed: Option<u64>,
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W, json: bool, queues: Vec<SystemQueue>) -> Self {
        Reporter {
            out,
            json,
            queues,
            ignore: IgnoreList::default(),
            kmsg: None,
            kernel: "".into(),
            modules: ModuleVersions::default(),
            waits: false,
            sources: None,
        }
    }

    /// Frames gain source lines from the debug info `sources` finds.
    pub fn with_sources(mut self, sources: FrameSources) -> Self {
        self.sources = Some(sources);
        self
    }

    fn stack_lines(&mut self, frames: &[Frame]) -> Vec<FrameLines> {
        match &mut self.sources {
            Some(s) => s.stack(frames),
            None => vec![None; frames.len()],
        }
    }

    /// `--waits`: summary sites carry their wait figures.
    pub fn with_waits(mut self, waits: bool) -> Self {
        self.waits = waits;
        self
    }

    /// `--waits`: a reported flush from `site` returned after `wait_ns`; what it waited for is
    /// the site's WAITED entries as read just now.
    pub fn returned(&mut self, site: &Site, pid: u32, wait_ns: u64) -> Result<()> {
        if self.is_ignored(site) {
            return Ok(());
        }
        let caller = site.caller();
        let w = site.waits.as_deref();
        if self.json {
            let rec = WaitedRecord {
                kind: "waited",
                kernel: self.kernel.clone(),
                wq: self.queues[site.queue()].var.as_deref(),
                caller: caller.and_then(|c| c.func.as_deref()),
                call_site: caller.map(ToString::to_string).unwrap_or_default(),
                module: caller.and_then(|c| c.module.as_deref()),
                pid,
                wait_ns,
                waited_for: waited_for(w),
            };
            line(&mut self.out, &rec)?;
        } else {
            let call_site = caller.map_or_else(|| "?".into(), ToString::to_string);
            writeln!(
                self.out,
                "wqflush: {call_site} (pid {pid}) waited {} for {}",
                duration_text(wait_ns),
                waited_text(w)
            )
            .context("writing the report")?;
        }
        self.out.flush().context("writing the report")
    }

    /// `--waits --stuck-after`: a flush has waited `waiting_ns` so far and still waits.
    pub fn stuck(&mut self, s: &StuckFlush) -> Result<()> {
        let text = self.stuck_text(s);
        if let Some(kmsg) = &mut self.kmsg {
            kmsg.warn(std::slice::from_ref(&text))?;
        }
        if self.json {
            let q = &self.queues[s.queue];
            let rec = StuckRecord {
                kind: "stuck",
                kernel: self.kernel.clone(),
                wq: q.var.as_deref(),
                wq_name: s.wq_name.or(q.name.as_deref()),
                caller: s.caller.and_then(|c| c.func.as_deref()),
                call_site: s.caller.map(ToString::to_string).unwrap_or_default(),
                module: s.caller.and_then(|c| c.module.as_deref()),
                pid: s.pid,
                comm: s.comm,
                waiting_ns: s.waiting_ns,
                running: s
                    .running
                    .iter()
                    .map(|w| RunningItem {
                        function: w.frame.func.as_deref(),
                        module: w.frame.module.as_deref(),
                        pid: w.pid,
                    })
                    .collect(),
            };
            line(&mut self.out, &rec)?;
        } else {
            writeln!(self.out, "{text}").context("writing the report")?;
        }
        self.out.flush().context("writing the report")
    }

    /// The STUCK line; a work item the flushing task runs itself is marked, since that flush
    /// can never return.
    fn stuck_text(&self, s: &StuckFlush) -> String {
        let label = self.queues[s.queue].describe(s.wq_name);
        let running = s
            .running
            .iter()
            .map(|w| {
                let f = &w.frame;
                let mut name = f
                    .func
                    .as_deref()
                    .map_or_else(|| format!("{:#x}", f.addr), str::to_owned);
                if let Some(m) = f.module.as_deref() {
                    name = format!("{name} [{m}]");
                }
                if w.pid == s.pid {
                    name.push_str(" (run by the flushing task itself)");
                }
                name
            })
            .collect::<Vec<_>>();
        let running = if running.is_empty() {
            "none seen".to_owned()
        } else {
            running.join(", ")
        };
        let from = s
            .caller
            .map_or("an unknown function".to_owned(), |c| c.with_size());
        format!(
            "STUCK: wqflush: flush of {label} from {from} by {} (pid {}) has waited {:.1} s; \
             running on that queue: {running}",
            s.comm,
            s.pid,
            s.waiting_ns as f64 / 1e9
        )
    }

    pub fn with_kernel(mut self, release: &str) -> Self {
        self.kernel = release.into();
        self
    }

    pub fn with_ignore(mut self, ignore: IgnoreList) -> Self {
        self.ignore = ignore;
        self
    }

    pub fn with_kmsg(mut self, kmsg: Kmsg) -> Self {
        self.kmsg = Some(kmsg);
        self
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn is_ignored(&self, site: &Site) -> bool {
        site.caller()
            .and_then(|c| Some((c.module.as_deref(), c.func.as_deref()?)))
            .is_some_and(|(module, func)| self.ignore.matches(module, func))
    }

    /// Warns about a call site the first time it flushes, unless the ignore list covers it.
    pub fn first_sighting(&mut self, site: &Site, frames: &[Frame]) -> Result<()> {
        if self.is_ignored(site) {
            return Ok(());
        }
        let lines = self.stack_lines(frames);
        let caller = frames.iter().position(|f| !f.is_flush_function());
        let source = frames::location(caller.and_then(|i| lines[i].as_deref()));
        if let Some(kmsg) = &mut self.kmsg {
            kmsg.warn(&kernel_warning(
                &self.queues,
                site,
                frames,
                source.as_deref(),
            ))?;
        }
        let versions = self
            .modules
            .get(site.caller().and_then(|c| c.module.as_deref()));
        if self.json {
            let mut rec = record(
                &self.queues,
                site,
                Some("flush"),
                Some(frames),
                false,
                versions,
            );
            rec.kernel = Some(self.kernel.clone());
            rec.source = source;
            rec.stack_source = Some(frames::entries(frames, &lines));
            line(&mut self.out, &rec)?;
        } else {
            let text = warning(&self.queues, site, frames, &lines);
            write!(self.out, "{text}").context("writing the report")?;
        }
        self.out.flush().context("writing the report")
    }

    /// Reports every site, highest count first, and the totals.
    pub fn summary(&mut self, sites: &Sites, lost: Lost) -> Result<()> {
        let text = if self.json {
            // The text summary carries this line; JSON has `missed`, and a person reads stderr.
            if let Some(line) = missed_line(lost.missed) {
                eprint!("{line}");
            }
            self.summary_json(sites, lost)?
        } else {
            self.table(sites, lost)
        };
        write!(self.out, "{text}").context("writing the report")?;
        self.out.flush().context("writing the report")
    }

    fn summary_json(&mut self, sites: &Sites, lost: Lost) -> Result<String> {
        let mut records = Vec::with_capacity(sites.len());
        for s in sites.by_count() {
            let versions = self
                .modules
                .get(s.caller().and_then(|c| c.module.as_deref()));
            let mut rec = record(&self.queues, s, None, None, self.is_ignored(s), versions);
            if let Some(sources) = &mut self.sources {
                rec.source = frames::location(sources.caller(s.caller()).as_deref());
            }
            records.push(if self.waits { rec.with_waits(s) } else { rec });
        }
        let summary = SummaryRecord {
            kind: "summary",
            kernel: self.kernel.clone(),
            sites: records,
            flushes: sites.total(),
            lost: lost.events,
            uncounted: lost.uncounted,
            missed: lost.missed,
            waits_lost: self.waits.then_some(lost.waits),
            exits_missed: self.waits.then_some(lost.exits_missed),
        };
        Ok(serde_json::to_string(&summary)? + "\n")
    }

    /// Warnings the kernel log did not get because of --kmsg's rate limit.
    pub fn kmsg_suppressed(&self) -> u64 {
        self.kmsg.as_ref().map_or(0, |k| k.suppressed)
    }

    fn table(&self, sites: &Sites, lost: Lost) -> String {
        let mut text = format!(
            "wqflush: {} call site(s), {} flush(es) of system workqueues\n",
            sites.len(),
            sites.total()
        );
        if lost.events > 0 || lost.uncounted > 0 {
            text.push_str(&format!(
                "wqflush: {} first sighting(s) lost (ring buffer full; still counted), {} flush(es) \
                 not counted (counter map full)\n",
                lost.events, lost.uncounted
            ));
        }
        if let Some(line) = missed_line(lost.missed) {
            text.push_str(&line);
        }
        if self.waits && lost.exits_missed > 0 {
            text.push_str(&format!(
                "wqflush: {} flush(es) in flight past --stuck-after had left the flush (the kernel \
                 did not run the exit probe for them); not reported as stuck\n",
                lost.exits_missed
            ));
        }
        if !sites.is_empty() {
            text.push_str(&format!(
                "{:>10}  {:<40}  {}\n",
                "COUNT", "WORKQUEUE", "CALL SITE"
            ));
        }
        for site in sites.by_count() {
            let call_site = site
                .caller()
                .map(ToString::to_string)
                .unwrap_or_else(|| "?".into());
            let ignored = if self.is_ignored(site) {
                "  (ignored)"
            } else {
                ""
            };
            let label = queue_label(&self.queues, site);
            text.push_str(&format!(
                "{:>10}  {label:<40}  {call_site}{ignored}\n",
                site.count
            ));
            if self.waits {
                let stats = site.waits.as_ref().map(|w| w.stats).unwrap_or_default();
                text.push_str(&format!(
                    "{:>10}  waited: {} returned, {} in all, {} at most, for {}; {} stuck\n",
                    "",
                    stats.waits,
                    duration_text(stats.total_ns),
                    duration_text(stats.max_ns),
                    waited_text(site.waits.as_deref()),
                    site.stuck
                ));
            }
        }
        text
    }
}

/// `212 ms`, `1.5 s`, `37 us`.
pub fn duration_text(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{} us", ns / 1_000),
        1_000_000..10_000_000_000 => format!("{} ms", ns / 1_000_000),
        _ => format!("{:.1} s", ns as f64 / 1e9),
    }
}

/// `3 work items: slow_work_fn [foo] ×3, other ×1`.
fn waited_text(w: Option<&SiteWaits>) -> String {
    let items = w.map_or(&[][..], |w| &w.waited_for[..]);
    let n: u64 = items.iter().map(|(_, n)| n).sum();
    if n == 0 {
        return "no work items".into();
    }
    let list: Vec<String> = items
        .iter()
        .map(|(f, n)| {
            let name = f
                .func
                .as_deref()
                .map_or_else(|| format!("{:#x}", f.addr), str::to_owned);
            match f.module.as_deref() {
                Some(m) => format!("{name} [{m}] ×{n}"),
                None => format!("{name} ×{n}"),
            }
        })
        .collect();
    format!(
        "{n} work item{}: {}",
        if n == 1 { "" } else { "s" },
        list.join(", ")
    )
}

/// The warning for flushes the kernel did not run the probe for, when there were any.
pub fn missed_line(missed: Option<u64>) -> Option<String> {
    missed.filter(|&n| n > 0).map(|n| {
        format!(
            "wqflush: warning: the kernel skipped the probe {n} time(s): those flushes are not in \
             the counts (fentry under full or lazy preemption; --attach auto does not lose them)\n"
        )
    })
}

fn record<'a>(
    queues: &'a [SystemQueue],
    site: &'a Site,
    kind: Option<&'static str>,
    stack: Option<&[Frame]>,
    ignored: bool,
    versions: Versions,
) -> SiteRecord<'a> {
    let q = &queues[site.queue()];
    let caller = site.caller();
    let f = site.first.as_ref();
    let running = f.and_then(|f| f.running.as_ref());
    SiteRecord {
        kind,
        kernel: None,
        wq: q.var.as_deref(),
        wq_name: f.and_then(|f| f.wq_name.as_deref()).or(q.name.as_deref()),
        matched_by: if q.var.is_none() { "name" } else { "address" },
        caller: caller.and_then(|c| c.func.as_deref()),
        call_site: caller.map(ToString::to_string).unwrap_or_default(),
        module: caller.and_then(|c| c.module.as_deref()),
        module_version: versions.version,
        module_srcversion: versions.srcversion,
        stack: stack.map(|frames| frames.iter().map(ToString::to_string).collect()),
        source: None,
        stack_source: None,
        pid: f.map(|f| f.pid),
        tgid: f.map(|f| f.tgid),
        comm: f.map(|f| &*f.comm),
        cpu: f.map(|f| f.cpu),
        worker: f.and_then(|f| f.worker),
        worker_wq: running.and_then(|r| queues.get(r.queue? as usize)?.var.as_deref()),
        worker_wq_name: running.and_then(|r| r.name.as_deref()),
        deadlock: f.and_then(|f| Some(f.running.as_ref()?.wq == f.wq)),
        wq_addr: f.map(|f| format!("{:#x}", f.wq)),
        time_ns: f.map(|f| f.time_ns),
        count: site.count,
        ignored,
        hint: stack.is_some().then_some(FIX_HINT),
        waits: None,
        wait_ns_total: None,
        wait_ns_max: None,
        waited_for: None,
        stuck: None,
    }
}

fn queue_label(queues: &[SystemQueue], site: &Site) -> String {
    let kernel_name = site.first.as_ref().and_then(|f| f.wq_name.as_deref());
    queues[site.queue()].describe(kernel_name)
}

fn caller_text(site: &Site) -> String {
    site.caller()
        .map_or("an unknown function".to_owned(), |c| c.with_size())
}

fn call_trace(site: &Site, frames: &[Frame], lines: &[FrameLines]) -> String {
    let mut text = String::from("Call Trace:\n");
    for (frame, lines) in frames.iter().zip(lines) {
        for l in frames::trace_lines(frame, lines.as_deref()) {
            text.push_str(&l);
            text.push('\n');
        }
    }
    if let Some(err) = site.first.as_ref().and_then(|f| f.stack_error) {
        text.push_str(&format!(
            " (no stack: bpf_get_stack failed with errno {err})\n"
        ));
    }
    text
}

/// wqflush's own warning, for stdout.
fn warning(queues: &[SystemQueue], site: &Site, frames: &[Frame], lines: &[FrameLines]) -> String {
    let (comm, pid, tgid, cpu) = match &site.first {
        Some(f) => (&*f.comm, f.pid, f.tgid, f.cpu),
        None => ("?", 0, 0, 0),
    };
    format!(
        "WARNING: wqflush: flush of system workqueue {} from {}\n\
         comm: {comm} pid: {pid} tgid: {tgid} cpu: {cpu} workqueue worker: {}\n{}\
         Fix: {FIX_HINT}\n",
        queue_label(queues, site),
        caller_text(site),
        worker_text(queues, site),
        call_trace(site, frames, lines),
    )
}

/// "no", or which queue's work item the worker runs, with the deadlock spelled out.
fn worker_text(queues: &[SystemQueue], site: &Site) -> String {
    let Some(f) = &site.first else {
        return "unknown".to_owned();
    };
    let Some(running) = &f.running else {
        return match f.worker {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        }
        .to_owned();
    };
    let queue = match (
        running.queue.and_then(|q| queues.get(q as usize)),
        &running.name,
    ) {
        (Some(q), name) => q.describe(name.as_deref()),
        // Not a system queue: its name is all there is.
        (None, Some(n)) => format!("\"{n}\""),
        (None, None) => "?".to_owned(),
    };
    let mut text = format!("yes, running a work item of {queue}");
    if running.wq == f.wq {
        text.push_str(
            "\nDEADLOCK: the work item flushes the queue it runs on; the flush waits for the work \
             item itself and never returns",
        );
    }
    text
}

/// The same warning laid out like the kernel's own `WARN()` (`__warn()`), so tools that scrape
/// dmesg for "WARNING: CPU: N PID: N at ..." between "cut here" and "end trace" catch it. Short
/// enough for the kernel's /dev/kmsg burst: the stack stops at the caller's callers.
fn kernel_warning(
    queues: &[SystemQueue],
    site: &Site,
    frames: &[Frame],
    source: Option<&str>,
) -> Vec<String> {
    let (cpu, pid, comm) = match &site.first {
        Some(f) => (f.cpu, f.pid, &*f.comm),
        None => (0, 0, "?"),
    };
    let mut lines = vec![
        "------------[ cut here ]------------".to_owned(),
        format!(
            "WARNING: CPU: {cpu} PID: {pid} at {}{}",
            caller_text(site),
            source.map(|s| format!(" ({s})")).unwrap_or_default()
        ),
        format!(
            "wqflush: {comm} flushed system workqueue {}; fix: flush_work()/cancel_work_sync() \
             your own work items, or flush your own alloc_workqueue() queue",
            queue_label(queues, site)
        ),
        "Call Trace:".to_owned(),
    ];
    let room = kmsg::MAX_LINES - lines.len() - 1;
    lines.extend(
        frames
            .iter()
            .take(room)
            .map(|f| format!(" {}", f.with_size())),
    );
    lines.push("---[ end trace 0000000000000000 ]---".to_owned());
    lines
}

fn line(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value)?;
    writeln!(out, "{text}").context("writing the report")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::kallsyms::Kallsyms,
        sites::events::{decode, encode, sample_event},
        symbols::symbolize,
    };

    const KALLSYMS: &str = "\
ffffffff810b5e20 T __flush_workqueue
ffffffff810b6300 t other
ffffffffc0a01000 t wqflush_test_flush_long\t[wqflush_test]
ffffffffc0a01040 t wqflush_test_write\t[wqflush_test]
";

    fn queues() -> Vec<SystemQueue> {
        vec![
            SystemQueue {
                var: Some("system_wq".into()),
                name: Some("events".into()),
                addr: 1,
            },
            SystemQueue {
                var: Some("system_long_wq".into()),
                name: Some("events_long".into()),
                addr: 2,
            },
        ]
    }

    fn sites(n: usize) -> Sites {
        let ks = Kallsyms::parse(KALLSYMS, |_| false).unwrap();
        let mut sites = Sites::default();
        for _ in 0..n {
            let f = decode(
                &encode(&sample_event(1, &[0xffffffff810b5e25, 0xffffffffc0a0101e])),
                2,
            )
            .unwrap();
            let frames = symbolize(&ks, &f.stack);
            sites.record(f, frames);
        }
        sites
    }

    /// The stack of the sites `sites` records, as the reporter gets it with a first sighting.
    fn frames() -> Vec<Frame> {
        let ks = Kallsyms::parse(KALLSYMS, |_| false).unwrap();
        symbolize(&ks, &[0xffffffff810b5e25, 0xffffffffc0a0101e])
    }

    fn lines(out: Vec<u8>) -> Vec<serde_json::Value> {
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn json_flush_record_follows_the_contract() {
        let sites = sites(1);
        let mut r = Reporter::new(Vec::new(), true, queues()).with_kernel("6.1.0-57-amd64");
        r.first_sighting(sites.by_count()[0], &frames()).unwrap();
        let v = &lines(r.into_inner())[0];
        assert_eq!(v["type"], "flush");
        assert_eq!(v["kernel"], "6.1.0-57-amd64");
        // No module of that name is loaded here: no versions, but the fields are there.
        assert!(v["module_version"].is_null() && v["module_srcversion"].is_null());
        assert!(v.get("module_version").is_some());
        assert_eq!(v["wq"], "system_long_wq");
        assert_eq!(v["wq_name"], "events_long");
        assert_eq!(v["caller"], "wqflush_test_flush_long");
        assert_eq!(v["module"], "wqflush_test");
        assert_eq!(
            v["call_site"],
            "wqflush_test_flush_long+0x1e [wqflush_test]"
        );
        assert_eq!(v["stack"][0], "__flush_workqueue+0x5");
        assert_eq!(
            (v["pid"].as_u64(), v["comm"].as_str()),
            (Some(77), Some("sh"))
        );
        assert_eq!(
            (v["count"].as_u64(), v["matched_by"].as_str()),
            (Some(1), Some("address"))
        );
    }

    fn frame(func: &str, module: Option<&str>) -> Frame {
        Frame {
            addr: 0xffffffffc0a01000,
            func: Some(func.into()),
            offset: 0x1e,
            size: 0x40,
            module: module.map(Into::into),
        }
    }

    #[test]
    fn stuck_record_follows_the_contract() {
        let caller = frame("wqflush_test_work_flush_self", Some("wqflush_test"));
        let running = [
            WorkerItem {
                pid: 42,
                frame: frame("wqflush_test_work_flush_self", Some("wqflush_test")),
            },
            WorkerItem {
                pid: 7,
                frame: frame("vmstat_update", None),
            },
        ];
        let stuck = StuckFlush {
            queue: 1,
            wq_name: None,
            caller: Some(&caller),
            pid: 42,
            comm: "kworker/0:2",
            waiting_ns: 10_200_000_000,
            running: &running,
        };
        let mut r = Reporter::new(Vec::new(), true, queues()).with_kernel("5.10.0-35-amd64");
        r.stuck(&stuck).unwrap();
        let v = &lines(r.into_inner())[0];
        assert_eq!(v["type"], "stuck");
        assert_eq!(v["wq"], "system_long_wq");
        assert_eq!(v["wq_name"], "events_long");
        assert_eq!(v["caller"], "wqflush_test_work_flush_self");
        assert_eq!(v["module"], "wqflush_test");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["comm"], "kworker/0:2");
        assert_eq!(v["waiting_ns"], 10_200_000_000u64);
        assert_eq!(
            v["running"],
            serde_json::json!([
                {"function": "wqflush_test_work_flush_self", "module": "wqflush_test", "pid": 42},
                {"function": "vmstat_update", "module": null, "pid": 7},
            ])
        );
        let mut r = Reporter::new(Vec::new(), false, queues());
        r.stuck(&stuck).unwrap();
        let text = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(
            text,
            "STUCK: wqflush: flush of system_long_wq (events_long) from \
             wqflush_test_work_flush_self+0x1e/0x40 [wqflush_test] by kworker/0:2 (pid 42) has \
             waited 10.2 s; running on that queue: wqflush_test_work_flush_self [wqflush_test] \
             (run by the flushing task itself), vmstat_update\n"
        );
    }

    #[test]
    fn json_summary_has_counts_and_lost() {
        let mut r = Reporter::new(Vec::new(), true, queues());
        r.summary(
            &sites(3),
            Lost {
                events: 2,
                uncounted: 1,
                missed: Some(4),
                waits: 0,
                exits_missed: 0,
            },
        )
        .unwrap();
        let v = &lines(r.into_inner())[0];
        assert_eq!(v["missed"], 4);
        assert_eq!(v["type"], "summary");
        assert_eq!(v["sites"][0]["count"], 3);
        assert_eq!(v["sites"][0]["wq"], "system_long_wq");
        assert!(v["sites"][0].get("stack").is_none());
        assert_eq!(
            (
                v["flushes"].as_u64(),
                v["lost"].as_u64(),
                v["uncounted"].as_u64()
            ),
            (Some(3), Some(2), Some(1))
        );
    }

    #[test]
    fn misses_are_a_warning_in_text_and_null_in_json_when_unknown() {
        let mut r = Reporter::new(Vec::new(), false, queues());
        let lost = Lost {
            missed: Some(7),
            waits: 0,
            ..Lost::default()
        };
        r.summary(&sites(1), lost).unwrap();
        let text = String::from_utf8(r.into_inner()).unwrap();
        assert!(
            text.contains("wqflush: warning: the kernel skipped the probe 7 time(s)"),
            "{text}"
        );
        let mut r = Reporter::new(Vec::new(), true, queues());
        r.summary(&sites(1), Lost::default()).unwrap();
        assert!(lines(r.into_inner())[0]["missed"].is_null());
        assert_eq!(missed_line(Some(0)), None);
    }

    #[test]
    fn text_warning_looks_like_a_kernel_warning() {
        let sites = sites(1);
        let mut r = Reporter::new(Vec::new(), false, queues());
        r.first_sighting(sites.by_count()[0], &frames()).unwrap();
        r.summary(&sites, Lost::default()).unwrap();
        let text = String::from_utf8(r.into_inner()).unwrap();
        assert!(
            text.starts_with(
                "WARNING: wqflush: flush of system workqueue system_long_wq (events_long) from \
             wqflush_test_flush_long+0x1e/0x40 [wqflush_test]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nCall Trace:\n __flush_workqueue+0x5/0x4e0\n"),
            "{text}"
        );
        assert!(
            text.contains("wqflush: 1 call site(s), 1 flush(es)"),
            "{text}"
        );
    }

    #[test]
    fn a_closed_output_is_an_error_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut r = Reporter::new(Closed, true, queues());
        assert!(r.summary(&sites(1), Lost::default()).is_err());
    }
}
