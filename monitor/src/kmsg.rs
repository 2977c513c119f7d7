//! `--kmsg`: warnings into the kernel log, where dmesg-scraping test rigs look.

use std::io::Write;

use anyhow::{Context as _, Result};

pub const PATH: &str = "/dev/kmsg";

/// Lines per warning: the kernel lets one /dev/kmsg opener write 10 records per 5 s
/// (printk_devkmsg=ratelimit, the default) and drops the rest.
pub const MAX_LINES: usize = 10;

/// Writes warnings to the kernel log, one record per line (util-linux dmesg shows a multi-line
/// record as one line with `\x0a` escapes, which no scraper parses). Each warning gets its own
/// open file so it gets the kernel's full per-opener burst; wqflush itself writes each call site
/// once, at its first sighting.
pub struct Kmsg;

impl Kmsg {
    /// Checks that the kernel log is writable, so `--kmsg` fails at start, not at the first hit.
    pub fn open() -> Result<Self> {
        open()?;
        Ok(Kmsg)
    }

    /// Writes up to MAX_LINES lines at KERN_WARNING level ("<4>").
    pub fn warn(&mut self, lines: &[String]) -> Result<()> {
        let mut file = open()?;
        for line in lines.iter().take(MAX_LINES) {
            file.write_all(format!("<4>{line}").as_bytes())
                .with_context(|| format!("writing to {PATH}"))?;
        }
        Ok(())
    }
}

fn open() -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(PATH)
        .with_context(|| format!("--kmsg: cannot open {PATH} for writing (run as root)"))
}
