//! The daemon's own map reads must not make the probe miss flushes.
//!
//! A kprobe or kprobe-multi program does not run while `bpf_prog_active` is raised on its CPU,
//! and the kernel raises it around every map lookup made through the bpf() syscall
//! (`bpf_disable_instrumentation()`: migration off, preemption on). A wqflush preempted inside
//! its once-a-second read of the counters therefore hides every flush on that CPU until it runs
//! again; the kernel counts them as the program's misses. Measured on 7.3 (lazy preemption), a
//! flood of 1,000,000 flushes from both CPUs: 4,254 missed. Run as SCHED_FIFO for the read, the
//! thread cannot be preempted by the flushers (fair-class tasks), and the window closes.
//!
//! SCHED_FIFO needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1 (the unit sets
//! `LimitRTPRIO=1`). Without either the reads run as before, and any miss is still counted.

/// The lowest real-time priority: above every fair-class task, below the kernel's own RT work.
const PRIORITY: i32 = 1;

/// The calling thread runs SCHED_FIFO until this is dropped, when it could be raised at all.
pub struct Unpreempted {
    raised: bool,
}

impl Unpreempted {
    pub fn enter() -> Self {
        let param = libc::sched_param {
            sched_priority: PRIORITY,
        };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
        let raised = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
        Unpreempted { raised }
    }

    /// Whether the thread is real-time now (false: not permitted here).
    pub fn raised(&self) -> bool {
        self.raised
    }
}

impl Drop for Unpreempted {
    fn drop(&mut self) {
        if self.raised {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `enter`; going back to SCHED_OTHER needs no privilege.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_is_real_time_only_inside() {
        let policy = || {
            // SAFETY: pid 0 is the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        };
        let before = policy();
        {
            let guard = Unpreempted::enter();
            if guard.raised() {
                assert_eq!(policy(), libc::SCHED_FIFO);
            } else {
                assert_eq!(policy(), before, "not permitted here: nothing changed");
            }
        }
        assert_eq!(policy(), before);
    }
}
