//! The text layouts: wqflush's own warning per call site, the kernel-log `WARN()` layout
//! (`--kmsg`), and the pieces the summary table and the stuck report share.

use crate::{
    kernel::queues::SystemQueue,
    output::kmsg,
    sites::{Site, SiteWaits},
    sources::frames::{self, FrameLines},
    symbols::Frame,
};

/// The remedy, from Tetsuo Handa's 2022 announcement to module maintainers.
pub const FIX_HINT: &str = "flush or cancel only the work items this code queued (flush_work(), \
    cancel_work_sync(), flush_delayed_work()), or queue them on a workqueue of its own \
    (alloc_workqueue() at init, destroy_workqueue() at exit) and flush that one";

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
pub(crate) fn waited_text(w: Option<&SiteWaits>) -> String {
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

pub(crate) fn queue_label(queues: &[SystemQueue], site: &Site) -> String {
    let kernel_name = site.first.as_ref().and_then(|f| f.wq_name.as_deref());
    queues[site.queue()].describe(kernel_name)
}

pub(crate) fn caller_text(site: &Site) -> String {
    site.caller()
        .map_or("an unknown function".to_owned(), |c| c.with_size())
}

pub(crate) fn call_trace(site: &Site, frames: &[Frame], lines: &[FrameLines]) -> String {
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
pub(crate) fn warning(
    queues: &[SystemQueue],
    site: &Site,
    frames: &[Frame],
    lines: &[FrameLines],
) -> String {
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
pub(crate) fn worker_text(queues: &[SystemQueue], site: &Site) -> String {
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
pub(crate) fn kernel_warning(
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
