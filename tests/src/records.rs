//! What the tests read back from a guest: wqflush's JSON records (contract in docs/json.md) and the
//! test module's own counts.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::VmRun;

/// Every line of `section` as a JSON record.
pub fn records(run: &VmRun, section: &str) -> Result<Vec<Value>> {
    run.section(section)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{section}: not JSON: {l:?}")))
        .collect()
}

/// The lines of `text` that are JSON records (where stderr is mixed in, as in `emit`).
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The summary record, which must be the last one.
pub fn summary(records: &[Value]) -> Result<&Value> {
    let last = records.last().context("no records")?;
    ensure!(
        last["type"] == "summary",
        "the last record is no summary: {last}"
    );
    Ok(last)
}

/// The summary's sites whose caller is `caller`.
pub fn sites<'a>(summary: &'a Value, caller: &str) -> Vec<&'a Value> {
    let all = summary["sites"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    all.iter().filter(|s| s["caller"] == caller).collect()
}

/// The flushes the summary counts for `caller`, over all its sites.
pub fn count(summary: &Value, caller: &str) -> u64 {
    sites(summary, caller)
        .iter()
        .filter_map(|s| s["count"].as_u64())
        .sum()
}

/// The `flush` records (first sightings) whose caller is `caller`.
pub fn flushes<'a>(records: &'a [Value], caller: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "flush" && r["caller"] == caller)
        .collect()
}

/// `cat /proc/wqflush_test`: trigger -> flushes fired.
pub fn module_counts(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let (name, n) = line.split_once(' ').context("count line without space")?;
        counts.insert(name.to_string(), n.trim().parse()?);
    }
    Ok(counts)
}
