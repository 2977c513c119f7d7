//! The daemon: attach, stream events into call sites and reports, stop on a signal, a deadline
//! or (for `check`) the end of the command, then print the summary.

use std::{ffi::OsString, io::Write, path::PathBuf, process::ExitStatus, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::{
    io::unix::AsyncFd,
    process::{Child, Command},
    signal::unix::{SignalKind, signal},
};

use super::options::Options;
use crate::{
    daemon::stuck::{self, StuckTracker},
    kernel::btf,
    kernel::queues,
    kernel::target::{self, Target},
    output::ignore::IgnoreList,
    output::kmsg::Kmsg,
    output::report::Reporter,
    output::{http, metrics},
    probe::unpreempted::Unpreempted,
    probe::{self, Method, Probe},
    sites::events::decode,
    sites::{Lost, Sites, events::c_string},
    sources::frames::FrameSources,
    symbols::{self, Symbolizer},
};

pub struct Outcome {
    pub flushes: u64,
    /// Flushes the kernel did not run the probe for (None: it keeps no count).
    pub missed: Option<u64>,
    pub end: End,
}

/// Why watching stopped.
pub enum End {
    /// A signal or --duration.
    Stopped,
    /// `check`'s command exited.
    Exited(ExitStatus),
    /// `check`'s command could not be started.
    NotStarted(String),
}

struct State<W: Write> {
    /// Ring buffer records handled so far.
    records: u64,
    /// The kernel's counters, read once a second into the same buffer (a fresh one each time
    /// left its pages resident after the heap was trimmed).
    counts: Vec<(monitor_ebpf::CountKey, u64)>,
    sym: Symbolizer,
    sites: Sites,
    reporter: Reporter<W>,
    queues: Vec<queues::SystemQueue>,
    /// Which miss counters the kernel keeps, once known.
    miss_counters: Option<btf::MissCounters>,
    /// What the kernel side lost by the last reading of its counters.
    lost: Lost,
    /// `--waits`: the kernel's wait maps, read with the counters.
    wait_stats: Vec<(monitor_ebpf::CountKey, monitor_ebpf::WaitStats)>,
    waited: Vec<(monitor_ebpf::WaitedKey, u64)>,
    /// `--waits`: flushes in flight past `--stuck-after`, and the work items running meanwhile.
    stuck: Option<StuckTracker>,
    flights: Vec<(u32, monitor_ebpf::InFlight)>,
    /// Whether the hidden-caller warning was printed (once is enough).
    warned_trampoline: bool,
}

impl State<std::io::Stdout> {
    /// Nothing seen yet; reports go to stdout and the sinks.
    fn new(opts: &Options, target: &Target, sym: Symbolizer, sinks: Sinks) -> Self {
        State {
            records: 0,
            counts: Vec::new(),
            sym,
            sites: Sites::default(),
            reporter: reporter(opts, target, sinks),
            queues: target.queues.clone(),
            miss_counters: None,
            lost: Lost::default(),
            wait_stats: Vec::new(),
            waited: Vec::new(),
            stuck: opts.waits.then(|| StuckTracker::new(opts.stuck_after)),
            flights: Vec::new(),
            warned_trampoline: false,
        }
    }
}

impl<W: Write> State<W> {
    fn on_flush(&mut self, bytes: &[u8]) -> Result<()> {
        self.records += 1;
        let flush = decode(bytes, self.queues.len())?;
        let mut frames = self.sym.frames(&flush.stack);
        symbols::skip_to_caller(&mut frames, flush.caller);
        // A new call site whose caller the current table does not name may be in a module
        // loaded since kallsyms was read (also where a departed module's names would fit it):
        // re-read if /proc/modules changed, and retry. (Re-reading for every new site would
        // cost seconds under a burst; a module gone meanwhile keeps its names.)
        let named = symbols::caller(&frames).is_some_and(|c| self.sym.names_now(c.addr));
        if !named && self.sites.is_new(flush.queue, &frames) && self.sym.refresh()? {
            frames = self.sym.frames(&flush.stack);
            symbols::skip_to_caller(&mut frames, flush.caller);
        }
        if let Some((site, frames)) = self.sites.record(flush, frames) {
            warn_hidden_caller(site.caller(), &mut self.warned_trampoline);
            self.reporter.first_sighting(site, frames)?;
        }
        self.sites.forget_stacks();
        Ok(())
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(item) = ring.next() {
            self.on_flush(&item)?;
        }
        Ok(())
    }

    /// Takes the kernel's exact counts; returns what was lost.
    fn refresh_counts(&mut self, probe: &Probe) -> Result<Lost> {
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
    fn check_stuck(&mut self, probe: &mut Probe) -> Result<()> {
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
    fn report_stuck(
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
        if site.is_some_and(|s| self.reporter.is_ignored(s)) {
            return Ok(());
        }
        let wq_name = site
            .and_then(|s| s.first.as_ref())
            .and_then(|f| f.wq_name.as_deref());
        let caller = site.and_then(|s| s.caller()).or(Some(&caller));
        self.reporter.stuck(&crate::output::report::StuckFlush {
            queue: flight.key.queue as usize,
            wq_name,
            caller,
            pid: tid,
            comm: &comm,
            waiting_ns: now.saturating_sub(flight.start_ns),
            running: &running,
        })
    }

    /// `--waits`: the kernel's wait figures, onto the sites.
    fn refresh_waits(&mut self, probe: &Probe) -> Result<()> {
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

    /// `--waits`: reported flushes that returned; sightings and wait maps are read first, so
    /// the site and what it waited for are known.
    fn drain_returns(
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
                self.reporter.returned(site, r.tid, r.wait_ns)?;
            }
        }
        Ok(())
    }

    /// Flushes at call sites the ignore list does not cover.
    fn offending(&self) -> u64 {
        let sites = self.sites.by_count();
        sites
            .iter()
            .filter(|s| !self.reporter.is_ignored(s))
            .map(|s| s.count)
            .sum()
    }

    fn snapshot(&self, lost: Lost) -> metrics::Snapshot {
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
        metrics::Snapshot {
            sites: sites.collect(),
            lost: lost.events,
            missed: lost.missed,
        }
    }
}

/// Once per run: a caller that reads as another tracer's return trampoline means the real one
/// is hidden from the probe while that tracer is attached.
fn warn_hidden_caller(caller: Option<&symbols::Frame>, warned: &mut bool) {
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
struct Sinks {
    ignore: IgnoreList,
    kmsg: Option<Kmsg>,
    metrics: Option<tokio::net::TcpListener>,
    sources: FrameSources,
}

async fn open_sinks(opts: &Options) -> Result<Sinks> {
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

/// Watches until stopped; with `command`, runs it once the probe is live and stops when it ends.
pub async fn run(opts: &Options, command: Option<&[OsString]>) -> Result<Outcome> {
    // Before anything can announce readiness: a SIGTERM that arrives between the ready file and
    // the event loop must still end in a summary, not in the default action.
    let mut signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
    };
    let mut sinks = open_sinks(opts).await?;
    let listener = sinks.metrics.take();
    let kernel = target::read(opts.attach.methods() == [Method::Fentry]);
    let (ks, mut target) = kernel.target(opts.match_mode)?;
    let mut probe = probe::attach(&target, opts.attach, opts.waits)?;
    target.forget_btf();
    crate::timing::mark("probe attached");
    let (mut ring, mut loads) = rings(&mut probe.ebpf)?;
    let mut returns = returns_ring(&mut probe, opts.waits)?;
    crate::timing::mark("ring buffers and module_load tracepoint ready");
    let mut state = State::new(opts, &target, Symbolizer::new(ks), sinks);
    let shared = metrics::Shared::default();
    let server = listener.map(|listener| {
        let info = metrics_info(&target, probe.method);
        tokio::spawn(http::serve(listener, info, shared.clone()))
    });
    release_free_memory();
    announce(&target, probe.method, opts.ready_file.as_ref())?;
    crate::timing::mark("announced");
    let mut looped = Loop {
        probe: &mut probe,
        shared: server.is_some().then_some(&shared),
        duration: opts.duration,
    };
    let end = match command.map(spawn) {
        Some(Err(e)) => End::NotStarted(format!("{e:#}")),
        child => {
            let child = child.and_then(Result::ok);
            looped
                .run(
                    &mut ring,
                    &mut loads,
                    &mut returns,
                    &mut signals,
                    &mut state,
                    child,
                )
                .await?
        }
    };
    state.drain(ring.get_mut())?;
    if let Some(returns) = &mut returns {
        state.drain_returns(&probe, ring.get_mut(), returns.get_mut())?;
    }
    finish(&mut state, &probe)?;
    if let Some(server) = server {
        server.abort();
    }
    Ok(Outcome {
        flushes: state.offending(),
        missed: state.lost.missed,
        end,
    })
}

type Ring = AsyncFd<RingBuf<MapData>>;

/// `--waits`: the ring buffer of reported flushes that returned.
fn returns_ring(probe: &mut Probe, waits: bool) -> Result<Option<Ring>> {
    if !waits {
        return Ok(None);
    }
    let returns = probe::maps::returns(&mut probe.ebpf)?;
    // SAFETY: as in rings().
    let ring = unsafe { AsyncFd::register(returns) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    Ok(Some(ring))
}

/// Start-up parses the kernel's BTF three times (for struct offsets, and twice in aya) and reads
/// all of kallsyms, then drops most of it; a burst of new call sites leaves freed stacks and
/// outgrown tables behind. glibc keeps freed heap unless asked, and a long-running daemon should
/// not sit on it: this runs after attaching and after each second that brought records or sites.
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// The first-sighting ring buffer, and module-load notifications when the kernel allows them.
fn rings(ebpf: &mut Ebpf) -> Result<(Ring, Option<Ring>)> {
    let events = probe::maps::events(ebpf)?;
    // SAFETY: a ring buffer owns its fd, which stays open until the AsyncFd drops it.
    let ring = unsafe { AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    let loads = probe::maps::module_loads(ebpf).inspect_err(|e| {
        eprintln!(
            "wqflush: note: no module_load tracepoint ({e:#}); modules loaded from now on are \
             read when they first flush"
        );
    });
    // SAFETY: as above.
    let loads = loads
        .ok()
        .and_then(|l| unsafe { AsyncFd::register(l) }.ok());
    Ok((ring, loads))
}

fn reporter(opts: &Options, target: &Target, sinks: Sinks) -> Reporter<std::io::Stdout> {
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
fn finish<W: Write>(state: &mut State<W>, probe: &Probe) -> Result<()> {
    let lost = state.refresh_counts(probe)?;
    state.lost = lost;
    state.reporter.summary(&state.sites, lost)?;
    let suppressed = state.reporter.kmsg_suppressed();
    if suppressed > 0 {
        eprintln!(
            "wqflush: --kmsg: {suppressed} warning(s) not written to the kernel log (rate limit)"
        );
    }
    Ok(())
}

fn metrics_info(target: &Target, method: Method) -> metrics::Info {
    metrics::Info {
        attach: method.to_string(),
        kernel: target.release.clone(),
        kallsyms_mode: if target.by_name { "name" } else { "address" }.to_owned(),
    }
}

fn announce(target: &Target, method: Method, ready_file: Option<&PathBuf>) -> Result<()> {
    let how = if target.by_name {
        "by name"
    } else {
        "by address"
    };
    eprintln!(
        "wqflush: attached ({method} on {}; {} system workqueues matched {how})",
        target.function,
        target.queues.len()
    );
    if target.by_name {
        eprintln!(
            "wqflush: note: system queues are recognized by name (no system_*wq variables in \
             kallsyms, or --match name); a module's own queue named like a system queue would be \
             reported too"
        );
    }
    if let Some(path) = ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("creating the ready file {}", path.display()))?;
    }
    Ok(())
}

fn spawn(command: &[OsString]) -> Result<Child> {
    let (program, args) = command.split_first().context("no command given")?;
    Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("cannot run {}", program.to_string_lossy()))
}

/// SIGINT and SIGTERM both stop watching and print the summary.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// The event loop's fixed inputs.
struct Loop<'a> {
    /// Mutable for `--waits`' task iterator, which is attached anew for each run.
    probe: &'a mut Probe,
    /// The metrics server's copy of the sites, when there is a server.
    shared: Option<&'a metrics::Shared>,
    duration: Option<Duration>,
}

impl Loop<'_> {
    /// Streams events until a signal, the deadline or the command's exit; keeps the metrics
    /// snapshot current once a second.
    async fn run<W: Write>(
        &mut self,
        ring: &mut Ring,
        loads: &mut Option<Ring>,
        returns: &mut Option<Ring>,
        signals: &mut Signals,
        state: &mut State<W>,
        mut child: Option<Child>,
    ) -> Result<End> {
        let deadline = tokio::time::sleep(self.duration.unwrap_or(Duration::MAX / 4));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut at_trim = (0, 0);
        loop {
            tokio::select! {
                // Module loads first: their symbols must be read before they can go away.
                biased;
                loaded = module_loaded(loads) => {
                    loaded?;
                    state.sym.refresh()?;
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    state.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                guard = readable(returns) => {
                    let mut guard = guard?;
                    state.drain_returns(self.probe, ring.get_mut(), guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    // Modules that came or went without a module_load notification (the
                    // tracepoint refused, or a load and unload between two reads) are read
                    // here at the latest: /proc/modules is a small file.
                    state.sym.refresh()?;
                    // Sightings first, so counters rarely precede their call site's stack.
                    state.drain(ring.get_mut())?;
                    let lost = state.refresh_counts(self.probe)?;
                    state.check_stuck(self.probe)?;
                    if let Some(shared) = self.shared {
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = state.snapshot(lost);
                    }
                    let activity = (state.records, state.sites.len());
                    if activity != at_trim {
                        at_trim = activity;
                        release_free_memory();
                    }
                }
                _ = signals.int.recv() => return Ok(End::Stopped),
                _ = signals.term.recv() => return Ok(End::Stopped),
                _ = &mut deadline, if self.duration.is_some() => return Ok(End::Stopped),
                status = wait(&mut child) => return Ok(End::Exited(status?)),
            }
        }
    }
}

/// `--waits`' ring buffer once readable; never without `--waits`.
async fn readable(
    fd: &mut Option<Ring>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match fd {
        Some(fd) => fd.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Consumes module-load notifications; never returns without the tracepoint.
async fn module_loaded(loads: &mut Option<Ring>) -> std::io::Result<()> {
    let Some(fd) = loads else {
        return std::future::pending().await;
    };
    let mut guard = fd.readable_mut().await?;
    while guard.get_inner_mut().next().is_some() {}
    guard.clear_ready();
    Ok(())
}

async fn wait(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}
