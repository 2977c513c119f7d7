//! What the guest recorded: `<metric> <round> <config> <value>` lines, a value being a number,
//! two numbers (bpftrace's count and stacks), or a wqflush summary record (JSON).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// Everything the guest recorded: (metric, config) -> values by round.
pub struct Results {
    values: BTreeMap<(String, String), Vec<(u32, String)>>,
}

/// The fields of wqflush's summary record the bench reads (docs/json.md).
#[derive(Deserialize)]
pub struct Summary {
    pub sites: Vec<SummarySite>,
    pub lost: u64,
    pub uncounted: u64,
    pub missed: Option<u64>,
}

#[derive(Deserialize)]
pub struct SummarySite {
    pub caller: Option<String>,
    pub count: u64,
}

impl Results {
    pub fn parse(text: &str) -> Result<Self> {
        let mut values: BTreeMap<(String, String), Vec<(u32, String)>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.splitn(4, ' ');
            let (Some(metric), Some(round), Some(config), Some(value)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                bail!("bad result line {line:?}");
            };
            let round = round
                .parse()
                .with_context(|| format!("bad round in {line:?}"))?;
            values
                .entry((metric.to_owned(), config.to_owned()))
                .or_default()
                .push((round, value.to_owned()));
        }
        Ok(Results { values })
    }

    fn values(&self, metric: &str, config: &str) -> impl Iterator<Item = &(u32, String)> {
        self.values
            .get(&(metric.to_owned(), config.to_owned()))
            .into_iter()
            .flatten()
    }

    /// Numeric values of `metric` for `config`, by round.
    pub fn nums(&self, metric: &str, config: &str) -> BTreeMap<u32, f64> {
        self.values(metric, config)
            .filter_map(|(r, v)| Some((*r, v.split_whitespace().next()?.parse().ok()?)))
            .collect()
    }

    /// Values of `metric` for `config` that are two numbers (a time and a count), by round.
    pub fn pairs(&self, metric: &str, config: &str) -> BTreeMap<u32, (f64, f64)> {
        self.values(metric, config)
            .filter_map(|(r, v)| {
                let mut it = v.split_whitespace().filter_map(|x| x.parse().ok());
                Some((*r, (it.next()?, it.next()?)))
            })
            .collect()
    }

    /// The distinct values of `metric` for `config` as recorded, in order (a word such as the
    /// attach method `--attach auto` chose).
    pub fn words(&self, metric: &str, config: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, v) in self.values(metric, config) {
            if !out.contains(&v.as_str()) {
                out.push(v);
            }
        }
        out
    }

    /// The value of `metric` in the round that measured it only once (`none`, round 0).
    pub fn once(&self, metric: &str) -> Option<f64> {
        self.nums(metric, "none").values().next().copied()
    }

    /// Per-round ratios `a / b` of one metric (runs of the same round pair up).
    pub fn ratios(&self, metric: &str, a: &str, b: &str) -> Vec<f64> {
        let (a, b) = (self.nums(metric, a), self.nums(metric, b));
        a.iter()
            .filter_map(|(r, x)| Some(x / b.get(r).filter(|y| **y > 0.0)?))
            .collect()
    }

    /// wqflush's summary records of `phase` (`flood`, `storm`, ...) for `config`, by round.
    pub fn summaries(&self, phase: &str, config: &str) -> Result<BTreeMap<u32, Summary>> {
        self.values(&format!("{phase}_summary"), config)
            .map(|(r, v)| {
                let summary = serde_json::from_str(v)
                    .with_context(|| format!("{phase} summary of {config}, round {r}"))?;
                Ok((*r, summary))
            })
            .collect()
    }

    /// round -> (flushes counted at `func`, distinct sites there) for `config` in `phase`: from
    /// wqflush's summary, or from bpftrace's map (`<phase>_bt`: count and stacks).
    pub fn counted(&self, config: &str, phase: &str, func: &str) -> BTreeMap<u32, (u64, u64)> {
        let mut out: BTreeMap<u32, (u64, u64)> = self
            .values(&format!("{phase}_bt"), config)
            .filter_map(|(r, s)| {
                let mut it = s.split_whitespace().filter_map(|x| x.parse().ok());
                Some((*r, (it.next()?, it.next()?)))
            })
            .collect();
        for (r, summary) in self.summaries(phase, config).unwrap_or_default() {
            let at: Vec<_> = summary
                .sites
                .iter()
                .filter(|s| s.caller.as_deref() == Some(func))
                .collect();
            out.insert(r, (at.iter().map(|s| s.count).sum(), at.len() as u64));
        }
        out
    }

    /// Whether `config` counted, in every round, exactly what the module fired in `phase`.
    pub fn exact(&self, config: &str, phase: &str, func: &str) -> bool {
        let fired = self.nums(&format!("{phase}_module"), config);
        let counted = self.counted(config, phase, func);
        !fired.is_empty()
            && fired
                .iter()
                .all(|(r, f)| counted.get(r).is_some_and(|x| x.0 as f64 == *f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_pairs_and_summaries() {
        let text = r#"bench_ns 1 none 1000
bench_ns 1 fentry 1500
flood_bt 1 bpftrace 7 1
flood_module 1 fentry 7
flood_summary 1 fentry {"type":"summary","sites":[{"wq":"system_wq","caller":"f","count":7},{"wq":"system_wq","caller":null,"count":1}],"flushes":8,"lost":0,"uncounted":0,"missed":null}
"#;
        let r = Results::parse(text).unwrap();
        assert_eq!(r.ratios("bench_ns", "fentry", "none"), [1.5]);
        assert_eq!(r.counted("bpftrace", "flood", "f")[&1], (7, 1));
        assert_eq!(r.counted("fentry", "flood", "f")[&1], (7, 1));
        assert!(r.exact("fentry", "flood", "f"));
        let s = &r.summaries("flood", "fentry").unwrap()[&1];
        assert_eq!((s.lost, s.uncounted, s.missed), (0, 0, None));
        assert!(Results::parse("short line").is_err());
    }
}
