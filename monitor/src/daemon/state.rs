//! What the daemon knows while it watches, and how each event changes it: the call sites and
//! their counts, what was lost, `--waits`' figures and stuck flushes, and the reporter with its
//! sinks.

use std::io::Write;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};

use super::options::Options;
use super::writer::Writer;
use crate::{
    daemon::coverage::Coverage,
    daemon::stuck::{self, StuckTracker},
    kernel::btf,
    kernel::queues,
    kernel::target::Target,
    output::ignore::IgnoreList,
    output::kmsg::Kmsg,
    output::report::Reporter,
    output::report::SharedVersions,
    output::{http, metrics},
    probe::unpreempted::Unpreempted,
    probe::{self, Probe},
    sites::events::decode,
    sites::{Lost, Sites, events::c_string},
    sources::frames::FrameSources,
    symbols::{self, Symbolizer},
};

pub(super) struct State<W: Write + Send + 'static> {
    /// Ring buffer records handled so far.
    pub(super) records: u64,
    /// The kernel's counters, read once a second into the same buffer (a fresh one each time
    /// left its pages resident after the heap was trimmed).
    pub(super) counts: Vec<(monitor_ebpf::CountKey, u64)>,
    pub(super) sym: Symbolizer,
    pub(super) sites: Sites,
    /// Writes the reports on a thread of its own (writer.rs).
    pub(super) writer: Writer<W>,
    /// The reporter's ignore list, for the loop's own checks.
    pub(super) ignore: IgnoreList,
    /// The reporter's module versions: read here at a first sighting, while the module is
    /// loaded.
    pub(super) versions: SharedVersions,
    pub(super) queues: Vec<queues::SystemQueue>,
    /// Which miss counters the kernel keeps, once known.
    pub(super) miss_counters: Option<btf::MissCounters>,
    /// What the kernel side lost by the last reading of its counters.
    pub(super) lost: Lost,
    /// `--waits`: the kernel's wait maps, read with the counters.
    pub(super) wait_stats: Vec<(monitor_ebpf::CountKey, monitor_ebpf::WaitStats)>,
    pub(super) waited: Vec<(monitor_ebpf::WaitedKey, u64)>,
    /// `--waits`: flushes in flight past `--stuck-after`, and the work items running meanwhile.
    pub(super) stuck: Option<StuckTracker>,
    pub(super) flights: Vec<(u32, monitor_ebpf::InFlight)>,
    /// Whether the hidden-caller warning was printed (once is enough).
    pub(super) warned_trampoline: bool,
    /// `--scan`: the loaded modules' static sites.
    pub(super) coverage: Option<Coverage>,
}

impl State<std::io::Stdout> {
    /// Nothing seen yet; reports go to stdout and the sinks, from the report thread.
    pub(super) fn new(
        opts: &Options,
        target: &Target,
        sym: Symbolizer,
        sinks: Sinks,
    ) -> Result<Self> {
        let reporter = reporter(opts, target, sinks);
        let ignore = reporter.ignore_list().clone();
        let versions = reporter.versions();
        Ok(State {
            records: 0,
            counts: Vec::new(),
            sym,
            sites: Sites::default(),
            writer: Writer::spawn(reporter)?,
            ignore,
            versions,
            queues: target.queues.clone(),
            miss_counters: None,
            lost: Lost::default(),
            wait_stats: Vec::new(),
            waited: Vec::new(),
            stuck: opts.waits.then(|| StuckTracker::new(opts.stuck_after)),
            flights: Vec::new(),
            warned_trampoline: false,
            coverage: opts.scan.then(Coverage::start),
        })
    }
}

impl<W: Write + Send + 'static> State<W> {
    pub(super) fn on_flush(&mut self, bytes: &[u8]) -> Result<()> {
        self.records += 1;
        let flush = decode(bytes, self.queues.len())?;
        let mut frames = self.sym.frames(&flush.stack);
        symbols::place_caller(&mut frames, Some(self.sym.frame(flush.caller)));
        // A new call site whose caller the current table does not name may be in a module
        // loaded since kallsyms was read (also where a departed module's names would fit it):
        // re-read if /proc/modules changed, and retry. (Re-reading for every new site would
        // cost seconds under a burst; a module gone meanwhile keeps its names.)
        let named = symbols::caller(&frames).is_some_and(|c| self.sym.names_now(c.addr));
        if !named && self.sites.is_new(flush.queue, &frames) && self.sym.refresh()? {
            frames = self.sym.frames(&flush.stack);
            symbols::place_caller(&mut frames, Some(self.sym.frame(flush.caller)));
        }
        if let Some((site, frames)) = self.sites.record(flush, frames) {
            warn_hidden_caller(site.caller(), &mut self.warned_trampoline);
            if !self.ignore.covers(site) {
                let module = site.caller().and_then(|c| c.module.clone());
                self.versions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(module.as_deref());
                let (site, frames) = (site.clone(), frames.to_vec());
                self.writer
                    .submit(Box::new(move |r| r.first_sighting(&site, &frames)))?;
            }
        }
        self.sites.forget_stacks();
        Ok(())
    }

    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(item) = ring.next() {
            self.on_flush(&item)?;
        }
        Ok(())
    }

    /// Takes the kernel's exact counts; returns what was lost.
    pub(super) fn refresh_counts(&mut self, probe: &Probe) -> Result<Lost> {
        // Read on first use, after the probe went live: two more scans of the kernel's BTF.
        let counters = *self
            .miss_counters
            .get_or_insert_with(|| btf::read_miss_counters().unwrap_or_default());
        let lost = {
            // The map reads only: a flusher must not preempt them (see unpreempted.rs).
            let _rt = Unpreempted::enter();
            probe::maps::counts(&probe.ebpf, &mut self.counts)?;
            probe.lost(&counters)?
        };
        let sym = &self.sym;
        self.sites
            .apply_counts(&self.counts, |addr| sym.frame(addr));
        self.refresh_waits(probe)?;
        Ok(Lost {
            exits_missed: self.stuck.as_ref().map_or(0, |s| s.exits_missed),
            ..lost
        })
    }

    /// `--waits`: reports the flushes in flight past `--stuck-after` that still wait (the counts
    /// were read just before, so their sites are known).
    pub(super) fn check_stuck(&mut self, probe: &mut Probe) -> Result<()> {
        let Some(tracker) = &mut self.stuck else {
            return Ok(());
        };
        {
            let _rt = Unpreempted::enter();
            probe::maps::in_flight(&probe.ebpf, &mut self.flights)?;
        }
        let now = stuck::monotonic_ns();
        let ebpf = &probe.ebpf;
        let found = tracker.poll(&self.flights, now, stuck::read_task, |tid| {
            probe::maps::in_flight_of(ebpf, tid).ok().flatten()
        });
        if found.is_empty() {
            return Ok(());
        }
        let running = probe::maps::running_work(&mut probe.ebpf)?;
        for (tid, flight) in found {
            self.report_stuck(tid, &flight, &running, now)?;
        }
        Ok(())
    }

    /// One stuck flush: its site's figures and the report, with the work items running on the
    /// flushed queue (by the task iterator) as what it waits for.
    pub(super) fn report_stuck(
        &mut self,
        tid: u32,
        flight: &monitor_ebpf::InFlight,
        running: &[monitor_ebpf::RunningWork],
        now: u64,
    ) -> Result<()> {
        let caller = self.sym.frame(flight.key.caller);
        let running: Vec<_> = running
            .iter()
            .filter(|r| r.wq == flight.wq)
            .map(|r| crate::output::report::WorkerItem {
                pid: r.tid,
                frame: self.sym.frame(r.function),
            })
            .collect();
        let comm = c_string(&flight.comm);
        self.sites.add_stuck(&flight.key);
        let site = self.sites.by_key(&flight.key);
        if site.is_some_and(|s| self.ignore.covers(s)) {
            return Ok(());
        }
        let wq_name = site
            .and_then(|s| s.first.as_ref())
            .and_then(|f| f.wq_name.as_deref());
        let caller = site.and_then(|s| s.caller()).or(Some(&caller));
        let (queue, wq_name, caller) = (
            flight.key.queue as usize,
            wq_name.map(str::to_owned),
            caller.cloned(),
        );
        let waiting_ns = now.saturating_sub(flight.start_ns);
        self.writer.submit(Box::new(move |r| {
            r.stuck(&crate::output::report::StuckFlush {
                queue,
                wq_name: wq_name.as_deref(),
                caller: caller.as_ref(),
                pid: tid,
                comm: &comm,
                waiting_ns,
                running: &running,
            })
        }))
    }

    /// `--waits`: the kernel's wait figures, onto the sites.
    pub(super) fn refresh_waits(&mut self, probe: &Probe) -> Result<()> {
        if !probe.waits {
            return Ok(());
        }
        {
            let _rt = Unpreempted::enter();
            probe::maps::waits(&probe.ebpf, &mut self.wait_stats, &mut self.waited)?;
        }
        let sym = &self.sym;
        self.sites
            .apply_waits(&self.wait_stats, &self.waited, |addr| sym.frame(addr));
        Ok(())
    }

    /// What is left in the ring buffers once watching stops: sightings first, then returns.
    pub(super) fn drain_all(
        &mut self,
        probe: &Probe,
        ring: &mut RingBuf<MapData>,
        returns: Option<&mut RingBuf<MapData>>,
    ) -> Result<()> {
        self.drain(ring)?;
        if let Some(returns) = returns {
            self.drain_returns(probe, ring, returns)?;
        }
        Ok(())
    }

    /// `--waits`: reported flushes that returned; sightings and wait maps are read first, so
    /// the site and what it waited for are known.
    pub(super) fn drain_returns(
        &mut self,
        probe: &Probe,
        ring: &mut RingBuf<MapData>,
        returns: &mut RingBuf<MapData>,
    ) -> Result<()> {
        let mut got = Vec::new();
        while let Some(item) = returns.next() {
            let size = size_of::<monitor_ebpf::Returned>();
            if item.len() >= size {
                got.push(bytemuck::pod_read_unaligned::<monitor_ebpf::Returned>(
                    &item[..size],
                ));
            }
        }
        if got.is_empty() {
            return Ok(());
        }
        self.drain(ring)?;
        self.refresh_waits(probe)?;
        for r in got {
            if let Some(site) = self.sites.by_key(&r.key) {
                let site = site.clone();
                self.writer
                    .submit(Box::new(move |rep| rep.returned(&site, r.tid, r.wait_ns)))?;
            }
        }
        Ok(())
    }

    /// Flushes at call sites the ignore list does not cover.
    pub(super) fn offending(&self) -> u64 {
        let sites = self.sites.by_count();
        sites
            .iter()
            .filter(|s| !self.ignore.covers(s))
            .map(|s| s.count)
            .sum()
    }

    pub(super) fn snapshot(&mut self, lost: Lost) -> metrics::Snapshot {
        let sites = self.sites.by_count().into_iter().map(|s| {
            let q = &self.queues[s.queue()];
            let caller = s.caller();
            metrics::SiteMetric {
                wq: q.label().to_owned(),
                caller: caller
                    .and_then(|c| c.func.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                module: caller
                    .and_then(|c| c.module.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                count: s.count,
                waits: s.waits.as_ref().map(|w| w.stats),
                stuck: self.stuck.as_ref().map(|_| u64::from(s.stuck)),
            }
        });
        let sites = sites.collect();
        let static_sites = self.coverage.as_mut().map(|c| {
            c.sites()
                .iter()
                .map(|s| metrics::StaticSiteMetric {
                    wq: s.wq.clone(),
                    caller: s.caller.clone(),
                    module: s.module.clone(),
                })
                .collect()
        });
        metrics::Snapshot {
            sites,
            lost: lost.events,
            missed: lost.missed,
            static_sites,
        }
    }
}

/// Once per run: a caller that reads as another tracer's return trampoline means the real one
/// is hidden from the probe while that tracer is attached.
pub(super) fn warn_hidden_caller(caller: Option<&symbols::Frame>, warned: &mut bool) {
    let Some(c) = caller.filter(|c| c.is_return_trampoline()) else {
        return;
    };
    if !std::mem::replace(warned, true) {
        eprintln!(
            "wqflush: warning: a call site reads as {c}: another tracer's return probe on the \
             flush function (a kretprobe: bpftrace, perf, a second wqflush with --waits) hides \
             the caller while it is attached (seen on 5.10); stop that tracer"
        );
    }
}

/// What watching writes to besides stdout, all checked before the probe is attached.
pub(super) struct Sinks {
    pub(super) ignore: IgnoreList,
    pub(super) kmsg: Option<Kmsg>,
    pub(super) metrics: Option<tokio::net::TcpListener>,
    pub(super) sources: FrameSources,
}

pub(super) async fn open_sinks(opts: &Options) -> Result<Sinks> {
    let ignore = match &opts.ignore {
        Some(path) => {
            let list = IgnoreList::load(path)?;
            eprintln!(
                "wqflush: {} ignore entries from {}",
                list.len(),
                path.display()
            );
            list
        }
        None => IgnoreList::default(),
    };
    let kmsg = if opts.kmsg { Some(Kmsg::open()?) } else { None };
    let metrics = match opts.metrics {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    Ok(Sinks {
        ignore,
        kmsg,
        metrics,
        sources: FrameSources::new(opts.debuginfo.dirs.clone())?,
    })
}

pub(super) fn reporter(opts: &Options, target: &Target, sinks: Sinks) -> Reporter<std::io::Stdout> {
    let reporter = Reporter::new(std::io::stdout(), opts.json, target.queues.clone())
        .with_waits(opts.waits)
        .with_ignore(sinks.ignore)
        .with_kernel(&target.release)
        .with_sources(sinks.sources);
    match sinks.kmsg {
        Some(kmsg) => reporter.with_kmsg(kmsg),
        None => reporter,
    }
}

/// The exact counts, the summary, and what the kernel log did not get.
pub(super) fn finish<W: Write + Send + 'static>(state: &mut State<W>, probe: &Probe) -> Result<()> {
    let lost = state.refresh_counts(probe)?;
    state.lost = lost;
    let mut reporter = state.writer.finish()?;
    if let Some(coverage) = &mut state.coverage {
        let reached = coverage.finish(&state.sites, &state.queues);
        reporter.set_reached(reached);
    }
    reporter.summary(&state.sites, lost)?;
    let suppressed = reporter.kmsg_suppressed();
    if suppressed > 0 {
        eprintln!(
            "wqflush: --kmsg: {suppressed} warning(s) not written to the kernel log (rate limit)"
        );
    }
    Ok(())
}
