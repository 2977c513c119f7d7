//! Kernel stacks to `func+0xoff [module]` frames, and which frame is the real caller.

use std::{collections::HashSet, fmt, sync::Arc};

use crate::{
    interned::intern,
    kernel::{
        kallsyms::{Kallsyms, Location},
        target::FLUSH_FUNCTIONS,
    },
};

/// One symbolized stack frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub addr: u64,
    pub func: Option<Arc<str>>,
    pub offset: u64,
    pub size: u64,
    pub module: Option<Arc<str>>,
}

impl Frame {
    fn new(addr: u64, loc: Option<Location<'_>>) -> Self {
        match loc {
            Some(l) => Frame {
                addr,
                func: Some(intern(&l.func)),
                offset: l.offset,
                size: l.size,
                module: l.module.map(intern),
            },
            None => Frame {
                addr,
                func: None,
                offset: 0,
                size: 0,
                module: None,
            },
        }
    }

    /// The function name without gcc's `.isra.0`/`.constprop.0`/`.cold` suffixes.
    pub fn base_func(&self) -> Option<&str> {
        self.func
            .as_deref()
            .map(|f| f.split('.').next().unwrap_or(f))
    }

    /// BPF programs and trampolines (kallsyms module `[bpf]`), or nothing kallsyms knows.
    fn is_probe_machinery(&self) -> bool {
        self.func.is_none() || self.module.as_deref() == Some("bpf")
    }

    /// Whether this frame can be trusted as a function of the running kernel: inside a known
    /// function, not the last symbol kallsyms had (an address past it may be in a module loaded
    /// since), not a pseudo-module such as `[__builtin__ftrace]` or `[bpf]`.
    pub fn is_plausible(&self) -> bool {
        let pseudo = self
            .module
            .as_deref()
            .is_some_and(|m| m == "bpf" || m.starts_with("__builtin__"));
        self.func.is_some() && self.size > 0 && self.offset < self.size && !pseudo
    }

    pub fn is_flush_function(&self) -> bool {
        self.module.is_none()
            && self
                .base_func()
                .is_some_and(|f| FLUSH_FUNCTIONS.contains(&f))
    }

    /// A return trampoline of another tracer (a kretprobe, rethook, the function graph tracer):
    /// it replaced the return address into the real caller, which is then hidden.
    pub fn is_return_trampoline(&self) -> bool {
        self.module.is_none()
            && self.base_func().is_some_and(|f| {
                matches!(
                    f,
                    "kretprobe_trampoline"
                        | "__kretprobe_trampoline"
                        | "arch_rethook_trampoline"
                        | "return_to_handler"
                )
            })
    }

    /// Kernel `dump_stack` style, with the function size: `func+0x12/0x40 [module]`.
    pub fn with_size(&self) -> String {
        match &self.func {
            Some(f) => {
                let module = self
                    .module
                    .as_ref()
                    .map(|m| format!(" [{m}]"))
                    .unwrap_or_default();
                format!("{f}+{:#x}/{:#x}{module}", self.offset, self.size)
            }
            None => format!("{:#x}", self.addr),
        }
    }
}

/// `func+0xoff [module]`, or the raw address when no symbol covers it.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.func, &self.module) {
            (Some(func), Some(m)) => write!(f, "{func}+{:#x} [{m}]", self.offset),
            (Some(func), None) => write!(f, "{func}+{:#x}", self.offset),
            (None, _) => write!(f, "{:#x}", self.addr),
        }
    }
}

/// Symbolizes a raw stack (innermost first) and drops the probe's own frames, so the stack
/// starts at the flush function the way a kernel warning would. Those frames (BPF program,
/// trampoline) are not reliably in kallsyms: JITed programs are listed only with
/// net.core.bpf_jit_kallsyms=1, and otherwise resolve to whatever symbol precedes them.
#[cfg(test)]
pub fn symbolize(ks: &Kallsyms, stack: &[u64]) -> Vec<Frame> {
    drop_probe_frames(stack.iter().map(|&a| Frame::new(a, ks.locate(a))).collect())
}

fn drop_probe_frames(frames: Vec<Frame>) -> Vec<Frame> {
    let skip = frames
        .iter()
        .position(Frame::is_flush_function)
        .unwrap_or_else(|| frames.iter().take_while(|f| f.is_probe_machinery()).count());
    frames.into_iter().skip(skip).collect()
}

/// The frame that asked for the flush: the first one past the flush core and its wrappers.
/// It can be an unknown address (its module is not in kallsyms); it is never skipped, since the
/// next frame up would blame the wrong function.
pub fn caller(frames: &[Frame]) -> Option<&Frame> {
    frames.iter().find(|f| !f.is_flush_function())
}

/// Puts the kernel's call site `caller` (its frame) right after the flush function:
/// - drops the frames before it that are not the flush function: with an fexit program on
///   the flush function (`--waits`), 7.x unwinds from the BPF program and its trampoline,
///   with no frame of the flush function, so the first frame would be taken for the caller;
/// - inserts it where the unwound stack lacks it: on arm64 a kprobe at the function's entry
///   unwinds from the caller's caller, as the return into the caller is only in the link
///   register, where the probe read it.
pub fn place_caller(frames: &mut Vec<Frame>, caller: Option<Frame>) {
    let Some(caller) = caller.filter(|c| c.addr != 0) else {
        return;
    };
    let Some(at) = frames.iter().position(|f| f.addr == caller.addr) else {
        if !frames.is_empty() {
            let after_flush = frames.iter().take_while(|f| f.is_flush_function()).count();
            frames.insert(after_flush, caller);
        }
        return;
    };
    if frames[..at].iter().any(|f| !f.is_flush_function()) {
        let mut i = 0;
        frames.retain(|f| {
            i += 1;
            i > at || f.is_flush_function()
        });
    }
}

/// Where a module's core lies, from /proc/modules: its functions end there.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModuleRange {
    name: String,
    start: u64,
    end: u64,
}

/// `name size refcount deps state address ...` lines of /proc/modules.
fn module_ranges(proc_modules: &str) -> Vec<ModuleRange> {
    proc_modules
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let size: u64 = f.get(1)?.parse().ok()?;
            let start = u64::from_str_radix(f.get(5)?.strip_prefix("0x")?, 16).ok()?;
            Some(ModuleRange {
                name: f[0].to_owned(),
                start,
                end: start.checked_add(size)?,
            })
        })
        .collect()
}

/// Symbolizes against kallsyms and re-reads it when modules came or went since, so a module
/// loaded after wqflush started is named too; one that went away since keeps its names until
/// the next re-read, so a flush from its exit function (processed after the unload) is named.
pub struct Symbolizer {
    ks: Kallsyms,
    modules: String,
    /// The modules of `modules`, and of `departed`, with their extents.
    ranges: Vec<ModuleRange>,
    /// The symbols of the modules the last re-read found gone.
    departed: Kallsyms,
}

const PROC_MODULES: &str = "/proc/modules";

impl Symbolizer {
    pub fn new(ks: Kallsyms) -> Self {
        Self::with_modules(
            ks,
            std::fs::read_to_string(PROC_MODULES).unwrap_or_default(),
        )
    }

    /// A symbolizer for `ks` read while /proc/modules said `modules`.
    fn with_modules(ks: Kallsyms, modules: String) -> Self {
        Symbolizer {
            ks,
            ranges: module_ranges(&modules),
            modules,
            departed: Kallsyms::default(),
        }
    }

    pub fn frames(&self, stack: &[u64]) -> Vec<Frame> {
        drop_probe_frames(stack.iter().map(|&a| self.frame(a)).collect())
    }

    /// One address, as it is (no frames dropped): from the current table, or from a departed
    /// module's when only that names it plausibly.
    pub fn frame(&self, addr: u64) -> Frame {
        let current = self.resolve(&self.ks, addr);
        if current.is_plausible() {
            return current;
        }
        let gone = self.resolve(&self.departed, addr);
        if gone.is_plausible() { gone } else { current }
    }

    /// kallsyms gives no sizes: a module's last function ends where the module does.
    fn resolve(&self, ks: &Kallsyms, addr: u64) -> Frame {
        let mut frame = Frame::new(addr, ks.locate(addr));
        let start = addr - frame.offset;
        let range = frame
            .module
            .as_deref()
            .and_then(|m| self.ranges.iter().find(|r| r.name == m && r.start <= start));
        if let Some(r) = range
            && (frame.size == 0 || start + frame.size > r.end)
        {
            frame.size = r.end.saturating_sub(start);
        }
        frame
    }

    /// Whether the table read last names `addr` plausibly by itself, without the departed
    /// modules: a departed module's range can overlap a module loaded since, at another
    /// address, which the table does not know yet.
    pub fn names_now(&self, addr: u64) -> bool {
        self.resolve(&self.ks, addr).is_plausible()
    }

    /// Re-reads kallsyms if /proc/modules changed; true when it did.
    pub fn refresh(&mut self) -> anyhow::Result<bool> {
        let modules = std::fs::read_to_string(PROC_MODULES).unwrap_or_default();
        if modules == self.modules {
            return Ok(false);
        }
        let new = Kallsyms::load(crate::kernel::queues::is_queue_var)?;
        let live: HashSet<&str> = new.modules().collect();
        self.departed = self.ks.only_modules(|m| !live.contains(m));
        let kept: HashSet<&str> = self.departed.modules().collect();
        let mut ranges = module_ranges(&modules);
        ranges.extend(
            self.ranges
                .iter()
                .filter(|r| kept.contains(r.name.as_str()) && !live.contains(r.name.as_str()))
                .cloned(),
        );
        self.ranges = ranges;
        self.ks = new;
        self.modules = modules;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff810b5e20 T __flush_workqueue
ffffffff810b6300 t drain_workqueue
ffffffff810b6400 t worker_thread
ffffffff810b6800 t kthread
ffffffff812f0000 t mlx4_ib_cm_paravirt_clean.isra.0
ffffffff812f0400 t next_fn
ffffffffa0000000 t bpf_prog_6deef7357e7b4530_flush_fentry\t[bpf]
ffffffffa0000800 t bpf_trampoline_6442455890\t[bpf]
ffffffffa0001000 t something_else\t[bpf]
ffffffffc0a01000 t wqflush_test_flush_long\t[wqflush_test]
ffffffffc0a01040 t wqflush_test_write\t[wqflush_test]
ffffffffc0a01100 t wqflush_test_flush_own\t[wqflush_test]
";

    fn ks() -> Kallsyms {
        Kallsyms::parse(KALLSYMS, |_| false).unwrap()
    }

    #[test]
    fn return_trampolines_of_other_tracers_are_recognized() {
        let at = |func: &str, module: Option<&str>| Frame {
            addr: 1,
            func: Some(intern(func)),
            offset: 0,
            size: 8,
            module: module.map(intern),
        };
        for f in [
            "kretprobe_trampoline",
            "__kretprobe_trampoline",
            "arch_rethook_trampoline",
        ] {
            assert!(at(f, None).is_return_trampoline(), "{f}");
        }
        assert!(!at("kretprobe_trampoline", Some("foo")).is_return_trampoline());
        assert!(!at("wqflush_test_flush_long", None).is_return_trampoline());
    }

    #[test]
    fn fentry_stack_starts_at_the_flush_and_names_the_module_caller() {
        let stack = [
            0xffffffffa0000010, // bpf prog
            0xffffffffa0000820, // trampoline
            0xffffffff810b5e25, // __flush_workqueue+0x5
            0xffffffffc0a0101e, // wqflush_test_flush_long+0x1e
            0xffffffffc0a01050,
        ];
        let frames = symbolize(&ks(), &stack);
        let text: Vec<String> = frames.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "__flush_workqueue+0x5",
                "wqflush_test_flush_long+0x1e [wqflush_test]",
                "wqflush_test_write+0x10 [wqflush_test]"
            ]
        );
        let c = caller(&frames).unwrap();
        assert_eq!(
            (c.func.as_deref(), c.module.as_deref()),
            (Some("wqflush_test_flush_long"), Some("wqflush_test"))
        );
        assert_eq!(
            c.with_size(),
            "wqflush_test_flush_long+0x1e/0x40 [wqflush_test]"
        );
    }

    #[test]
    fn probe_frames_before_the_kernels_call_site_are_skipped() {
        let frame = |addr, func: Option<&str>| Frame {
            addr,
            func: func.map(intern),
            offset: 0,
            size: 0,
            module: None,
        };
        // 7.3 with fexit: BPF program, trampoline (resolving to the wrong symbol), then caller.
        let mut frames = vec![
            frame(0xffffffffc0369280, Some("handshake_exit")),
            frame(0xffffffffc03697e8, Some("handshake_exit")),
            frame(0xffffffffc08001a0, Some("slow_caller")),
            frame(0xffffffffc08005e0, Some("outer")),
        ];
        let caller = || Some(frame(0xffffffffc08001a0, Some("slow_caller")));
        place_caller(&mut frames, caller());
        let names: Vec<_> = frames.iter().map(|f| f.func.as_deref().unwrap()).collect();
        assert_eq!(names, ["slow_caller", "outer"]);
        // The usual stack, the flush function first, is left alone.
        let mut frames = vec![
            frame(0xffffffff810b5e25, Some("__flush_workqueue")),
            frame(0xffffffffc08001a0, Some("slow_caller")),
        ];
        place_caller(&mut frames, caller());
        assert_eq!(frames.len(), 2);
        // arm64's kprobe: the unwound stack goes from the flush function to the caller's
        // caller; the caller (from the link register) goes between them.
        let mut frames = vec![
            frame(0xffff800080123450, Some("__flush_workqueue")),
            frame(0xffffffffc08005e0, Some("outer")),
        ];
        place_caller(&mut frames, caller());
        let names: Vec<_> = frames.iter().map(|f| f.func.as_deref().unwrap()).collect();
        assert_eq!(names, ["__flush_workqueue", "slow_caller", "outer"]);
    }

    #[test]
    fn drops_unlisted_bpf_frames_that_resolve_to_other_symbols() {
        // Without bpf_jit_kallsyms the probe's frames land "inside" unrelated symbols.
        let stack = [
            0xffffffffc0a01110,
            0xffffffff812f0500,
            0xffffffff810b5e25,
            0xffffffffc0a0101e,
        ];
        let frames = symbolize(&ks(), &stack);
        assert_eq!(frames[0].func.as_deref(), Some("__flush_workqueue"));
        assert_eq!(
            caller(&frames).unwrap().func.as_deref(),
            Some("wqflush_test_flush_long")
        );
    }

    #[test]
    fn looks_through_wrappers_and_gcc_suffixes() {
        let stack = [0xffffffff810b5e90, 0xffffffff810b6310, 0xffffffff812f0010];
        let frames = symbolize(&ks(), &stack);
        let c = caller(&frames).unwrap();
        assert_eq!(c.func.as_deref(), Some("mlx4_ib_cm_paravirt_clean.isra.0"));
        assert_eq!(c.base_func(), Some("mlx4_ib_cm_paravirt_clean"));
        assert_eq!(c.module, None, "built in");
    }

    #[test]
    fn unknown_addresses_are_shown_raw_and_flagged() {
        let frames = symbolize(&ks(), &[0xffffffff810b5e25, 0x10]);
        assert_eq!(frames[1].to_string(), "0x10");
        assert_eq!(
            caller(&frames).unwrap().func,
            None,
            "unknown, not the next frame up"
        );
    }

    #[test]
    fn frames_past_the_last_symbol_or_in_pseudo_modules_are_not_trusted() {
        let text = "ffffffffc0000000 t ftrace_trampoline\t[__builtin__ftrace]\nffffffffc0100000 t f\t[m]\nffffffffc0100040 t g\t[m]\n";
        let ks = Kallsyms::parse(text, |_| false).unwrap();
        let frame = |a| Frame::new(a, ks.locate(a));
        assert!(!frame(0xffffffffc003f08a).is_plausible(), "pseudo-module");
        assert!(frame(0xffffffffc0100010).is_plausible());
        assert!(
            !frame(0xffffffffc0100050).is_plausible(),
            "past the last symbol"
        );
        assert!(!frame(0x10).is_plausible(), "unknown");
    }

    #[test]
    fn a_modules_last_function_ends_with_the_module() {
        // 5.10 lists a module's exit function last: kallsyms alone gives it no size.
        let ks = Kallsyms::parse(
            "ffffffff810b5e20 T __flush_workqueue\nffffffff810b6300 t next\n\
             ffffffffc0a01000 t m_flush\t[m]\nffffffffc0a02000 t m_exit\t[m]\n",
            |_| false,
        )
        .unwrap();
        let modules = "m 16384 0 - Live 0xffffffffc0a00000 (OE)\n".to_owned();
        let sym = Symbolizer::with_modules(ks, modules);
        let exit = sym.frame(0xffffffffc0a0201a);
        assert_eq!(exit.func.as_deref(), Some("m_exit"));
        assert_eq!(exit.size, 0xffffffffc0a04000 - 0xffffffffc0a02000);
        assert!(exit.is_plausible(), "{exit:?}");
        assert!(
            !sym.frame(0xffffffffc0a05000).is_plausible(),
            "past the module's end"
        );
    }

    #[test]
    fn a_departed_module_is_still_named() {
        let with_m = Kallsyms::parse(
            "ffffffff810b5e20 T __flush_workqueue\nffffffff810b6300 t next\n\
             ffffffffc0a01000 t m_exit\t[m]\n",
            |_| false,
        )
        .unwrap();
        let without = Kallsyms::parse(
            "ffffffff810b5e20 T __flush_workqueue\nffffffff810b6300 t next\n\
             ffffffffc09ff000 t bpf_prog_x\t[bpf]\n",
            |_| false,
        )
        .unwrap();
        let mut sym = Symbolizer::with_modules(without, String::new());
        sym.departed = with_m.only_modules(|m| m == "m");
        sym.ranges = module_ranges("m 8192 0 - Live 0xffffffffc0a00000\n");
        let frames = sym.frames(&[0xffffffff810b5e29, 0xffffffffc0a01010]);
        let c = caller(&frames).unwrap();
        assert_eq!(
            (c.func.as_deref(), c.module.as_deref()),
            (Some("m_exit"), Some("m"))
        );
        // Live symbols win where they are plausible.
        assert_eq!(
            sym.frame(0xffffffff810b5e29).func.as_deref(),
            Some("__flush_workqueue")
        );
    }

    #[test]
    fn a_module_function_named_like_the_core_is_a_caller() {
        let text = "ffffffffc0000000 t flush_workqueue\t[evil]\n";
        let ks = Kallsyms::parse(text, |_| false).unwrap();
        let frames = symbolize(&ks, &[0xffffffffc0000004]);
        assert_eq!(caller(&frames).unwrap().module.as_deref(), Some("evil"));
    }
}
