//! Reports written on a thread of their own, in the order the event loop hands them over, so
//! the loop never waits for a report: the first look-up of a source line can load hundreds of
//! MB of vmlinux debug info, and meanwhile the ring buffer must keep being drained, or first
//! sightings would be lost.
//!
//! The thread is kept cheap (the daemon's RSS goal is 10 MB): a small stack, and glibc told to
//! keep one heap for both threads instead of an arena per thread.

use std::{
    io::Write,
    sync::mpsc::{Sender, channel},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow};

use crate::output::report::Reporter;

/// A report to write: what the loop knew, owned, and how to write it.
pub(super) type Job<W> = Box<dyn FnOnce(&mut Reporter<W>) -> Result<()> + Send>;

/// The writer thread's stack: symbolizing and formatting are shallow, but addr2line walks DWARF
/// (inline chains); 512 KiB is ample, and only the pages touched count.
const STACK: usize = 512 << 10;

pub(super) struct Writer<W: Write + Send + 'static> {
    jobs: Option<Sender<Job<W>>>,
    thread: Option<JoinHandle<(Reporter<W>, Result<()>)>>,
}

impl<W: Write + Send + 'static> Writer<W> {
    pub(super) fn spawn(mut reporter: Reporter<W>) -> Result<Self> {
        // SAFETY: mallopt only changes glibc's allocator settings; called before the second
        // thread exists, as glibc requires for M_ARENA_MAX to take effect for it.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        let (jobs, queue) = channel::<Job<W>>();
        let thread = std::thread::Builder::new()
            .name("wqflush-report".into())
            .stack_size(STACK)
            .spawn(move || {
                for job in queue {
                    if let Err(e) = job(&mut reporter) {
                        return (reporter, Err(e));
                    }
                }
                (reporter, Ok(()))
            })
            .context("starting the report thread")?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Hands a report to the thread; fails with the thread's error once a write has failed.
    pub(super) fn submit(&mut self, job: Job<W>) -> Result<()> {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        if sent {
            return Ok(());
        }
        self.finish().map(drop)
    }

    /// Waits for every report handed over to be written, and gives the reporter back (for the
    /// summary), or the error that stopped the thread.
    pub(super) fn finish(&mut self) -> Result<Reporter<W>> {
        drop(self.jobs.take());
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("the report thread is gone"))?;
        let (reporter, result) = thread
            .join()
            .map_err(|_| anyhow!("the report thread panicked"))?;
        result.map(|()| reporter)
    }
}
