//! `--waits --stuck-after D`: offending flushes in flight longer than D, reported once per
//! (task, call site) while they still wait.
//!
//! The kernel's INFLIGHT map says which flushes entered and have not been seen returning. An
//! entry can outlive its flush: the kernel may skip the exit program (fexit's recursion check,
//! a kretprobe instance pool exhausted). Such an entry must not become a false STUCK, so before
//! reporting, /proc must show the task still waiting the way a flush waits: present, in state D
//! (wait_for_completion() sleeps uninterruptibly), and without a voluntary context switch since
//! it was first seen in D (one more means it woke and slept again: it left that wait). Anything
//! else counts as an exit missed, never reported.

use std::collections::{HashMap, HashSet};

use monitor_ebpf::{CountKey, InFlight};

/// What /proc shows of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// The state letter of /proc/<tid>/stat (R, S, D, ...).
    pub state: char,
    /// voluntary_ctxt_switches of /proc/<tid>/status.
    pub voluntary: u64,
}

/// /proc/<tid>'s state; None when the task is gone (or /proc unreadable).
pub fn read_task(tid: u32) -> Option<TaskState> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    parse_task(&stat, &status)
}

/// The state letter follows the command in parentheses, which may itself hold ") ".
pub fn parse_task(stat: &str, status: &str) -> Option<TaskState> {
    let after = &stat[stat.rfind(')')? + 1..];
    let state = after.trim_start().chars().next()?;
    let voluntary = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()?;
    Some(TaskState { state, voluntary })
}

/// One look at an in-flight flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Younger than the threshold.
    Waiting,
    /// Past the threshold and still in the flush's wait: report it.
    Stuck,
    /// Past the threshold, but the task left the wait: the exit probe did not run.
    ExitMissed,
    /// Past the threshold, not in D right now (woken, maybe returning): look again next time.
    Unsure,
}

/// Looks again at an entry `unsure` times in a row not in D before calling its exit missed.
const UNSURE_LIMIT: u8 = 3;

/// The decision for one entry: `baseline` is its voluntary switch count when first seen in D.
pub fn judge(age_ns: u64, after_ns: u64, baseline: Option<u64>, now: Option<TaskState>) -> Verdict {
    if age_ns < after_ns {
        return Verdict::Waiting;
    }
    let Some(now) = now else {
        return Verdict::ExitMissed;
    };
    match baseline {
        Some(b) if now.voluntary != b => Verdict::ExitMissed,
        Some(_) if now.state == 'D' => Verdict::Stuck,
        _ => Verdict::Unsure,
    }
}

/// What user space keeps of one INFLIGHT entry (a thread id and its flush's start time).
#[derive(Debug)]
struct Seen {
    start_ns: u64,
    /// voluntary_ctxt_switches when first seen in D.
    baseline: Option<u64>,
    unsure: u8,
    /// Reported or counted as missed: not looked at again.
    done: bool,
}

#[derive(Debug)]
pub struct StuckTracker {
    after_ns: u64,
    seen: HashMap<u32, Seen>,
    reported: HashSet<(u32, CountKey)>,
    /// Entries whose exit the kernel did not run the probe for.
    pub exits_missed: u64,
}

impl StuckTracker {
    pub fn new(after: std::time::Duration) -> Self {
        StuckTracker {
            after_ns: u64::try_from(after.as_nanos()).unwrap_or(u64::MAX),
            seen: HashMap::new(),
            reported: HashSet::new(),
            exits_missed: 0,
        }
    }

    /// Looks at the kernel's in-flight flushes at `now_ns` (CLOCK_MONOTONIC, the clock of
    /// `bpf_ktime_get_ns`); returns those to report as stuck now. `task` reads /proc; `still`
    /// re-reads a thread's INFLIGHT entry after /proc was read, so a flush that returned
    /// meanwhile is neither reported nor counted as missed.
    pub fn poll(
        &mut self,
        flights: &[(u32, InFlight)],
        now_ns: u64,
        mut task: impl FnMut(u32) -> Option<TaskState>,
        mut still: impl FnMut(u32) -> Option<InFlight>,
    ) -> Vec<(u32, InFlight)> {
        self.seen.retain(|tid, s| {
            flights
                .iter()
                .any(|(t, f)| t == tid && f.start_ns == s.start_ns)
        });
        let mut stuck = Vec::new();
        for &(tid, flight) in flights {
            let seen = self.seen.entry(tid).or_insert(Seen {
                start_ns: flight.start_ns,
                baseline: None,
                unsure: 0,
                done: false,
            });
            if seen.done {
                continue;
            }
            let age = now_ns.saturating_sub(flight.start_ns);
            let Some(verdict) = seen.judge(age, self.after_ns, task(tid)) else {
                continue;
            };
            // The same flush still in flight after /proc was read?
            if still(tid).is_none_or(|f| f.start_ns != flight.start_ns) {
                seen.done = true;
                continue;
            }
            seen.done = true;
            match verdict {
                Verdict::Stuck => {
                    if self.reported.insert((tid, flight.key)) {
                        stuck.push((tid, flight));
                    }
                }
                Verdict::ExitMissed => self.exits_missed += 1,
                Verdict::Waiting | Verdict::Unsure => {}
            }
        }
        stuck
    }
}

impl Seen {
    /// This poll's verdict on a flush `age_ns` old whose task is in state `now`; None while it
    /// still waits, or while /proc cannot tell for fewer than `UNSURE_LIMIT` polls in a row.
    fn judge(&mut self, age_ns: u64, after_ns: u64, now: Option<TaskState>) -> Option<Verdict> {
        let verdict = judge(age_ns, after_ns, self.baseline, now);
        if self.baseline.is_none()
            && let Some(now) = now.filter(|n| n.state == 'D')
        {
            self.baseline = Some(now.voluntary);
        }
        match verdict {
            Verdict::Waiting => None,
            Verdict::Unsure => {
                self.unsure += 1;
                (self.unsure >= UNSURE_LIMIT).then_some(Verdict::ExitMissed)
            }
            other => {
                self.unsure = 0;
                Some(other)
            }
        }
    }
}

/// CLOCK_MONOTONIC now, nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn d(voluntary: u64) -> Option<TaskState> {
        Some(TaskState {
            state: 'D',
            voluntary,
        })
    }

    fn flight(start_ns: u64, caller: u64) -> InFlight {
        InFlight {
            key: CountKey {
                queue: 1,
                _pad: 0,
                caller,
            },
            start_ns,
            ..Default::default()
        }
    }

    #[test]
    fn parses_proc() {
        let stat = "123 (kworker/0:1 ) x) D 2 0 0 0 -1 69238880";
        let status = "Name:\tkworker\nState:\tD (disk sleep)\nvoluntary_ctxt_switches:\t17\n\
                      nonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(
            parse_task(stat, status),
            Some(TaskState {
                state: 'D',
                voluntary: 17
            })
        );
        assert_eq!(parse_task("123 (x) S 1", "Name:\tx\n"), None);
    }

    #[test]
    fn judges_only_a_task_still_in_its_wait() {
        assert_eq!(judge(S, 3 * S, Some(5), d(5)), Verdict::Waiting);
        assert_eq!(judge(3 * S, 3 * S, Some(5), d(5)), Verdict::Stuck);
        // Gone.
        assert_eq!(judge(4 * S, 3 * S, Some(5), None), Verdict::ExitMissed);
        // Slept again since: it left the flush's wait.
        assert_eq!(judge(4 * S, 3 * S, Some(5), d(6)), Verdict::ExitMissed);
        let running = Some(TaskState {
            state: 'R',
            voluntary: 5,
        });
        assert_eq!(judge(4 * S, 3 * S, Some(5), running), Verdict::Unsure);
        // Never seen in D yet.
        assert_eq!(judge(4 * S, 3 * S, None, d(5)), Verdict::Unsure);
    }

    #[test]
    fn reports_a_stuck_flush_once_per_task_and_site() {
        let mut t = StuckTracker::new(Duration::from_secs(3));
        let flights = vec![(7, flight(10 * S, 0xa))];
        let still = |_| Some(flight(10 * S, 0xa));
        assert!(t.poll(&flights, 11 * S, |_| d(4), still).is_empty());
        let got = t.poll(&flights, 13 * S, |_| d(4), still);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 7);
        assert!(t.poll(&flights, 14 * S, |_| d(4), still).is_empty());
        // The same task and site again later (a new flush): still not reported twice.
        let again = vec![(7, flight(20 * S, 0xa))];
        let still = |_| Some(flight(20 * S, 0xa));
        assert!(t.poll(&again, 21 * S, |_| d(9), still).is_empty());
        assert!(t.poll(&again, 24 * S, |_| d(9), still).is_empty());
        assert_eq!(t.exits_missed, 0);
    }

    #[test]
    fn a_missed_exit_is_counted_not_reported() {
        let mut t = StuckTracker::new(Duration::from_secs(3));
        let flights = vec![(7, flight(10 * S, 0xa)), (8, flight(10 * S, 0xb))];
        let still = |tid| Some(flight(10 * S, if tid == 7 { 0xa } else { 0xb }));
        assert!(t.poll(&flights, 11 * S, |_| d(4), still).is_empty());
        // 7 slept again (its flush returned unseen, then it waited elsewhere); 8 is gone.
        let task = |tid| if tid == 7 { d(5) } else { None };
        assert!(t.poll(&flights, 14 * S, task, still).is_empty());
        assert_eq!(t.exits_missed, 2);
        assert!(t.poll(&flights, 15 * S, |_| d(4), still).is_empty());
        assert_eq!(t.exits_missed, 2);
    }

    #[test]
    fn a_task_out_of_d_is_looked_at_again_then_counted() {
        let mut t = StuckTracker::new(Duration::from_secs(3));
        let flights = vec![(7, flight(10 * S, 0xa))];
        let still = |_| Some(flight(10 * S, 0xa));
        let running = |_| {
            Some(TaskState {
                state: 'R',
                voluntary: 4,
            })
        };
        for now in [13, 14] {
            assert!(t.poll(&flights, now * S, running, still).is_empty());
            assert_eq!(t.exits_missed, 0);
        }
        assert!(t.poll(&flights, 15 * S, running, still).is_empty());
        assert_eq!(t.exits_missed, 1);
    }

    #[test]
    fn a_flush_that_returned_meanwhile_is_neither() {
        let mut t = StuckTracker::new(Duration::from_secs(3));
        let flights = vec![(7, flight(10 * S, 0xa))];
        assert!(t.poll(&flights, 11 * S, |_| d(4), |_| None).is_empty());
        // Read as in flight, then /proc shows it gone, but so is its entry: it returned.
        assert!(t.poll(&flights, 14 * S, |_| None, |_| None).is_empty());
        assert_eq!(t.exits_missed, 0);
        // The tid's next flush is a new entry.
        let next = vec![(7, flight(30 * S, 0xa))];
        let still = |_| Some(flight(30 * S, 0xa));
        assert!(t.poll(&next, 31 * S, |_| d(8), still).is_empty());
        assert_eq!(t.poll(&next, 33 * S, |_| d(8), still).len(), 1);
    }
}
