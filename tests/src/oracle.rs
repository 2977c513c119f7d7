//! An oracle independent of wqflush: a tracefs kprobe event on the flush function
//! (`__flush_workqueue`, `flush_workqueue` before 5.19) that records the flushed queue, the
//! current value of every `system_*wq` pointer and the kernel stack.
//!
//! In the guest: `oracle_start` before the workload, `oracle_stop` after it, `oracle_dump` to
//! write sections `oracle-symbols` and `oracle-trace` to the data port. On the host:
//! [`Oracle::from_run`] and the queries on it.
//!
//! arm64: the stack unwound at the flush function's first instruction skips its direct caller
//! (the callee has not saved the link register yet, so the frame chain goes from the flush
//! function to the caller's caller); the probe records the link register (`caller=%x30:symbol`)
//! and the parser puts that frame first, so the frames read as amd64's.

use crate::qemu::VmRun;
use anyhow::{Context, Result};
use std::collections::BTreeMap;

/// Where kallsyms has no data symbols (Debian's arm64 6.1: no CONFIG_KALLSYMS_ALL), the guest's
/// list of system queues from System.map ([`queue_locations`]), read by `system_queues`.
pub const SYSTEM_QUEUES_PATH: &str = "/lib/vmtest/system-queues";

/// The `system_*wq` variables among `exports` (name -> image offset, [`crate::ksymtab`]) as
/// `system_queues` prints kallsyms' (`<location> <type> <name>`, sorted by name; type `D`, as
/// kallsyms shows them), the location being a kprobe fetch address relative to `anchor`
/// (`__flush_workqueue+0x1c04d48`), a function kallsyms always has: KASLR moves the whole image
/// by one offset, so the distance holds at run time.
pub fn queue_locations(exports: &BTreeMap<String, u64>, anchor: &str) -> Result<String> {
    let base = *exports
        .get(anchor)
        .with_context(|| format!("no exported {anchor}"))?;
    let mut out = String::new();
    for (name, &addr) in exports.iter().filter(|(n, _)| is_system_queue(n)) {
        let (sign, distance) = if addr >= base {
            ('+', addr - base)
        } else {
            ('-', base - addr)
        };
        out.push_str(&format!("{anchor}{sign}{distance:#x} D {name}\n"));
    }
    anyhow::ensure!(!out.is_empty(), "no exported system_*wq symbols");
    Ok(out)
}

/// `system_[a-z0-9_]*wq`, as the guest's `system_queues` matches kallsyms names.
pub fn is_system_queue(name: &str) -> bool {
    name.strip_prefix("system_")
        .and_then(|rest| rest.strip_suffix("wq"))
        .is_some_and(|mid| {
            mid.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Shell functions added to the guest helpers (`tests/guest/oracle.sh`): `oracle_start`,
/// `oracle_mark`, `oracle_part`, `oracle_stop`, `oracle_dump`.
pub const GUEST_FUNCTIONS: &str = include_str!("../guest/oracle.sh");

/// One recorded `__flush_workqueue` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushEvent {
    /// `comm-pid` of the flushing task as tracefs prints it.
    pub task: String,
    /// The flushed `struct workqueue_struct *`.
    pub wq: u64,
    /// Every `system_*wq` variable whose value equalled `wq` at the time (names alias: on 6.12
    /// `system_wq` and `system_percpu_wq` may both be "events").
    pub system: Vec<String>,
    /// Stack frames from the caller of `__flush_workqueue` outwards, as function names without
    /// offsets or module tags (the kprobe/ftrace frames above it are dropped).
    pub stack: Vec<String>,
    /// The same frames as tracefs printed them, e.g. `wqflush_test_flush_long+0x9/0x20
    /// [wqflush_test]`: `frames[i]` is `stack[i]` with its return address offset.
    pub frames: Vec<String>,
    /// The last `oracle_mark` before this event ("" before the first).
    pub mark: String,
    /// arm64: the caller from the link register at the probe, as tracefs symbolized it; already
    /// `frames[0]`.
    pub entry_caller: Option<String>,
}

impl FlushEvent {
    pub fn called_from(&self, function: &str) -> bool {
        self.stack.iter().any(|f| f == function)
    }

    pub fn flushes(&self, symbol: &str) -> bool {
        self.system.iter().any(|s| s == symbol)
    }

    /// The return address offset (`func+0x9/0x20` -> 9) of the innermost frame in `function`:
    /// for the caller of `__flush_workqueue` (`stack[0]`) this tells its call sites apart.
    pub fn offset_in(&self, function: &str) -> Option<u64> {
        let i = self.stack.iter().position(|f| f == function)?;
        frame_offset(self.frames.get(i)?)
    }

    /// Whether the flushing task is a workqueue worker, judged by its name (`kworker/...`).
    pub fn by_kworker(&self) -> bool {
        self.task.starts_with("kworker/")
    }
}

/// The oracle's view of one boot.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// `system_*wq` symbol -> kallsyms type letter, as the guest kernel reported them.
    pub symbols: BTreeMap<String, char>,
    pub events: Vec<FlushEvent>,
}

impl Oracle {
    /// Parses the `oracle-symbols` and `oracle-trace` sections `oracle_dump` wrote.
    pub fn from_run(run: &VmRun) -> Result<Oracle> {
        let symbols = parse_symbols(run.section("oracle-symbols")?);
        let events =
            parse_trace(run.section("oracle-trace")?).context("parsing the oracle's trace")?;
        Ok(Oracle { symbols, events })
    }

    /// Per queue ("system_long_wq", or "other" for queues that are no system queue) and
    /// innermost caller, how many flushes the oracle saw: a compact form for logs and xtask.
    pub fn summary_json(&self) -> serde_json::Value {
        let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for e in &self.events {
            let queue = e.system.first().map_or("other", String::as_str);
            let caller = e.stack.first().map_or("?", String::as_str);
            *counts
                .entry(queue.to_string())
                .or_default()
                .entry(caller.to_string())
                .or_default() += 1;
        }
        serde_json::json!({ "symbols": self.symbols, "flushes": counts })
    }

    /// Flushes of system queue `symbol` with `function` on the stack.
    pub fn count(&self, symbol: &str, function: &str) -> usize {
        self.from_function(function)
            .filter(|e| e.flushes(symbol))
            .count()
    }

    /// The oracle dumped in parts: each `(part, snapshot)` is an `oracle_part` section and the
    /// section of a kallsyms snapshot of the module unloaded just before that part was read
    /// (see [`Oracle::name_unloaded`]); `oracle_dump`'s trace is the last part. Marks carry
    /// over from one part to the next.
    pub fn from_parts(run: &VmRun, parts: &[(&str, &str)]) -> Result<Oracle> {
        let mut events: Vec<FlushEvent> = Vec::new();
        let mut sections: Vec<(String, Option<&str>)> = parts
            .iter()
            .map(|(part, snapshot)| (format!("oracle-trace-{part}"), Some(*snapshot)))
            .collect();
        sections.push(("oracle-trace".to_owned(), None));
        for (section, snapshot) in sections {
            let mut part = Oracle {
                symbols: BTreeMap::new(),
                events: parse_trace(run.section(&section)?)
                    .with_context(|| format!("parsing {section}"))?,
            };
            if let Some(snapshot) = snapshot {
                part.name_unloaded(run.section(snapshot)?);
            }
            let mark = events.last().map(|e| e.mark.clone()).unwrap_or_default();
            for e in part.events.iter_mut().filter(|e| e.mark.is_empty()) {
                e.mark.clone_from(&mark);
            }
            events.extend(part.events);
        }
        let symbols = parse_symbols(run.section("oracle-symbols")?);
        Ok(Oracle { symbols, events })
    }

    /// Names the frames tracefs printed as bare addresses because their module was unloaded
    /// before the trace was read, from `snapshot`: that module's lines of /proc/kallsyms, taken
    /// while it was loaded (`addr type name [module]`). A frame becomes `name+0xoff [module]`.
    pub fn name_unloaded(&mut self, snapshot: &str) {
        let mut symbols: Vec<(u64, &str, &str)> = snapshot
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let (_kind, name, module) = (f.next()?, f.next()?, f.next()?);
                Some((addr, name, module))
            })
            .collect();
        symbols.sort_unstable();
        for e in &mut self.events {
            for (function, frame) in e.stack.iter_mut().zip(&mut e.frames) {
                let Some(addr) = frame
                    .strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                else {
                    continue;
                };
                // Past its last symbol by more than any function's size: not this module's.
                let Some(&(start, name, module)) = symbols
                    .iter()
                    .rev()
                    .find(|s| s.0 <= addr && addr - s.0 < 0x10000)
                else {
                    continue;
                };
                *function = name.to_string();
                *frame = format!("{name}+{:#x} {module}", addr - start);
            }
        }
    }

    pub fn from_function<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a FlushEvent> {
        self.events.iter().filter(move |e| e.called_from(function))
    }
}

fn parse_symbols(text: &str) -> BTreeMap<String, char> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), kind.chars().next()?))
        })
        .collect()
}

/// Parses tracefs `trace` output of the `wqf/flush` event plus its stacktrace trigger. The
/// output merges the CPUs' buffers by time, so another CPU's event can come between an event
/// and its stack: a stack belongs to the last event of its own CPU.
pub fn parse_trace(text: &str) -> Result<Vec<FlushEvent>> {
    let mut events: Vec<FlushEvent> = Vec::new();
    let mut last_on_cpu: BTreeMap<&str, usize> = BTreeMap::new();
    let mut stack_of = None;
    let mut mark = String::new();
    for line in text.lines() {
        if let Some(frame) = line.trim_start().strip_prefix("=> ") {
            if let Some(event) = stack_of.and_then(|i| events.get_mut(i)) {
                push_frame(event, frame);
            }
        } else if let Some((_, text)) = line.split_once(MARK) {
            mark = text.trim().to_string();
        } else if line.contains(" flush: (") {
            let mut event = parse_event(line).with_context(|| format!("trace line {line:?}"))?;
            event.mark.clone_from(&mark);
            last_on_cpu.insert(cpu(line), events.len());
            events.push(event);
        } else if line.contains("<stack trace>") {
            stack_of = last_on_cpu.get(cpu(line)).copied();
        }
    }
    for event in &mut events {
        put_entry_caller_first(event);
    }
    Ok(events)
}

/// Makes the link register's caller (arm64) the first frame, unless the unwound stack already
/// starts with it.
fn put_entry_caller_first(event: &mut FlushEvent) {
    let Some(caller) = &event.entry_caller else {
        return;
    };
    if event.frames.first() != Some(caller) {
        event.stack.insert(0, frame_function(caller));
        event.frames.insert(0, caller.clone());
    }
}

/// What the probe's `caller=` argument printed, as a frame. tracefs symbolizes it
/// (`func+0x1c/0x30 [module]`); a bare address is one it could not name: if its top bits are
/// not all ones it carries a pointer authentication code, stripped the way the kernel does for
/// kernel addresses (bits 63..VA_BITS set; 48 covers Debian's 48- and 52-bit layouts, whose
/// kernel image and modules lie in the top 2^47 bytes).
fn entry_caller_frame(printed: &str) -> String {
    let printed = printed.trim();
    match printed
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    {
        Some(addr) => format!("{:#x}", addr | !((1u64 << 48) - 1)),
        None => printed.to_string(),
    }
}

/// The `[001]` of a trace line.
fn cpu(line: &str) -> &str {
    line.split_whitespace()
        .find(|w| w.starts_with('[') && w.ends_with(']'))
        .unwrap_or_default()
}

/// What `oracle_mark` writes before its text (`tracing_mark_write+0x76/0x140: wqf-mark TEXT`
/// with sym-offset, `tracing_mark_write: wqf-mark TEXT` without).
const MARK: &str = ": wqf-mark ";

/// `  sh-93  [001] .....  5.1: flush: (__flush_workqueue+0x0/0x4a0) wq=0x... sys=0x... ...`
fn parse_event(line: &str) -> Result<FlushEvent> {
    let task = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let (_, args) = line
        .split_once(") ")
        .context("no ') ' after the probe location")?;
    // arm64's `caller=` comes last: its symbolized value may hold a space (`f+0x1c/0x30 [mod]`).
    let (args, entry_caller) = match args.split_once("caller=") {
        Some((args, caller)) => (args, Some(entry_caller_frame(caller))),
        None => (args, None),
    };
    let mut wq = None;
    let mut values = Vec::new();
    for kv in args.split_whitespace() {
        let (key, value) = kv.split_once('=').context("argument without '='")?;
        let value = parse_hex(value)?;
        match key {
            "wq" => wq = Some(value),
            _ => values.push((arg_symbol(key), value)),
        }
    }
    let wq = wq.context("no wq= argument")?;
    let system = values
        .into_iter()
        .filter(|(_, v)| *v == wq)
        .map(|(s, _)| s)
        .collect();
    Ok(FlushEvent {
        task,
        wq,
        system,
        stack: Vec::new(),
        frames: Vec::new(),
        mark: String::new(),
        entry_caller,
    })
}

/// Inverts the guest's naming: `sys_long` -> `system_long_wq`, `sys` -> `system_wq`.
fn arg_symbol(arg: &str) -> String {
    format!("system{}_wq", arg.strip_prefix("sys").unwrap_or(arg))
}

fn parse_hex(value: &str) -> Result<u64> {
    let digits = value.strip_prefix("0x").unwrap_or(value);
    u64::from_str_radix(digits, 16).with_context(|| format!("{value:?} is not hex"))
}

/// Appends `function`, first discarding the tracing machinery once the probed function shows up
/// (`kprobe_trace_func`, `kprobe_dispatcher`, the ftrace trampoline, the flush function).
fn push_frame(event: &mut FlushEvent, frame: &str) {
    let function = frame_function(frame);
    if PROBED.contains(&function.as_str()) {
        event.stack.clear();
        event.frames.clear();
    } else {
        event.stack.push(function);
        event.frames.push(frame.trim().to_string());
    }
}

/// The functions the oracle's kprobe sits on: `__flush_workqueue` since 5.19, `flush_workqueue`
/// before (the guest's `flush_fn` picks the one the kernel has).
pub const PROBED: &[&str] = &["__flush_workqueue", "flush_workqueue"];

/// `wqflush_test_flush_long+0x9/0x20 [wqflush_test]` -> `wqflush_test_flush_long`.
fn frame_function(frame: &str) -> String {
    let sym = frame.split_whitespace().next().unwrap_or_default();
    sym.split('+').next().unwrap_or(sym).to_string()
}

/// `wqflush_test_flush_long+0x9/0x20 [wqflush_test]` -> 9; `None` for a bare address.
pub fn frame_offset(frame: &str) -> Option<u64> {
    let sym = frame.split_whitespace().next()?;
    let (_, rest) = sym.split_once('+')?;
    let offset = rest.split('/').next()?;
    parse_hex(offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# tracer: nop\n\
        \x20             sh-93      [001] .....    5.123456: flush: (__flush_workqueue+0x0/0x4a0) wq=0xffff1 sys=0xffff1 sys_long=0xffff2 sys_freezable_power_efficient=0xffff3\n\
        \x20             sh-93      [001] .....    5.123460: <stack trace>\n\
        \x20=> kprobe_dispatcher\n\
        \x20=> 0xffffffffc032b0de\n\
        \x20=> __flush_workqueue\n\
        \x20=> wqflush_test_flush_scheduled+0x9/0x20 [wqflush_test]\n\
        \x20=> wqflush_test_write+0x80/0x120 [wqflush_test]\n\
        \x20             sh-93      [001] .....    5.2: tracing_mark_write+0x76/0x140: wqf-mark waits\n\
        \x20             sh-93      [001] .....    5.3: flush: (__flush_workqueue+0x0/0x4a0) wq=0xffff2 sys=0xffff1 sys_long=0xffff2\n\
        \x20             sh-93      [001] .....    5.4: <stack trace>\n\
        \x20=> __flush_workqueue\n\
        \x20=> wqflush_test_flush_long+0x9/0x20 [wqflush_test]\n";

    #[test]
    fn a_stack_belongs_to_its_own_cpu() {
        let text = "\
            \x20 sh-1 [000] ..... 5.1: flush: (__flush_workqueue+0x0/0x4a0) wq=0x1 sys=0x1\n\
            \x20 sh-2 [001] ..... 5.2: flush: (__flush_workqueue+0x0/0x4a0) wq=0x2 sys=0x1\n\
            \x20 sh-1 [000] ..... 5.3: <stack trace>\n\
            \x20=> __flush_workqueue\n\
            \x20=> a+0x9/0x20\n\
            \x20 sh-2 [001] ..... 5.4: <stack trace>\n\
            \x20=> __flush_workqueue\n\
            \x20=> b+0x9/0x20\n";
        let ev = parse_trace(text).expect("parses");
        assert_eq!(
            (ev[0].task.as_str(), ev[0].stack.as_slice()),
            ("sh-1", &["a".to_owned()][..])
        );
        assert_eq!(
            (ev[1].task.as_str(), ev[1].stack.as_slice()),
            ("sh-2", &["b".to_owned()][..])
        );
    }

    /// arm64: the unwound stack goes from the flush function to the caller's caller; the
    /// caller comes from `caller=` (x30).
    const ARM64_SAMPLE: &str = "\
        \x20 sh-90 [000] ..... 9.1: flush: (__flush_workqueue+0x0/0x4c0) wq=0xffff2 sys=0xffff1 sys_long=0xffff2 caller=wqflush_test_flush_long+0x1c/0x38 [wqflush_test]\n\
        \x20 sh-90 [000] ..... 9.2: <stack trace>\n\
        \x20=> kprobe_dispatcher+0x40/0x70\n\
        \x20=> __flush_workqueue+0x0/0x4c0\n\
        \x20=> run_trigger+0x5c/0xb0 [wqflush_test]\n\
        \x20=> wqflush_test_write+0xd0/0x180 [wqflush_test]\n\
        \x20 sh-90 [000] ..... 9.3: flush: (__flush_workqueue+0x0/0x4c0) wq=0xffff2 caller=0x7a11ffc0081234c8\n";

    #[test]
    fn arm64_caller_from_the_link_register_comes_first() {
        let ev = parse_trace(ARM64_SAMPLE).expect("parses");
        assert_eq!(ev[0].system, ["system_long_wq"]);
        assert_eq!(
            ev[0].stack,
            [
                "wqflush_test_flush_long",
                "run_trigger",
                "wqflush_test_write"
            ]
        );
        assert_eq!(
            ev[0].frames[0],
            "wqflush_test_flush_long+0x1c/0x38 [wqflush_test]"
        );
        assert_eq!(ev[0].offset_in("wqflush_test_flush_long"), Some(0x1c));
        // A signed return address is stripped to a kernel address.
        assert_eq!(ev[1].frames, ["0xffffffc0081234c8"]);
        // A stack that already starts with the caller keeps it once.
        let mut twice = ev[0].clone();
        put_entry_caller_first(&mut twice);
        assert_eq!(twice.frames.len(), 3);
    }

    #[test]
    fn system_queues_relative_to_the_flush_function() {
        let exports: BTreeMap<String, u64> = [
            ("__flush_workqueue", 0xb9c00),
            ("system_wq", 0x1cbe938),
            ("system_long_wq", 0x1cbe948),
            ("system_early", 0xb0000),
        ]
        .map(|(n, a)| (n.to_string(), a))
        .into();
        assert_eq!(
            queue_locations(&exports, "__flush_workqueue").expect("finds them"),
            "__flush_workqueue+0x1c04d48 D system_long_wq\n\
             __flush_workqueue+0x1c04d38 D system_wq\n"
        );
        assert!(queue_locations(&exports, "flush_workqueue").is_err());
        assert!(is_system_queue("system_freezable_power_efficient_wq"));
        assert!(!is_system_queue("system_wq_attrs"));
    }

    #[test]
    fn parses_event_and_stack() {
        let ev = parse_trace(SAMPLE).expect("sample parses");
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].mark.as_str(), ev[1].mark.as_str()), ("", "waits"));
        assert_eq!(ev[1].system, vec!["system_long_wq".to_string()]);
        assert_eq!(ev[1].stack, ["wqflush_test_flush_long"]);
        assert_eq!(ev[0].task, "sh-93");
        assert_eq!(ev[0].system, vec!["system_wq".to_string()]);
        assert_eq!(
            ev[0].stack,
            ["wqflush_test_flush_scheduled", "wqflush_test_write"]
        );
        assert_eq!(
            ev[0].frames,
            [
                "wqflush_test_flush_scheduled+0x9/0x20 [wqflush_test]",
                "wqflush_test_write+0x80/0x120 [wqflush_test]"
            ]
        );
        assert_eq!(ev[0].offset_in("wqflush_test_flush_scheduled"), Some(9));
        assert_eq!(ev[0].offset_in("wqflush_test_write"), Some(0x80));
        assert_eq!(ev[0].offset_in("nowhere"), None);
        assert!(!ev[0].by_kworker());
        assert_eq!(frame_offset("0xffffffffc032b0de"), None);
        assert_eq!(
            arg_symbol("sys_freezable_power_efficient"),
            "system_freezable_power_efficient_wq"
        );
    }
}
