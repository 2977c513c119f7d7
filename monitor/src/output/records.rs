//! The JSON records, one object per line: `flush`, `waited`, `stuck` and `summary` (the
//! contract is docs/json.md; the field names and their order are what users parse).

use std::{io::Write, sync::Arc};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    kernel::{module_versions::Versions, queues::SystemQueue},
    output::text::FIX_HINT,
    scan::Reached,
    sites::{Site, SiteWaits},
    sources::frames::SourceEntry,
    symbols::Frame,
};

/// `--waits`: a work function that ran on the flushed queue while a flush from the site waited.
#[derive(Serialize)]
pub(crate) struct WaitedFor<'a> {
    pub(crate) function: Option<&'a str>,
    pub(crate) module: Option<&'a str>,
    pub(crate) count: u64,
}

pub(crate) fn waited_for(w: Option<&SiteWaits>) -> Vec<WaitedFor<'_>> {
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
pub(crate) struct WaitedRecord<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) kernel: Arc<str>,
    pub(crate) wq: Option<&'a str>,
    pub(crate) caller: Option<&'a str>,
    pub(crate) call_site: String,
    pub(crate) module: Option<&'a str>,
    pub(crate) pid: u32,
    pub(crate) wait_ns: u64,
    pub(crate) waited_for: Vec<WaitedFor<'a>>,
}

/// `--waits --stuck-after`: a work item running on the stuck flush's queue.
#[derive(Serialize)]
pub(crate) struct RunningItem<'a> {
    pub(crate) function: Option<&'a str>,
    pub(crate) module: Option<&'a str>,
    /// The worker running it.
    pub(crate) pid: u32,
}

/// `--waits --stuck-after`: a flush still waiting.
#[derive(Serialize)]
pub(crate) struct StuckRecord<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) kernel: Arc<str>,
    pub(crate) wq: Option<&'a str>,
    pub(crate) wq_name: Option<&'a str>,
    pub(crate) caller: Option<&'a str>,
    pub(crate) call_site: String,
    pub(crate) module: Option<&'a str>,
    pub(crate) pid: u32,
    pub(crate) comm: &'a str,
    pub(crate) waiting_ns: u64,
    pub(crate) running: Vec<RunningItem<'a>>,
}

#[derive(Serialize)]
pub(crate) struct SiteRecord<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    /// The release, on a flush record (the summary has it once for all its sites).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kernel: Option<Arc<str>>,
    /// The pointer variable, e.g. "system_long_wq"; null when matched by name only.
    pub(crate) wq: Option<&'a str>,
    pub(crate) wq_name: Option<&'a str>,
    pub(crate) matched_by: &'static str,
    pub(crate) caller: Option<&'a str>,
    pub(crate) call_site: String,
    pub(crate) module: Option<&'a str>,
    pub(crate) module_version: Option<Arc<str>>,
    pub(crate) module_srcversion: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stack: Option<Vec<String>>,
    /// `file:line` of the flush call in the caller (of the innermost inlined level), or null.
    pub(crate) source: Option<String>,
    /// (`flush` only) the stack with its source lines, one entry per inline level; null when
    /// no frame has debug info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stack_source: Option<Option<Vec<SourceEntry>>>,
    // The task of the first sighting; null when that event was lost (ring buffer full).
    pub(crate) pid: Option<u32>,
    pub(crate) tgid: Option<u32>,
    pub(crate) comm: Option<&'a str>,
    pub(crate) cpu: Option<u32>,
    pub(crate) worker: Option<bool>,
    /// For a worker: the queue of the work item it runs, and whether that is the queue it
    /// flushes (the flush then waits for itself).
    pub(crate) worker_wq: Option<&'a str>,
    pub(crate) worker_wq_name: Option<&'a str>,
    pub(crate) deadlock: Option<bool>,
    pub(crate) wq_addr: Option<String>,
    /// CLOCK_MONOTONIC nanoseconds of the first sighting.
    pub(crate) time_ns: Option<u64>,
    pub(crate) count: u64,
    pub(crate) ignored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hint: Option<&'static str>,
    /// `--waits` only (absent without): flushes that returned, their summed and longest wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wait_ns_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wait_ns_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waited_for: Option<Vec<WaitedFor<'a>>>,
    /// `--waits` only: its flushes reported stuck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stuck: Option<u64>,
}

impl<'a> SiteRecord<'a> {
    pub(crate) fn with_waits(mut self, site: &'a Site) -> Self {
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
pub(crate) struct SummaryRecord<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) kernel: Arc<str>,
    pub(crate) sites: Vec<SiteRecord<'a>>,
    pub(crate) flushes: u64,
    /// First sightings the ring buffer had no room for (their flushes are counted).
    pub(crate) lost: u64,
    /// Flushes not counted because the kernel's counter map was full.
    pub(crate) uncounted: u64,
    /// Flushes the kernel did not run the probe for, by its own counters; null where this
    /// kernel keeps no such count for the method in use.
    pub(crate) missed: Option<u64>,
    /// `--waits` only: offending flushes whose wait was not tracked (a queue's 4 slots or the
    /// in-flight table full) plus work items not counted (that table full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waits_lost: Option<u64>,
    /// `--waits` only: flushes past --stuck-after whose task had left the flush (the kernel did
    /// not run the exit probe for them); never reported as stuck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exits_missed: Option<u64>,
    /// `--scan` only: the loaded modules' static sites, each with whether it flushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) static_sites: Option<&'a [Reached]>,
}

pub(crate) fn record<'a>(
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

pub(crate) fn line(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value)?;
    writeln!(out, "{text}").context("writing the report")
}
