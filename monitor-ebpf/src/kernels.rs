//! What changed in the kernel, version by version, that wqflush depends on: the per-kernel notes
//! of the whole project, in one place beside the probe. wqflush never branches on a version
//! number; it probes for each feature (kallsyms, BTF, trying an attach), and these notes say why
//! each probe is there. The QEMU tests prove them on Debian's 5.10, 6.1, 6.12 and 7.x.
//!
//! | since | what changed | upstream | handled in |
//! |---|---|---|---|
//! | 5.5 | fentry (BPF trampolines) | fec56f5890d9 | `monitor/src/probe.rs` |
//! | 5.8 | BPF ring buffer; CAP_BPF and CAP_PERFMON (before: CAP_SYS_ADMIN) | — | `doctor.rs` (capabilities) |
//! | 5.8 | BPF task iterators (`iter/task`) | — (Yonghong Song's bpf_iter series, "bpf: Add task and task/file iterator targets") | `--waits`' stuck report (`running_work`, `probe.rs`) |
//! | 5.11 | BPF maps charged to memory cgroups, no longer to `RLIMIT_MEMLOCK` (64 KiB by default before 5.16) | — | aya raises the limit; `probe.rs` says so when it cannot; the unit sets `LimitMEMLOCK=infinity` |
//! | 5.12 | a trampoline program skips a CPU where it already runs, counted in `bpf_prog_info.recursion_misses` | ca06f55b9002 | `preemption.rs`, `btf.rs` (`MissCounters`) |
//! | 5.16 | the unwinder recovers return addresses a kretprobe replaced (before, a stack read through one shows `kretprobe_trampoline`) | — | README Limitations; `tests/stuck.rs` boots once per method |
//! | 5.17 | `struct kthread` moved from `task_struct.set_child_tid` to `worker_private` | — | `btf.rs` (worker chain) |
//! | 5.18 | kprobe-multi links (`BPF_TRACE_KPROBE_MULTI`, needs `CONFIG_FPROBE`) | 0dcac2725406 | `kprobe_multi.rs`; Debian's 6.1 does not enable fprobe |
//! | 5.19 | `flush_workqueue()` became a macro around `__flush_workqueue()`, with a compile-time warning for literal system queues; `flush_scheduled_work()` a macro too (an inline wrapper before) | c4f135d64382 | the probed function (`target.rs`), the frames looked through (`symbolize.rs`) |
//! | 6.2 | `__pfx_<function>` padding symbols in kallsyms (kCFI's `__cfi_` from 6.1) | — | `kallsyms.rs` drops them |
//! | 6.6 | the `flush_workqueue()` macro also warns at run time, for the literal call sites only | 20bdedafd2f6 | what wqflush adds: pointers, and since 6.18 `system_wq` itself |
//! | 6.7 | kprobe and kprobe-multi miss counters (`bpf_link_info` `missed`; skipped runs in `recursion_misses`) | — (Jiri Olsa's "missed stats" series) | `btf.rs` (`MissCounters`) |
//! | 6.9 | `system_bh_wq`, `system_bh_highpri_wq`; `WQ_NAME_LEN` 24 -> 32, `events_freezable_power_efficient` renamed `events_freezable_pwr_efficient` | — | `queues.rs` (found by pattern; names cut to the length BTF reports) |
//! | 6.16 | sysfs BTF can be mmapped | — | `btf.rs` (a memfd copy before) |
//! | 6.17 | `system_percpu_wq` ("events") and `system_dfl_wq` ("events_unbound"), queues of their own; `WQ_PERCPU` | — | by pattern; names are not unique, so matching is by pointer |
//! | 6.18 | `flush_scheduled_work()` flushes `system_percpu_wq`; the macro's checks test `system_percpu_wq`/`system_dfl_wq` instead of `system_wq`/`system_unbound_wq`, so `flush_workqueue(system_wq)` draws no warning at all | — | nothing to do: every `system_*wq` is matched |
//! | 6.19 | a BPF trampoline that calls the traced function (an fexit program attached) is entered by `jmp` ("jmp mode"): its frame holds no return address into that function | — (Menglong Dong's "bpf trampoline support jmp mode" series) | fentry's call site (`trampoline_return`, `main.rs`) is unwound there |
//! | 7.0 | a workqueue allocated with neither `WQ_PERCPU` nor `WQ_UNBOUND` draws a WARN; WARN lines read `WARNING: file:line at func, CPU#N: comm/pid` | — | the test module passes `WQ_PERCPU`; the harness knows both WARN layouts |
//! | 7.1 | `system_dfl_long_wq` ("events_dfl_long") | — | by pattern |
//! | 7.2 | `system_wq`, `system_unbound_wq` carry `__WQ_DEPRECATED` (a warning when work is queued there, nothing on flush) | — | — |
//!
//! Debian's builds: 5.10 voluntary preemption, no fprobe; 6.1 dynamic preemption (voluntary by
//! default), no fprobe; 6.12 (bookworm-security) backports 6.17's queues and 6.18's
//! `flush_scheduled_work()`, has fprobe; 7.x dynamic preemption, lazy by default, has fprobe.
//! Debian adds `kernel.perf_event_paranoid=3` (perf events only with CAP_SYS_ADMIN).
