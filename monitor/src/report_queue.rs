//! The reports a watch writes, handed to a thread of their own and written there in the order
//! they were sent. Writing a first sighting resolves its source lines, and the first frame of an
//! object loads that object's debug info: tens of milliseconds for a module, seconds for
//! vmlinux's. Writing also waits for /dev/kmsg and for whoever reads stdout. None of that may keep
//! the event loop from draining the ring buffers, or the kernel would drop first sightings.

use std::{io::Write, sync::mpsc, thread::JoinHandle};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use crate::{
    ignore::IgnoreList,
    report::{Reporter, StuckFlush},
    sites::Site,
    symbolize::Frame,
};

/// Reports waiting for the thread. Bounded: a reader that stops reading holds the event loop
/// back (the kernel then counts what its ring buffer drops) instead of growing memory without
/// bound, as writing on the loop itself did.
const DEPTH: usize = 256;

enum Message {
    FirstSighting(Box<Site>, Vec<Frame>),
    Returned(Box<Site>, u32, u64),
    Stuck(Box<StuckFlush>),
}

/// The event loop's end of the report thread.
pub struct ReportQueue<W: Write + Send + 'static> {
    tx: Option<mpsc::SyncSender<Message>>,
    thread: Option<JoinHandle<Result<Reporter<W>>>>,
    /// Fires when the thread has ended, which before `finish` means a write failed.
    ended: Option<oneshot::Receiver<()>>,
    /// The reporter's ignore list, for the loop's own questions (stuck sites, the exit code).
    ignore: IgnoreList,
}

impl<W: Write + Send + 'static> ReportQueue<W> {
    pub fn spawn(reporter: Reporter<W>) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(DEPTH);
        let (ended_tx, ended) = oneshot::channel();
        let ignore = reporter.ignore_list().clone();
        let thread = std::thread::Builder::new()
            .name("wqflush-report".into())
            .spawn(move || {
                let written = write_all(reporter, &rx);
                let _ = ended_tx.send(());
                written
            })
            .context("starting the report thread")?;
        Ok(ReportQueue {
            tx: Some(tx),
            thread: Some(thread),
            ended: Some(ended),
            ignore,
        })
    }

    pub fn is_ignored(&self, site: &Site) -> bool {
        crate::report::ignores(&self.ignore, site)
    }

    /// Warns about a call site the first time it flushes, unless the ignore list covers it.
    pub fn first_sighting(&mut self, site: &Site, frames: &[Frame]) -> Result<()> {
        if self.is_ignored(site) {
            return Ok(());
        }
        self.send(Message::FirstSighting(
            Box::new(site.clone()),
            frames.to_vec(),
        ))
    }

    /// `--waits`: a reported flush from `site` returned after `wait_ns`.
    pub fn returned(&mut self, site: &Site, pid: u32, wait_ns: u64) -> Result<()> {
        if self.is_ignored(site) {
            return Ok(());
        }
        self.send(Message::Returned(Box::new(site.clone()), pid, wait_ns))
    }

    /// `--waits --stuck-after`: a flush still waits.
    pub fn stuck(&mut self, stuck: StuckFlush) -> Result<()> {
        self.send(Message::Stuck(Box::new(stuck)))
    }

    /// What fires when the thread has ended, which before `finish` means a write failed; for the
    /// event loop to wait on beside its other inputs (see [`ended`]).
    pub fn take_ended(&mut self) -> Option<oneshot::Receiver<()>> {
        self.ended.take()
    }

    /// The thread's error, once it has ended early.
    pub fn failure(&mut self) -> anyhow::Error {
        match self.finish() {
            Err(e) => e,
            Ok(_) => anyhow::anyhow!("the report thread ended early"),
        }
    }

    /// Waits until everything sent is written; hands back the reporter for the summary.
    pub fn finish(&mut self) -> Result<Reporter<W>> {
        self.tx = None;
        let thread = self
            .thread
            .take()
            .context("the report thread was finished twice")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the report thread panicked"))?
    }

    /// A failed send means the thread ended: its error is the one to show.
    fn send(&mut self, message: Message) -> Result<()> {
        let tx = self.tx.as_ref().context("the report thread was finished")?;
        if tx.send(message).is_ok() {
            return Ok(());
        }
        Err(self.failure())
    }
}

/// Resolves once the report thread has ended; never without a receiver.
pub async fn ended(rx: &mut Option<oneshot::Receiver<()>>) {
    match rx {
        Some(rx) => {
            let _ = rx.await;
        }
        None => std::future::pending().await,
    }
}

/// The thread: writes each report as it comes; ends at the first failed write, or once the
/// loop's sender is gone.
fn write_all<W: Write>(
    mut reporter: Reporter<W>,
    rx: &mpsc::Receiver<Message>,
) -> Result<Reporter<W>> {
    for message in rx {
        match message {
            Message::FirstSighting(site, frames) => reporter.first_sighting(&site, &frames)?,
            Message::Returned(site, pid, wait_ns) => reporter.returned(&site, pid, wait_ns)?,
            Message::Stuck(stuck) => reporter.stuck(&stuck)?,
        }
    }
    Ok(reporter)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that fails every write, like a full disk.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn queues() -> Vec<crate::queues::SystemQueue> {
        vec![crate::queues::SystemQueue {
            var: Some("system_wq".into()),
            name: Some("events".into()),
            addr: 1,
        }]
    }

    fn stuck(pid: u32) -> StuckFlush {
        StuckFlush {
            queue: 0,
            wq_name: None,
            caller: None,
            pid,
            comm: "kworker/0:1".into(),
            waiting_ns: 1,
            running: Vec::new(),
        }
    }

    #[test]
    fn reports_are_written_in_the_order_sent() {
        let reporter = Reporter::new(Vec::new(), true, queues());
        let mut q = ReportQueue::spawn(reporter).unwrap();
        for pid in 1..=1000 {
            q.stuck(stuck(pid)).unwrap();
        }
        let out = String::from_utf8(q.finish().unwrap().into_inner()).unwrap();
        let pids: Vec<u64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["pid"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(pids, (1..=1000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_thread_and_finish_says_why() {
        let reporter = Reporter::new(Full, true, queues());
        let mut q = ReportQueue::spawn(reporter).unwrap();
        q.stuck(stuck(1)).unwrap();
        let mut rx = q.take_ended();
        tokio::time::timeout(std::time::Duration::from_secs(10), ended(&mut rx))
            .await
            .expect("the thread ends after a failed write");
        let err = format!("{:#}", q.failure());
        assert!(
            err.contains("writing the report") && err.contains("No space left"),
            "{err}"
        );
    }
}
