//! What the user reads: a kernel-style warning per new call site and a summary at the end, as
//! text or as JSON lines (one object per line; the contract is in docs/json.md), and optionally the
//! same warning in the kernel log.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};

use crate::{
    kernel::{module_versions::ModuleVersions, queues::SystemQueue},
    output::{
        ignore::IgnoreList,
        kmsg::Kmsg,
        records::{
            RunningItem, StuckRecord, SummaryRecord, WaitedRecord, line, record, waited_for,
        },
        text::{duration_text, kernel_warning, missed_line, queue_label, waited_text, warning},
    },
    scan::Reached,
    sites::{Lost, Site, Sites},
    sources::frames::{self, FrameLines, FrameSources},
    symbols::Frame,
};

/// Module versions, read by the event loop and the report thread.
pub type SharedVersions = Arc<Mutex<ModuleVersions>>;

pub struct Reporter<W: Write> {
    out: W,
    json: bool,
    queues: Vec<SystemQueue>,
    ignore: IgnoreList,
    kmsg: Option<Kmsg>,
    /// The running kernel's release, on every JSON record.
    kernel: Arc<str>,
    /// Shared with the event loop, which reads a module's versions at its first sighting, while
    /// it is still loaded; the report thread then finds them kept.
    modules: SharedVersions,
    /// `--waits`: sites carry wait figures.
    waits: bool,
    /// Source lines where debug info has them (None in unit tests: nothing of this system).
    sources: Option<FrameSources>,
    /// `--scan`: the loaded modules' static sites and whether each flushed, for the summary.
    reached: Option<Vec<Reached>>,
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

impl<W: Write> Reporter<W> {
    pub fn new(out: W, json: bool, queues: Vec<SystemQueue>) -> Self {
        Reporter {
            out,
            json,
            queues,
            ignore: IgnoreList::default(),
            kmsg: None,
            kernel: "".into(),
            modules: SharedVersions::default(),
            waits: false,
            sources: None,
            reached: None,
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
        self.ignore.covers(site)
    }

    /// The ignore list, for the event loop's own checks.
    pub fn ignore_list(&self) -> &IgnoreList {
        &self.ignore
    }

    /// The module versions, shared with the event loop.
    pub fn versions(&self) -> SharedVersions {
        self.modules.clone()
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
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// `--scan`: the summary lists the static sites, each with whether it flushed.
    pub fn set_reached(&mut self, reached: Vec<Reached>) {
        self.reached = Some(reached);
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
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
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
            static_sites: self.reached.as_deref(),
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
        text.push_str(&self.loss_lines(lost));
        if !sites.is_empty() {
            text.push_str(&format!(
                "{:>10}  {:<40}  {}\n",
                "COUNT", "WORKQUEUE", "CALL SITE"
            ));
        }
        for site in sites.by_count() {
            text.push_str(&self.table_row(site));
        }
        if let Some(reached) = &self.reached {
            text.push_str(&not_reached_text(reached));
        }
        text
    }

    /// What the kernel side could not deliver, count or run, one line each where there was any.
    fn loss_lines(&self, lost: Lost) -> String {
        let mut text = String::new();
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
        text
    }

    /// One call site's line of the summary table, and its waits with `--waits`.
    fn table_row(&self, site: &Site) -> String {
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
        let mut text = format!("{:>10}  {label:<40}  {call_site}{ignored}\n", site.count);
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
        text
    }
}

/// `--scan`: how many static sites flushed, and the ones that did not, one per line.
fn not_reached_text(reached: &[Reached]) -> String {
    let missing: Vec<&Reached> = reached.iter().filter(|r| !r.seen).collect();
    let mut text = format!(
        "wqflush: --scan: {} of {} function(s) in the loaded modules that flush a system \
         workqueue flushed during the run\n",
        reached.len() - missing.len(),
        reached.len()
    );
    if !missing.is_empty() {
        text.push_str("not reached:\n");
    }
    for r in missing {
        let s = &r.site;
        let via = s
            .via
            .as_ref()
            .map(|v| format!(" via {v}"))
            .unwrap_or_default();
        let at = s
            .source
            .as_ref()
            .map(|l| format!("  {l}"))
            .unwrap_or_default();
        text.push_str(&format!(
            "{:>10}  {:<40}  {} [{}] ({}){at}\n",
            "",
            format!("{}{via}", s.wq),
            s.caller,
            s.module,
            s.section
        ));
    }
    text
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
