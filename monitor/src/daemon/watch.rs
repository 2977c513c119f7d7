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
use super::state::{State, finish, open_sinks};
use crate::{
    kernel::{
        kallsyms::Kallsyms,
        target::{self, QueueSource, Target},
    },
    output::{http, metrics},
    probe::{self, Method, Probe},
    symbols::Symbolizer,
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
    let (ks, target, mut probe) = attach(opts)?;
    // From here on, waits as the probe attached them (`--waits` where a method could track them).
    let opts = &opts.with_waits(probe.waits);
    let (mut ring, mut loads) = rings(&mut probe.ebpf)?;
    let mut returns = returns_ring(&mut probe, opts.waits)?;
    crate::timing::mark("ring buffers and module_load tracepoint ready");
    let mut state = State::new(opts, &target, Symbolizer::new(ks), sinks)?;
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
    state.drain_all(
        &probe,
        ring.get_mut(),
        returns.as_mut().map(AsyncFd::get_mut),
    )?;
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

/// Reads what the probe needs of the kernel and attaches it; the symbol table comes back for the
/// reports, and aya's parsed BTF is dropped.
fn attach(opts: &Options) -> Result<(Kallsyms, Target, Probe)> {
    let ahead = target::Ahead {
        fentry_only: opts.attach.methods() == [Method::Fentry],
        lacks_fprobe: (opts.attach == probe::Attach::Auto).then_some(probe::lacks_fprobe),
    };
    let kernel = target::read(ahead);
    let (ks, mut target) = kernel.target(opts.match_mode)?;
    let probe = probe::attach(&target, opts.attach, opts.waits_asked())?;
    target.forget_btf();
    crate::timing::mark("probe attached");
    Ok((ks, target, probe))
}

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

fn metrics_info(target: &Target, method: Method) -> metrics::Info {
    metrics::Info {
        attach: method.to_string(),
        kernel: target.release.clone(),
        matched_by: target.queue_source.matched_by().to_owned(),
        kallsyms_mode: if target.by_name { "name" } else { "address" }.to_owned(),
    }
}

fn announce(target: &Target, method: Method, ready_file: Option<&PathBuf>) -> Result<()> {
    let how = if target.by_name {
        "by name"
    } else {
        "by address"
    };
    // From kallsyms is the usual case and goes unsaid; the kernel image is named.
    let from = match &target.queue_source {
        QueueSource::KernelImage { path, .. } => {
            format!(", from the kernel image {}", path.display())
        }
        _ => String::new(),
    };
    eprintln!(
        "wqflush: attached ({method} on {}; {} system workqueues matched {how}{from})",
        target.function,
        target.queues.len()
    );
    if target.by_name {
        eprintln!(
            "wqflush: note: system queues are recognized by name ({}); a module's own queue \
             named like a system queue would be reported too",
            target.queue_source.describe()
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
    async fn run<W: Write + Send + 'static>(
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
