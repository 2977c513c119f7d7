//! The bench's output: medians with their range, in a Markdown table that also reads as text.

use std::fmt::Write as _;

use super::results::Results;

/// Per config: the median [min-max] of `f(value)` over the rounds.
pub fn stat_cells(
    r: &Results,
    configs: &[&str],
    metric: &str,
    f: impl Fn(f64) -> f64,
    digits: usize,
) -> Vec<String> {
    configs
        .iter()
        .map(|c| {
            let v: Vec<f64> = r.nums(metric, c).values().map(|x| f(*x)).collect();
            Stat::of(&v).show(digits)
        })
        .collect()
}

/// Per config: its ratio to config `b`, round by round ("1" for `b` itself).
pub fn ratio_cells(r: &Results, configs: &[&str], metric: &str, b: &str) -> Vec<String> {
    configs
        .iter()
        .map(|c| match *c == b {
            true => "1".to_owned(),
            false => Stat::of(&r.ratios(metric, c, b)).show(3),
        })
        .collect()
}

/// Median [min-max] of one row's values for one column.
pub struct Stat {
    pub median: Option<f64>,
    min: f64,
    max: f64,
    n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        };
        Stat {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            n: v.len(),
        }
    }

    pub fn show(&self, digits: usize) -> String {
        match self.median {
            None => "?".into(),
            Some(m) if self.n == 1 => format!("{m:.digits$}"),
            Some(m) => format!("{m:.digits$} [{:.digits$}-{:.digits$}]", self.min, self.max),
        }
    }
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn head(&mut self, first: &str, cols: &[&str]) {
        let mut row = vec![first.to_owned()];
        row.extend(cols.iter().map(|c| (*c).to_owned()));
        self.rows.push(row);
    }

    pub fn row(&mut self, label: &str, cells: Vec<String>) {
        let mut row = vec![label.to_owned()];
        row.extend(cells);
        self.rows.push(row);
    }

    /// A Markdown table, padded so it also reads as plain text.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (n, row) in self.rows.iter().enumerate() {
            out.push('|');
            for (i, w) in width.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                let pad = w - cell.chars().count();
                if i == 0 {
                    let _ = write!(out, " {cell}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(out, " {}{cell} |", " ".repeat(pad));
                }
            }
            out.push('\n');
            if n == 0 {
                out.push('|');
                for (i, w) in width.iter().enumerate() {
                    let dashes = "-".repeat(*w);
                    if i == 0 {
                        let _ = write!(out, "-{dashes}-|");
                    } else {
                        let _ = write!(out, "-{dashes}:|");
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}
