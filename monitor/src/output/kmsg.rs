//! `--kmsg`: warnings into the kernel log, where dmesg-scraping test rigs look.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub const PATH: &str = "/dev/kmsg";

/// Lines per warning: the kernel lets one /dev/kmsg opener write 10 records per 5 s
/// (printk_devkmsg=ratelimit, the default) and drops the rest.
pub const MAX_LINES: usize = 10;

/// Warnings per window: a module with thousands of call sites must not flood the kernel log
/// (and a serial console with it).
pub const BURST: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);

/// Writes warnings to the kernel log, one record per line (util-linux dmesg shows a multi-line
/// record as one line with `\x0a` escapes, which no scraper parses). Each warning gets its own
/// open file so it gets the kernel's full per-opener burst; wqflush writes each call site once,
/// at its first sighting, and at most BURST warnings per WINDOW.
pub struct Kmsg {
    window: Instant,
    sent: u32,
    /// Warnings not written because of the rate limit.
    pub suppressed: u64,
}

impl Kmsg {
    /// Checks that the kernel log is writable, so `--kmsg` fails at start, not at the first hit.
    pub fn open() -> Result<Self> {
        open()?;
        Ok(Kmsg {
            window: Instant::now(),
            sent: 0,
            suppressed: 0,
        })
    }

    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= WINDOW {
            (self.window, self.sent) = (Instant::now(), 0);
        }
        self.sent += 1;
        self.suppressed += u64::from(self.sent > BURST);
        self.sent <= BURST
    }

    /// Writes up to MAX_LINES lines at KERN_WARNING level ("<4>"), unless rate-limited.
    pub fn warn(&mut self, lines: &[String]) -> Result<()> {
        if !self.allow() {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_per_window() {
        let mut k = Kmsg {
            window: Instant::now(),
            sent: 0,
            suppressed: 0,
        };
        let allowed = (0..BURST + 5).filter(|_| k.allow()).count();
        assert_eq!((allowed, k.suppressed), (BURST as usize, 5));
        k.window -= WINDOW;
        assert!(k.allow(), "a new window starts afresh");
    }
}
