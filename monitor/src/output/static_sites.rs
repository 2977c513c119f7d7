//! `wqflush scan`'s output: a table of the static sites with the remedy, or one JSON object per
//! site and a summary (docs/json.md, "scan records").

use std::fmt::Write as _;

use serde::Serialize;

use crate::scan::{Scan, StaticSite};

/// What to do instead, said once under the table.
const REMEDY: &str = "Each such flush waits for every work item any code queued on that shared \
queue, and deadlocks when one of them needs what the flusher holds. Flush or cancel the work \
items the module queued itself (flush_work(), cancel_work_sync(), flush_delayed_work()), or give \
the module a queue of its own (alloc_workqueue()) and flush that.";

#[derive(Serialize)]
struct SiteRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    site: &'a StaticSite,
}

#[derive(Serialize)]
struct SummaryRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    files: usize,
    sites: usize,
    modules: usize,
    errors: usize,
}

/// One `static_site` line per site, then one `scan_summary` line.
pub fn json(scan: &Scan) -> String {
    let mut out = String::new();
    for site in &scan.sites {
        let record = SiteRecord {
            kind: "static_site",
            site,
        };
        out.push_str(&serde_json::to_string(&record).unwrap_or_default());
        out.push('\n');
    }
    let summary = SummaryRecord {
        kind: "scan_summary",
        files: scan.files,
        sites: scan.sites.len(),
        modules: scan.modules(),
        errors: scan.errors.len(),
    };
    out.push_str(&serde_json::to_string(&summary).unwrap_or_default());
    out.push('\n');
    out
}

/// The table, a count line, and the remedy when anything was found.
pub fn text(scan: &Scan) -> String {
    let mut out = String::new();
    let unread = match scan.errors.len() {
        0 => String::new(),
        n => format!(", {n} could not be read"),
    };
    if scan.sites.is_empty() {
        let _ = writeln!(
            out,
            "no function flushes a system workqueue ({} module files read{unread})",
            scan.files
        );
        return out;
    }
    let rows: Vec<[String; 5]> = scan.sites.iter().map(row).collect();
    let header = ["MODULE", "FUNCTION", "QUEUE", "RUNS AT", "SOURCE"].map(str::to_owned);
    let mut widths = [0; 5];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line = (0..5)
            .map(|i| format!("{:<w$}", r[i], w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "\n{} in {} {} a system workqueue ({} module files read{unread}).\n{REMEDY}",
        plural(scan.sites.len(), "function"),
        plural(scan.modules(), "module"),
        if scan.sites.len() == 1 {
            "flushes"
        } else {
            "flush"
        },
        scan.files
    );
    out
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn row(site: &StaticSite) -> [String; 5] {
    let queue = match &site.via {
        Some(var) => format!("{} (via {var})", site.wq),
        None => site.wq.clone(),
    };
    let runs_at = match site.section {
        crate::scan::Section::Init => "module init",
        crate::scan::Section::Exit => "module exit",
        crate::scan::Section::Text => "-",
    };
    let calls = if site.calls > 1 {
        format!(" ({} calls)", site.calls)
    } else {
        String::new()
    };
    [
        site.module.clone(),
        format!("{}{calls}", site.caller),
        queue,
        runs_at.to_owned(),
        site.source.clone().unwrap_or_else(|| "-".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Section;

    fn scan() -> Scan {
        let site = StaticSite {
            module: "foo".into(),
            caller: "foo_exit".into(),
            wq: "system_unbound_wq".into(),
            section: Section::Exit,
            via: Some("foo_wq".into()),
            source: Some("drivers/foo/foo.c:42".into()),
            file: "/lib/modules/r/foo.ko".into(),
            calls: 2,
        };
        Scan {
            sites: vec![site],
            files: 3,
            errors: vec!["/x.ko: not a 64-bit ELF object file".into()],
        }
    }

    #[test]
    fn json_has_one_record_per_site_and_a_summary() {
        let text = json(&scan());
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines.len(), 2);
        let site = &lines[0];
        assert_eq!(site["type"], "static_site");
        assert_eq!(site["section"], "exit");
        assert_eq!(site["via"], "foo_wq");
        assert_eq!(site["calls"], 2);
        let summary = &lines[1];
        assert_eq!(summary["type"], "scan_summary");
        assert_eq!(
            (&summary["files"], &summary["sites"], &summary["errors"]),
            (&3.into(), &1.into(), &1.into())
        );
    }

    #[test]
    fn text_names_the_site_the_variable_and_what_could_not_be_read() {
        let text = text(&scan());
        let row = text.lines().nth(1).expect("a row");
        for part in [
            "foo",
            "foo_exit (2 calls)",
            "system_unbound_wq (via foo_wq)",
            "module exit",
        ] {
            assert!(row.contains(part), "{part:?} in {row:?}");
        }
        assert!(text.contains("1 function in 1 module flushes a system workqueue (3 module files read, 1 could not be read)"), "{text}");
        let none = Scan {
            sites: Vec::new(),
            ..scan()
        };
        assert!(super::text(&none).starts_with("no function flushes"));
    }
}
