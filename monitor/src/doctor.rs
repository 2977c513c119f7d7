//! `wqflush doctor`: what this kernel offers wqflush, each missing piece with its reason.

use std::{
    io::{self, Write},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

use crate::{
    kernel::btf,
    kernel::kallsyms::{self, Kallsyms},
    kernel::preemption,
    kernel::queues,
    kernel::target::{self, MatchMode, Target},
    probe::{self, Method},
    sources::SourceResolver,
    sources::debuginfo::DebugInfoSearch,
};

/// Prints the report; Ok(true) when at least one attach method works. `debuginfo`: the
/// `--debuginfo` directories.
pub fn run(debuginfo: Vec<PathBuf>) -> Result<bool> {
    let mut out = io::stdout().lock();
    report(&mut out, debuginfo).context("writing the doctor report")
}

fn report(out: &mut impl Write, debuginfo: Vec<PathBuf>) -> Result<bool> {
    let kernel = target::read(target::Ahead::default());
    writeln!(out, "kernel:           {}", kernel.release)?;
    print_privileges(out)?;
    print_btf(out, &kernel.offsets)?;
    match &kernel.kallsyms {
        Ok(ks) => print_kallsyms(out, ks)?,
        Err(e) => writeln!(out, "kallsyms:         unusable: {e:#}")?,
    }
    print_debuginfo(out, debuginfo)?;
    let target = match kernel.target(MatchMode::Auto) {
        Ok((_, target)) => target,
        Err(e) => {
            writeln!(out, "verdict:          wqflush cannot run here: {e:#}")?;
            return Ok(false);
        }
    };
    print_queues(out, &target)?;
    writeln!(out, "attach methods (tried on {}):", target.function)?;
    let counters = btf::read_miss_counters().unwrap_or_default();
    let fentry_risk = preemption::fentry_can_miss(counters);
    let mut working = Vec::new();
    for &method in probe::Attach::Auto.methods() {
        match probe::attach_with(&target, method, false) {
            Ok(_probe) => {
                let note = method_note(method, &counters, fentry_risk.as_deref());
                writeln!(out, "  {method}: available; {note}")?;
                writeln!(out, "    call site: {}", call_site_note(method))?;
                working.push(method.to_string());
            }
            Err(e) => writeln!(out, "  {method}: unavailable: {e:#}")?,
        }
    }
    if working.is_empty() {
        writeln!(
            out,
            "verdict:          wqflush cannot probe this kernel; `cargo xtask demo` runs it under QEMU"
        )?;
    } else {
        writeln!(
            out,
            "verdict:          wqflush can run here ({})",
            working.join(", ")
        )?;
        print_unit_note(out, &working)?;
    }
    Ok(!working.is_empty())
}

/// Where the perf-event kprobe is the only method (Debian arm64 6.1: no fentry, no
/// kprobe-multi), the shipped unit cannot attach under Debian's `perf_event_paranoid=3`: it
/// runs without CAP_SYS_ADMIN, exits with the paranoid error and is restarted every 30 s.
fn print_unit_note(out: &mut impl Write, working: &[String]) -> io::Result<()> {
    if working != [Method::Kprobe.to_string()] || probe::perf_event_paranoid() < 3 {
        return Ok(());
    }
    writeln!(
        out,
        "unit:             the shipped wqflush.service cannot attach here: kprobe is the only \
         method and kernel.perf_event_paranoid is 3, which gives perf events to CAP_SYS_ADMIN \
         only; run `sysctl kernel.perf_event_paranoid=2` (persist it in /etc/sysctl.d/), or add \
         CAP_SYS_ADMIN to the unit's CapabilityBoundingSet= and AmbientCapabilities= in a \
         drop-in (`systemctl edit wqflush`)"
    )
}

/// Whether `method` can miss flushes here, and whether the kernel would count it if it did.
fn method_note(method: Method, counters: &btf::MissCounters, fentry_risk: Option<&str>) -> String {
    let counted = if counters.kprobe_missed {
        "the kernel counts any miss"
    } else {
        "this kernel keeps no count of misses for it (6.7+ does)"
    };
    // Both are skipped while a bpf() map call is preempted on the CPU (bpf_prog_active): wqflush
    // makes its own as SCHED_FIFO (unpreempted.rs), another tool's can still cost flushes.
    let skips = "skipped only while some process's BPF map call is preempted on that CPU \
                 (wqflush's own run SCHED_FIFO)";
    match method {
        Method::KprobeMulti => format!(
            "preemption cannot make it miss flushes (its handler runs with preemption off; no \
             perf event needed); {skips}; {counted}"
        ),
        Method::Kprobe => format!(
            "preemption cannot make it miss flushes (its handler runs with preemption off), but \
             needs perf_event_open (CAP_SYS_ADMIN when kernel.perf_event_paranoid is 3); {skips}; \
             {counted}"
        ),
        Method::Fentry => match fentry_risk {
            Some(why) => format!(
                "WARNING: can miss flushes here ({why}): the kernel skips it on a CPU where a \
                 preempted flusher is inside it; it counts the misses (recursion_misses), and \
                 --attach auto does not choose it"
            ),
            None if counters.recursion_misses => {
                "cannot miss flushes here (no preemption inside it)".to_owned()
            }
            None => "cannot miss flushes (before 5.12 a trampoline never skips a run)".to_owned(),
        },
    }
}

/// Where `method` finds the flush's call site (the key of every count).
fn call_site_note(method: Method) -> &'static str {
    match method {
        Method::Fentry if cfg!(target_arch = "aarch64") => {
            "read in the trampoline's frame records, above the return into the flush function \
             (pointer authentication bits stripped); unwound where the caller is a wrapper such \
             as drain_workqueue()"
        }
        Method::Fentry => {
            "read in the trampoline's frame, right above the return into the flush function; \
             unwound where the trampoline keeps no such return (jmp mode: an fexit program on \
             the flush function, 6.19+) or the caller is a wrapper such as drain_workqueue()"
        }
        Method::Kprobe | Method::KprobeMulti if cfg!(target_arch = "aarch64") => {
            "read in the link register (x30) on entry, where the call put it; unwound where the \
             caller is a wrapper such as drain_workqueue()"
        }
        Method::Kprobe | Method::KprobeMulti => {
            "read at the stack pointer on entry, where the call put it; unwound where the caller \
             is a wrapper such as drain_workqueue()"
        }
    }
}

/// CAP_SYSLOG (34), CAP_PERFMON (38), CAP_BPF (39); before 5.8 CAP_SYS_ADMIN (21) covers all.
const NEEDED_CAPS: &[(u32, &str)] = &[(39, "CAP_BPF"), (38, "CAP_PERFMON"), (34, "CAP_SYSLOG")];
const CAP_SYS_ADMIN: u32 = 21;

fn print_privileges(out: &mut impl Write) -> io::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1 << bit) != 0;
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| !has(*bit))
        .map(|(_, name)| *name)
        .collect();
    let verdict = match (missing.is_empty(), has(CAP_SYS_ADMIN)) {
        (true, _) => "has CAP_BPF, CAP_PERFMON, CAP_SYSLOG: enough".to_owned(),
        (false, true) => format!(
            "lacks {} but has CAP_SYS_ADMIN (enough before 5.8)",
            missing.join(", ")
        ),
        (false, false) => format!("lacks {}: run as root, or grant them", missing.join(", ")),
    };
    writeln!(out, "privileges:       {verdict}")?;
    Ok(())
}

fn print_btf(out: &mut impl Write, offsets: &Result<btf::Offsets>) -> io::Result<()> {
    match offsets {
        Ok(o) => writeln!(
            out,
            "BTF:              {}: workqueue_struct.name at +{} ({} bytes), task_struct.flags at +{}",
            btf::VMLINUX,
            o.wq_name,
            o.wq_name_len,
            o.task_flags
        )?,
        Err(e) => writeln!(
            out,
            "BTF:              unavailable ({e:#}): no fentry, no name matching, no worker detection"
        )?,
    }
    Ok(())
}

fn print_kallsyms(out: &mut impl Write, ks: &Kallsyms) -> io::Result<()> {
    let mode = if ks.addresses_hidden() {
        "addresses hidden (kernel.kptr_restrict): wqflush cannot work".to_owned()
    } else if queues::by_address(ks, None).is_ok_and(|q| q.is_empty()) {
        "no system_*wq variables (CONFIG_KALLSYMS_ALL off)".to_owned()
    } else {
        "system_*wq variables listed".to_owned()
    };
    writeln!(
        out,
        "kallsyms:         {}: {} functions, {mode}",
        kallsyms::PATH,
        ks.text_symbol_count()
    )?;
    Ok(())
}

/// How system queues are recognized and where their addresses come from, then the queues.
fn print_queues(out: &mut impl Write, target: &Target) -> io::Result<()> {
    let n = target.queues.len();
    let how = if target.by_name {
        format!("{n} system queue names, by name")
    } else {
        format!("{n} system queues by address")
    };
    writeln!(
        out,
        "queues:           {how}, {}",
        target.queue_source.describe()
    )?;
    for q in &target.queues {
        let var = q.var.as_deref().unwrap_or("-");
        let name = q.name.as_deref().unwrap_or("?");
        let addr = if q.addr == 0 {
            String::new()
        } else {
            format!("{:#x}", q.addr)
        };
        writeln!(out, "  {var:<40} {name:<32} {addr}")?;
    }
    Ok(())
}

/// Where source lines would come from, for vmlinux and each loaded module: the file whose
/// build-id is the running one's, or why there is none (a stale file says "build-id differs").
fn print_debuginfo(out: &mut impl Write, dirs: Vec<PathBuf>) -> Result<()> {
    writeln!(
        out,
        "debug info (source lines; --debuginfo DIR adds places to look):"
    )?;
    let search = match DebugInfoSearch::new(dirs) {
        Ok(s) => s,
        Err(e) => {
            writeln!(out, "  unavailable: {e:#}")?;
            return Ok(());
        }
    };
    let mut resolver = SourceResolver::new(search);
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let names = std::iter::once(None).chain(
        modules
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(Some),
    );
    for name in names {
        let status = resolver.status(name);
        writeln!(out, "  {:<24} {status}", name.unwrap_or("vmlinux"))?;
    }
    Ok(())
}
