//! The kernel-global ("system") workqueues: which ones this kernel has and how to recognize them.
//!
//! Found by pattern, not from a fixed list: every built-in `system_*wq` data symbol in kallsyms is
//! a `struct workqueue_struct *` variable, so queues added by later kernels (6.9's BH queues,
//! 6.17's `system_percpu_wq`/`system_dfl_wq`) need no code change. Names are not unique
//! (`system_percpu_wq` and `system_wq` are both "events" since 6.17; Debian's 6.12 has that too),
//! so matching is by pointer whenever kallsyms lists data symbols, or else the kernel image's
//! exported-symbol table gives the variables' addresses (`ksymtab.rs`).
//! Which queue came in which kernel, and Debian's backports: docs/kernels.md.

use anyhow::{Result, bail};
use monitor_ebpf::{MAX_QUEUES, NAME_LEN};

use crate::kernel::kallsyms::Kallsyms;

/// Variable -> workqueue name, for reports and for name mode (per-kernel notes:
/// `monitor_ebpf::kernels`):
/// - events_freezable_power_efficient was truncated to 23 bytes before 6.9 (WQ_NAME_LEN 24) and
///   renamed events_freezable_pwr_efficient in 6.9 (WQ_NAME_LEN 32); `name_mode` truncates to the
///   length BTF reports, which covers both.
/// - system_bh_wq / system_bh_highpri_wq: 6.9. system_percpu_wq / system_dfl_wq: 6.17 (Debian
///   backported them to 6.12.y), named like system_wq / system_unbound_wq.
/// - system_dfl_long_wq: 7.1.
pub const KNOWN: &[(&str, &str)] = &[
    ("system_wq", "events"),
    ("system_highpri_wq", "events_highpri"),
    ("system_long_wq", "events_long"),
    ("system_unbound_wq", "events_unbound"),
    ("system_freezable_wq", "events_freezable"),
    ("system_power_efficient_wq", "events_power_efficient"),
    (
        "system_freezable_power_efficient_wq",
        "events_freezable_power_efficient",
    ),
    (
        "system_freezable_power_efficient_wq",
        "events_freezable_pwr_efficient",
    ),
    ("system_bh_wq", "events_bh"),
    ("system_bh_highpri_wq", "events_bh_highpri"),
    ("system_percpu_wq", "events"),
    ("system_dfl_wq", "events_unbound"),
    ("system_dfl_long_wq", "events_dfl_long"),
];

/// One system workqueue the probe recognizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemQueue {
    /// The pointer variable (`system_long_wq`); None in name mode, where names are ambiguous.
    pub var: Option<String>,
    /// The workqueue's name (`events_long`), when known.
    pub name: Option<String>,
    /// Address of the pointer variable (address mode), else 0.
    pub addr: u64,
}

impl SystemQueue {
    /// The one name reports give the queue: its pointer variable, or in name mode (where names
    /// are ambiguous) the workqueue's name.
    pub fn label(&self) -> &str {
        self.var.as_deref().or(self.name.as_deref()).unwrap_or("?")
    }

    /// The label with the workqueue's name beside it: `system_long_wq (events_long)`, or
    /// `"events" (matched by name)`. `kernel_name` is the name the probe read, when it did.
    pub fn describe(&self, kernel_name: Option<&str>) -> String {
        match (&self.var, kernel_name.or(self.name.as_deref())) {
            (Some(v), Some(n)) => format!("{v} ({n})"),
            (Some(v), None) => v.clone(),
            (None, Some(n)) => format!("\"{n}\" (matched by name)"),
            (None, None) => "?".to_owned(),
        }
    }
}

/// How a system workqueue pointer variable's name starts and ends (`system_*wq`).
pub const QUEUE_VAR_PREFIX: &str = "system_";
pub const QUEUE_VAR_SUFFIX: &str = "wq";

/// Whether a kallsyms data symbol (or an exported symbol) is a system workqueue pointer variable.
pub fn is_queue_var(name: &str) -> bool {
    name.starts_with(QUEUE_VAR_PREFIX) && name.ends_with(QUEUE_VAR_SUFFIX)
}

/// The name a queue variable's workqueue has on a kernel whose WQ_NAME_LEN is `name_len` (from
/// BTF; unknown without it). Reports prefer the name the probe reads from the kernel; this is
/// for `doctor` and kernels without BTF. A renamed queue gets the newest name that fits, else the
/// oldest one cut to fit, as the kernel cuts it.
fn known_name(var: &str, name_len: Option<usize>) -> Option<String> {
    let names: Vec<&str> = KNOWN
        .iter()
        .filter(|(v, _)| *v == var)
        .map(|(_, n)| *n)
        .collect();
    let max = name_len.map_or(usize::MAX, |l| l.saturating_sub(1));
    let name = names
        .iter()
        .rev()
        .find(|n| n.len() <= max)
        .or(names.first())?;
    Some(name[..name.len().min(max)].to_owned())
}

/// Address mode: one entry per built-in `system_*wq` data symbol, in address order.
pub fn by_address(ks: &Kallsyms, name_len: Option<usize>) -> Result<Vec<SystemQueue>> {
    let vars = ks
        .data()
        .iter()
        .filter(|d| d.module.is_none() && is_queue_var(&d.name))
        .map(|d| (d.name.as_str(), d.addr));
    from_vars(vars, name_len)
}

/// Address mode from (variable, run-time address) pairs found elsewhere than in kallsyms (the
/// kernel image's exported-symbol table, `ksymtab.rs`): those matching the pattern, in address
/// order.
pub fn from_vars<'a>(
    vars: impl IntoIterator<Item = (&'a str, u64)>,
    name_len: Option<usize>,
) -> Result<Vec<SystemQueue>> {
    let mut queues: Vec<SystemQueue> = vars
        .into_iter()
        .filter(|(var, _)| is_queue_var(var))
        .map(|(var, addr)| SystemQueue {
            var: Some(var.to_owned()),
            name: known_name(var, name_len),
            addr,
        })
        .collect();
    queues.sort_by_key(|q| q.addr);
    queues.dedup_by_key(|q| q.addr);
    if queues.len() > MAX_QUEUES {
        bail!(
            "this kernel has {} system_*wq variables; wqflush supports {MAX_QUEUES}",
            queues.len()
        );
    }
    Ok(queues)
}

/// Name mode: the distinct system queue names, cut to the kernel's `WQ_NAME_LEN - 1` bytes.
pub fn by_name(wq_name_len: usize) -> Vec<SystemQueue> {
    let keep = wq_name_len.clamp(1, NAME_LEN) - 1;
    let mut names: Vec<&str> = KNOWN.iter().map(|(_, n)| &n[..n.len().min(keep)]).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| SystemQueue {
            var: None,
            name: Some(n.to_owned()),
            addr: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_system_wq_variable_by_pattern() {
        let text = "\
ffffffff82a5e2c0 D system_wq
ffffffff82a5e2b0 D system_highpri_wq
ffffffff82a5e2d0 d system_percpu_wq
ffffffff82a5e2e0 D system_bh_highpri_wq
ffffffff82a5e2f0 D system_future_wq
ffffffff82a5e300 D system_state
ffffffff82a5e308 D system_wq_count_not_a_queue
ffffffffc0002000 d system_fake_wq\t[evil]
";
        let ks = Kallsyms::parse(text, is_queue_var).unwrap();
        let qs = by_address(&ks, None).unwrap();
        let vars: Vec<_> = qs.iter().map(|q| q.var.as_deref().unwrap()).collect();
        assert_eq!(
            vars,
            [
                "system_highpri_wq",
                "system_wq",
                "system_percpu_wq",
                "system_bh_highpri_wq",
                "system_future_wq"
            ]
        );
        assert_eq!(qs[1].name.as_deref(), Some("events"));
        assert_eq!(
            qs[2].name.as_deref(),
            Some("events"),
            "6.17 reuses the name"
        );
        assert_eq!(
            qs[4].name, None,
            "unknown future queue is still matched by pointer"
        );
        assert_eq!(qs[0].addr, 0xffffffff82a5e2b0);
    }

    #[test]
    fn renamed_queue_gets_the_name_its_kernel_uses() {
        let var = "system_freezable_power_efficient_wq";
        assert_eq!(
            known_name(var, Some(24)).as_deref(),
            Some("events_freezable_power_"),
            "6.1"
        );
        assert_eq!(
            known_name(var, Some(32)).as_deref(),
            Some("events_freezable_pwr_efficient"),
            "6.9+"
        );
        assert_eq!(known_name("system_wq", Some(24)).as_deref(), Some("events"));
        assert_eq!(known_name("system_new_wq", Some(32)), None);
    }

    #[test]
    fn one_label_for_each_queue() {
        let by_addr = SystemQueue {
            var: Some("system_long_wq".into()),
            name: Some("events_long".into()),
            addr: 1,
        };
        assert_eq!(by_addr.label(), "system_long_wq");
        assert_eq!(by_addr.describe(None), "system_long_wq (events_long)");
        let by_name = &by_name(32)[0];
        assert_eq!(by_name.label(), by_name.name.as_deref().unwrap());
        assert!(by_name.describe(None).ends_with("(matched by name)"));
    }

    #[test]
    fn name_mode_truncates_like_the_kernel() {
        let old: Vec<_> = by_name(24).into_iter().map(|q| q.name.unwrap()).collect();
        assert!(
            old.contains(&"events_freezable_power_".to_owned()),
            "{old:?}"
        );
        assert!(old.iter().all(|n| n.len() <= 23));
        let new: Vec<_> = by_name(32).into_iter().map(|q| q.name.unwrap()).collect();
        assert!(new.contains(&"events_freezable_pwr_efficient".to_owned()));
        assert_eq!(
            new.iter().filter(|n| *n == "events").count(),
            1,
            "deduplicated"
        );
        assert!(by_name(32).iter().all(|q| q.var.is_none()));
    }
}
