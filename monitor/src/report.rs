//! What the user reads: a kernel-style warning per new call site and a summary at the end, as
//! text or as JSON lines (one object per line; the contract is in README.md).

use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    queues::SystemQueue,
    sites::{Site, Sites},
};

pub struct Reporter<W: Write> {
    out: W,
    json: bool,
    queues: Vec<SystemQueue>,
}

#[derive(Serialize)]
struct SiteRecord<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    /// The pointer variable, e.g. "system_long_wq"; null when matched by name only.
    wq: Option<&'a str>,
    wq_name: Option<&'a str>,
    matched_by: &'static str,
    caller: Option<&'a str>,
    call_site: String,
    module: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<Vec<String>>,
    pid: u32,
    tgid: u32,
    comm: &'a str,
    cpu: u32,
    worker: Option<bool>,
    wq_addr: String,
    count: u64,
}

#[derive(Serialize)]
struct SummaryRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sites: Vec<SiteRecord<'a>>,
    flushes: u64,
    lost: u64,
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W, json: bool, queues: Vec<SystemQueue>) -> Self {
        Reporter { out, json, queues }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Reports a call site the first time it flushes.
    pub fn first_sighting(&mut self, site: &Site) -> Result<()> {
        if self.json {
            let rec = record(&self.queues, site, Some("flush"), true);
            line(&mut self.out, &rec)?;
        } else {
            self.warning(site)?;
        }
        self.out.flush().context("writing the report")
    }

    /// Reports every site, highest count first, and the totals.
    pub fn summary(&mut self, sites: &Sites, lost: u64) -> Result<()> {
        let flushes = sites.total();
        if self.json {
            let sites = sites
                .by_count()
                .into_iter()
                .map(|s| record(&self.queues, s, None, false))
                .collect();
            line(
                &mut self.out,
                &SummaryRecord {
                    kind: "summary",
                    sites,
                    flushes,
                    lost,
                },
            )?;
        } else {
            self.table(sites, lost)?;
        }
        self.out.flush().context("writing the report")
    }
}

fn record<'a>(
    queues: &'a [SystemQueue],
    site: &'a Site,
    kind: Option<&'static str>,
    stack: bool,
) -> SiteRecord<'a> {
    let q = &queues[site.queue];
    let caller = site.caller();
    let f = &site.first;
    SiteRecord {
        kind,
        wq: q.var.as_deref(),
        wq_name: f.wq_name.as_deref().or(q.name.as_deref()),
        matched_by: if f.by_name { "name" } else { "address" },
        caller: caller.and_then(|c| c.func.as_deref()),
        call_site: caller.map(ToString::to_string).unwrap_or_default(),
        module: caller.and_then(|c| c.module.as_deref()),
        stack: stack.then(|| site.frames.iter().map(ToString::to_string).collect()),
        pid: f.pid,
        tgid: f.tgid,
        comm: &f.comm,
        cpu: f.cpu,
        worker: f.worker,
        wq_addr: format!("{:#x}", f.wq),
        count: site.count,
    }
}

impl<W: Write> Reporter<W> {
    fn queue_label(&self, site: &Site) -> String {
        let q = &self.queues[site.queue];
        match (&q.var, site.first.wq_name.as_ref().or(q.name.as_ref())) {
            (Some(v), Some(n)) => format!("{v} ({n})"),
            (Some(v), None) => v.clone(),
            (None, Some(n)) => format!("\"{n}\" (matched by name)"),
            (None, None) => "?".to_owned(),
        }
    }

    fn warning(&mut self, site: &Site) -> Result<()> {
        let caller = site
            .caller()
            .map_or("an unknown function".to_owned(), |c| c.with_size());
        let f = &site.first;
        let worker = match f.worker {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        let mut text = format!(
            "WARNING: wqflush: flush of system workqueue {} from {caller}\n\
             comm: {} pid: {} tgid: {} cpu: {} workqueue worker: {worker}\nCall Trace:\n",
            self.queue_label(site),
            f.comm,
            f.pid,
            f.tgid,
            f.cpu
        );
        for frame in &site.frames {
            text.push_str(&format!(" {}\n", frame.with_size()));
        }
        if let Some(err) = f.stack_error {
            text.push_str(&format!(
                " (no stack: bpf_get_stack failed with errno {err})\n"
            ));
        }
        write!(self.out, "{text}").context("writing the report")
    }

    fn table(&mut self, sites: &Sites, lost: u64) -> Result<()> {
        let mut text = format!(
            "wqflush: {} call site(s), {} flush(es) of system workqueues, {lost} event(s) lost\n",
            sites.len(),
            sites.total()
        );
        if sites.len() > 0 {
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
            text.push_str(&format!(
                "{:>10}  {:<40}  {call_site}\n",
                site.count,
                self.queue_label(site)
            ));
        }
        write!(self.out, "{text}").context("writing the report")
    }
}

fn line(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value)?;
    writeln!(out, "{text}").context("writing the report")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{decode, encode, sample_event},
        kallsyms::Kallsyms,
        symbolize::symbolize,
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
        let mut r = Reporter::new(Vec::new(), true, queues());
        r.first_sighting(sites.by_count()[0]).unwrap();
        let v = &lines(r.into_inner())[0];
        assert_eq!(v["type"], "flush");
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

    #[test]
    fn json_summary_has_counts_and_lost() {
        let mut r = Reporter::new(Vec::new(), true, queues());
        r.summary(&sites(3), 2).unwrap();
        let v = &lines(r.into_inner())[0];
        assert_eq!(v["type"], "summary");
        assert_eq!(v["sites"][0]["count"], 3);
        assert_eq!(v["sites"][0]["wq"], "system_long_wq");
        assert!(v["sites"][0].get("stack").is_none());
        assert_eq!(
            (v["flushes"].as_u64(), v["lost"].as_u64()),
            (Some(3), Some(2))
        );
    }

    #[test]
    fn text_warning_looks_like_a_kernel_warning() {
        let sites = sites(1);
        let mut r = Reporter::new(Vec::new(), false, queues());
        r.first_sighting(sites.by_count()[0]).unwrap();
        r.summary(&sites, 0).unwrap();
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
        assert!(r.summary(&sites(1), 0).is_err());
    }
}
