//! Decoding the probe's ring buffer records (`monitor_ebpf::FlushEvent`).

use std::sync::Arc;

use anyhow::{Result, bail};
pub use monitor_ebpf::MAX_FRAMES;
use monitor_ebpf::{FLAG_BY_NAME, FLAG_RUNNING_KNOWN, FLAG_WORKER, FLAG_WORKER_KNOWN, FlushEvent};

use crate::{interned::intern, kernel::target::strip_pac};

/// One flush of a system workqueue, as user space sees it: where it was counted, its stack, and
/// what a call site keeps of it ([`Sighting`], which `Flush` derefs to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flush {
    pub queue: usize,
    /// The call site the kernel counts this flush under (return address in the caller).
    pub caller: u64,
    /// Kernel return addresses, innermost first.
    pub stack: Vec<u64>,
    pub seen: Sighting,
}

impl std::ops::Deref for Flush {
    type Target = Sighting;
    fn deref(&self) -> &Sighting {
        &self.seen
    }
}

impl std::ops::DerefMut for Flush {
    fn deref_mut(&mut self) -> &mut Sighting {
        &mut self.seen
    }
}

/// The task and queue of a flush: what the summary tells of a call site's first sighting, for
/// each of thousands of sites (so no stack, and small: 112 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub time_ns: u64,
    pub wq: u64,
    pub pid: u32,
    pub tgid: u32,
    pub cpu: u32,
    pub by_name: bool,
    /// Whether the flushing task is a workqueue worker; None when BTF could not tell.
    pub worker: Option<bool>,
    /// `bpf_get_stack`'s errno when it captured nothing.
    pub stack_error: Option<i32>,
    pub comm: Arc<str>,
    /// The queue's name as the kernel has it (`wq->name`), when BTF gave its offset.
    pub wq_name: Option<Arc<str>>,
    /// For a workqueue worker: the work item it is running, and so the flush it can deadlock on.
    /// Boxed: most flushers are no workers, and a daemon keeps a Sighting per call site.
    pub running: Option<Box<Running>>,
}

/// The queue of the work item a flushing worker is running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub wq: u64,
    /// Its index in the system queue table, when it is a system queue.
    pub queue: Option<u32>,
    pub name: Option<Arc<str>>,
}

/// Decodes one record. The bytes come from the kernel, but are checked anyway: a record of the
/// wrong size (an eBPF object from another build) must be an error, not garbage.
pub fn decode(bytes: &[u8], nr_queues: usize) -> Result<Flush> {
    if bytes.len() != size_of::<FlushEvent>() {
        bail!(
            "ring buffer record of {} bytes, expected {}",
            bytes.len(),
            size_of::<FlushEvent>()
        );
    }
    let ev: FlushEvent = bytemuck::pod_read_unaligned(bytes);
    if ev.queue as usize >= nr_queues {
        bail!("event names system queue #{} of {nr_queues}", ev.queue);
    }
    let frames = (ev.stack_bytes.max(0) as usize / 8).min(MAX_FRAMES);
    Ok(Flush {
        queue: ev.queue as usize,
        caller: ev.caller,
        stack: ev.stack[..frames]
            .iter()
            .copied()
            .take_while(|&a| a != 0)
            .map(strip_pac)
            .collect(),
        seen: Sighting {
            time_ns: ev.time_ns,
            wq: ev.wq,
            pid: ev.pid,
            tgid: ev.tgid,
            cpu: ev.cpu,
            by_name: ev.flags & FLAG_BY_NAME != 0,
            worker: (ev.flags & FLAG_WORKER_KNOWN != 0).then_some(ev.flags & FLAG_WORKER != 0),
            stack_error: (ev.stack_bytes < 0).then_some(-ev.stack_bytes),
            comm: c_string(&ev.comm),
            wq_name: Some(c_string(&ev.name)).filter(|n| !n.is_empty()),
            running: (ev.flags & FLAG_RUNNING_KNOWN != 0).then(|| {
                Box::new(Running {
                    wq: ev.running_wq,
                    queue: Some(ev.running_queue).filter(|&q| (q as usize) < nr_queues),
                    name: Some(c_string(&ev.running_name)).filter(|n| !n.is_empty()),
                })
            }),
        },
    })
}

/// The bytes up to the first NUL (the kernel's fixed-size name arrays), interned: task and queue
/// names repeat across sites.
pub fn c_string(bytes: &[u8]) -> Arc<str> {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    intern(&String::from_utf8_lossy(&bytes[..len]))
}

/// The bytes of a record, as the kernel sends them (for tests and fuzzing).
pub fn encode(ev: &FlushEvent) -> Vec<u8> {
    bytemuck::bytes_of(ev).to_vec()
}

/// A plausible record (for tests and fuzzing).
pub fn sample_event(queue: u32, stack: &[u64]) -> FlushEvent {
    let mut ev = FlushEvent {
        time_ns: 42,
        wq: 0xffff888003c1e000,
        pid: 77,
        tgid: 76,
        cpu: 1,
        queue,
        flags: FLAG_WORKER_KNOWN,
        stack_bytes: (stack.len() * 8) as i32,
        caller: 0,
        comm: [0; 16],
        name: [0; monitor_ebpf::NAME_LEN],
        running_wq: 0,
        running_queue: monitor_ebpf::NO_QUEUE,
        _pad: 0,
        running_name: [0; monitor_ebpf::NAME_LEN],
        stack: [0; MAX_FRAMES],
    };
    ev.comm[..2].copy_from_slice(b"sh");
    ev.name[..11].copy_from_slice(b"events_long");
    ev.stack[..stack.len()].copy_from_slice(stack);
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_record() {
        let f = decode(
            &encode(&sample_event(2, &[0xffffffff810b5e25, 0xffffffffc0a0101e])),
            3,
        )
        .unwrap();
        assert_eq!(
            (f.pid, f.tgid, f.cpu, f.queue, &*f.comm),
            (77, 76, 1, 2, "sh")
        );
        assert_eq!(f.stack, [0xffffffff810b5e25, 0xffffffffc0a0101e]);
        assert_eq!(f.wq_name.as_deref(), Some("events_long"));
        assert_eq!(
            (f.worker, f.by_name, f.stack_error),
            (Some(false), false, None)
        );
    }

    #[test]
    fn reports_flags_and_stack_errors() {
        let mut ev = sample_event(0, &[]);
        ev.flags = FLAG_BY_NAME | FLAG_WORKER | FLAG_WORKER_KNOWN;
        ev.stack_bytes = -14;
        ev.name = [0; monitor_ebpf::NAME_LEN];
        let f = decode(&encode(&ev), 1).unwrap();
        assert_eq!(
            (f.worker, f.by_name, f.stack_error),
            (Some(true), true, Some(14))
        );
        assert!(f.stack.is_empty());
        assert_eq!(f.wq_name, None, "no BTF offset, no name");
        ev.flags = 0;
        assert_eq!(
            decode(&encode(&ev), 1).unwrap().worker,
            None,
            "unknown without BTF"
        );
    }

    #[test]
    fn decodes_the_running_work_of_a_worker() {
        let mut ev = sample_event(1, &[]);
        ev.flags = FLAG_WORKER | FLAG_WORKER_KNOWN | FLAG_RUNNING_KNOWN;
        ev.running_wq = ev.wq;
        ev.running_queue = 1;
        ev.running_name[..11].copy_from_slice(b"events_long");
        let f = decode(&encode(&ev), 2).unwrap();
        let want = Running {
            wq: ev.wq,
            queue: Some(1),
            name: Some("events_long".into()),
        };
        assert_eq!(f.running.as_deref(), Some(&want));
        ev.running_queue = monitor_ebpf::NO_QUEUE;
        assert_eq!(
            decode(&encode(&ev), 2).unwrap().seen.running.unwrap().queue,
            None
        );
        ev.flags = FLAG_WORKER | FLAG_WORKER_KNOWN;
        assert_eq!(decode(&encode(&ev), 2).unwrap().seen.running, None);
    }

    #[test]
    fn rejects_bad_records() {
        let bytes = encode(&sample_event(5, &[]));
        assert!(decode(&bytes[..10], 9).is_err());
        assert!(
            decode(&bytes, 5)
                .unwrap_err()
                .to_string()
                .contains("#5 of 5")
        );
        let mut ev = sample_event(0, &[]);
        ev.stack_bytes = i32::MAX;
        assert!(
            decode(&encode(&ev), 1).unwrap().stack.is_empty(),
            "length clamped, zeros dropped"
        );
    }
}
