//! Whether a flusher can be preempted inside a trampoline (fentry) program on this kernel, which
//! is when the kernel skips that program for other flushes on the CPU (`recursion_misses`).
//!
//! Kernel history: the per-program recursion check came with 5.12 (before it a trampoline never
//! skips). The preemption model is fixed at build time (`uname -v`: `PREEMPT`, `PREEMPT_RT`,
//! `PREEMPT_LAZY`) or, on `PREEMPT_DYNAMIC` kernels, chosen at boot (`preempt=`) and shown in
//! debugfs `sched/preempt`. Debian builds 5.10 voluntary, 6.x dynamic (voluntary by default)
//! and 7.x dynamic with lazy by default, which is not visible without debugfs.

use crate::kernel::btf::MissCounters;

const SCHED_PREEMPT: &str = "/sys/kernel/debug/sched/preempt";

/// Why fentry can miss flushes here, or None when it cannot; `counters` say whether the kernel
/// has the recursion check at all.
pub fn fentry_can_miss(counters: MissCounters) -> Option<String> {
    if !counters.recursion_misses {
        // No recursion check (before 5.12), or no BTF to tell: fentry needs BTF anyway.
        return None;
    }
    let version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    let debugfs = std::fs::read_to_string(SCHED_PREEMPT).ok();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    preemptible(&version, debugfs.as_deref(), &cmdline)
}

/// How kernel code can be preempted, or None for a known none/voluntary model.
fn preemptible(version: &str, debugfs: Option<&str>, cmdline: &str) -> Option<String> {
    match model(version, debugfs, cmdline) {
        Some("none" | "voluntary") => None,
        Some(m) => Some(format!("{m} preemption")),
        None => Some(format!(
            "PREEMPT_DYNAMIC, and its mode is not readable without debugfs ({SCHED_PREEMPT})"
        )),
    }
}

/// The preemption model: from debugfs (`none voluntary (full) lazy`), else `preempt=` on a
/// dynamic kernel, else what `uname -v` says was built; None when it cannot be told.
fn model<'a>(version: &str, debugfs: Option<&'a str>, cmdline: &'a str) -> Option<&'a str> {
    if let Some(line) = debugfs {
        return line
            .split_whitespace()
            .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'));
    }
    let words: Vec<&str> = version.split_whitespace().collect();
    if words.contains(&"PREEMPT_DYNAMIC") {
        return cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("preempt="));
    }
    Some(if words.contains(&"PREEMPT_RT") {
        "rt"
    } else if words.contains(&"PREEMPT_LAZY") {
        "lazy"
    } else if words.contains(&"PREEMPT") {
        "full"
    } else {
        "voluntary"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_6_1: &str = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2026-11-01)";

    #[test]
    fn models_from_debugfs_cmdline_and_uname() {
        let dynamic = DEBIAN_6_1;
        assert_eq!(
            model(dynamic, Some("none voluntary (full) lazy\n"), ""),
            Some("full")
        );
        assert_eq!(
            model(dynamic, Some("none (voluntary) full\n"), "preempt=full"),
            Some("voluntary")
        );
        assert_eq!(
            model(dynamic, None, "BOOT_IMAGE=x preempt=full ro"),
            Some("full")
        );
        assert_eq!(
            model(dynamic, None, "BOOT_IMAGE=x ro"),
            None,
            "the built-in default is not visible"
        );
        assert_eq!(
            model("#1 SMP Debian 5.10.262-1", None, ""),
            Some("voluntary")
        );
        assert_eq!(model("#1 SMP PREEMPT_RT Debian", None, ""), Some("rt"));
        assert_eq!(model("#1 SMP PREEMPT Debian", None, ""), Some("full"));
    }

    #[test]
    fn only_a_known_unpreemptible_model_is_safe() {
        assert_eq!(
            preemptible(DEBIAN_6_1, Some("none (voluntary) full lazy"), ""),
            None
        );
        let lazy = preemptible(DEBIAN_6_1, Some("none voluntary full (lazy)"), "");
        assert_eq!(lazy.as_deref(), Some("lazy preemption"));
        let unknown = preemptible(DEBIAN_6_1, None, "").unwrap();
        assert!(
            unknown.contains("not readable"),
            "unknown counts as preemptible: {unknown}"
        );
        assert_eq!(preemptible("#1 SMP Debian 5.10.262-1", None, ""), None);
    }
}
