//! What this kernel offers wqflush: its symbols (kallsyms), the struct offsets and the BTF the
//! probe needs, and from them the flush function, how system queues are recognized and which
//! they are, or why they cannot be. `watch` attaches from a [`Target`] and `doctor` reports on
//! the same [`Kernel`]: each fact is read once.

use std::{
    cell::{Cell, OnceCell},
    path::PathBuf,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Btf, EbpfLoader};

use crate::kernel::{
    btf::{self, Offsets},
    kallsyms::Kallsyms,
    ksymtab,
    queues::{self, SystemQueue},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MatchMode {
    /// by pointer when kallsyms or the kernel image gives the system_*wq variables, else by name
    Auto,
    /// compare the flushed pointer with each system_*wq variable (from kallsyms with
    /// CONFIG_KALLSYMS_ALL, else from the kernel image's exported-symbol table)
    Address,
    /// compare workqueue_struct.name with the system queue names (needs kernel BTF)
    Name,
}

impl Kernel {
    /// Decides what the probe attaches to and compares against; the symbol table goes to the
    /// caller too (it names the frames of every report).
    pub fn target(self, mode: MatchMode) -> Result<(Kallsyms, Target)> {
        let Kernel {
            release,
            kallsyms,
            offsets,
            kernel_btf,
            loader,
            lacks_fprobe,
        } = self;
        let ks = kallsyms?;
        let image = || ksymtab::from_running_kernel(&release, &ks);
        let (queues, queue_source) = queues_to_match(&ks, offsets.as_ref(), mode, image)?;
        let function = flush_function(&ks)?;
        let target = Target {
            release,
            function,
            entry_returns: ks
                .kernel_function(function)
                .map(|(start, _)| ENTRY_CALL_ENDS.map(|end| start + end))
                .unwrap_or_default(),
            queues,
            by_name: matches!(queue_source, QueueSource::Name { .. }),
            queue_source,
            offsets: offsets.ok(),
            flush_ranges: FLUSH_FUNCTIONS
                .iter()
                .filter_map(|f| ks.kernel_function(f))
                .collect(),
            kernel_btf: kernel_btf.map(OnceCell::from).unwrap_or_default(),
            loader: loader.into(),
            lacks_fprobe,
        };
        Ok((ks, target))
    }
}

/// Where the system queues' identities come from: `doctor` prints it, the Prometheus info
/// metric and the start-up line carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueSource {
    /// kallsyms lists the `system_*wq` variables (CONFIG_KALLSYMS_ALL).
    Kallsyms,
    /// The kernel image's exported-symbol table, placed and checked by kallsyms' functions.
    KernelImage {
        path: PathBuf,
        /// What the file was ("raw arm64 Image").
        format: String,
        anchor: &'static str,
        /// Exported functions besides the anchor that agree with kallsyms.
        agreeing: usize,
    },
    /// By name; `why` not by address, unless `--match name` asked for it.
    Name { why: Option<String> },
}

impl QueueSource {
    /// The value of `matched_by` in the Prometheus info metric: "kallsyms", "kernel image" or
    /// "name".
    pub fn matched_by(&self) -> &'static str {
        match self {
            QueueSource::Kallsyms => "kallsyms",
            QueueSource::KernelImage { .. } => "kernel image",
            QueueSource::Name { .. } => "name",
        }
    }

    /// Where the queues come from, as doctor and the start-up line say it.
    pub fn describe(&self) -> String {
        match self {
            QueueSource::Kallsyms => "from kallsyms".to_owned(),
            QueueSource::KernelImage {
                path,
                format,
                anchor,
                agreeing,
            } => format!(
                "from the kernel image {} ({format}; placed by {anchor}, {agreeing} more \
                 exported functions agree with kallsyms)",
                path.display()
            ),
            QueueSource::Name { why: None } => "as --match name asks".to_owned(),
            QueueSource::Name { why: Some(why) } => format!(
                "because kallsyms lists no system_*wq variables (CONFIG_KALLSYMS_ALL is off) and \
                 the kernel image cannot stand in: {why}"
            ),
        }
    }
}

/// The system queues and where they come from, or why they cannot be matched: kallsyms' data
/// symbols, else the kernel image's exported-symbol table (`image` reads it), else names
/// (`--match` can insist on addresses or on names).
fn queues_to_match(
    ks: &Kallsyms,
    offsets: std::result::Result<&Offsets, &anyhow::Error>,
    mode: MatchMode,
    image: impl FnOnce() -> Result<ksymtab::FromImage>,
) -> Result<(Vec<SystemQueue>, QueueSource)> {
    if ks.addresses_hidden() {
        bail!(
            "every address in {} is 0: {}",
            crate::kernel::kallsyms::PATH,
            hidden_addresses_remedy()
        );
    }
    let name_len = offsets.ok().map(|o| o.wq_name_len as usize);
    if mode == MatchMode::Name {
        return by_name(offsets, QueueSource::Name { why: None });
    }
    let found = queues::by_address(ks, name_len)?;
    if !found.is_empty() {
        return Ok((found, QueueSource::Kallsyms));
    }
    let image = image();
    crate::timing::mark("kernel image searched for system_*wq variables");
    let image = image.and_then(|f| {
        let vars = f.located.vars.iter().map(|(v, a)| (v.as_str(), *a));
        Ok((queues::from_vars(vars, name_len)?, f))
    });
    match image {
        Ok((queues, f)) => Ok((
            queues,
            QueueSource::KernelImage {
                path: f.path,
                format: f.format,
                anchor: f.located.anchor,
                agreeing: f.located.agreeing,
            },
        )),
        Err(e) if mode == MatchMode::Address => bail!(
            "kallsyms lists no system_*wq variables (CONFIG_KALLSYMS_ALL is off) and the kernel \
             image cannot stand in ({e:#}), so they cannot be matched by address; use --match \
             name (or auto)"
        ),
        Err(e) => by_name(
            offsets,
            QueueSource::Name {
                why: Some(format!("{e:#}")),
            },
        ),
    }
}

/// Name mode, which needs the name's length from BTF.
fn by_name(
    offsets: std::result::Result<&Offsets, &anyhow::Error>,
    source: QueueSource,
) -> Result<(Vec<SystemQueue>, QueueSource)> {
    let context = match &source {
        QueueSource::Name { why: Some(why) } => format!(
            "kallsyms lists no system_*wq variables (CONFIG_KALLSYMS_ALL is off) and the kernel \
             image cannot stand in ({why}), so system workqueues can only be matched by name, \
             and that needs kernel BTF (CONFIG_DEBUG_INFO_BTF)"
        ),
        _ => {
            "matching system workqueues by name needs kernel BTF (CONFIG_DEBUG_INFO_BTF)".to_owned()
        }
    };
    let o = offsets.map_err(|e| anyhow!("{e:#}")).context(context)?;
    Ok((queues::by_name(o.wq_name_len as usize), source))
}

/// What start-up reads from the kernel before it can load the probe, each fact once.
pub struct Kernel {
    /// `uname -r`: doctor's first line, and on every JSON record and `wqflush_info`.
    pub release: String,
    /// The symbol table, or why it is unusable.
    pub kallsyms: Result<Kallsyms>,
    /// The struct offsets from BTF, or why there are none.
    pub offsets: Result<Offsets>,
    kernel_btf: Option<Result<Btf, String>>,
    loader: Option<EbpfLoader<'static>>,
    lacks_fprobe: bool,
}

/// What start-up should know before it attaches, besides what every start-up reads.
#[derive(Clone, Copy, Default)]
pub struct Ahead {
    /// Only fentry will be tried: parse the BTF it needs now, in parallel.
    pub fentry_only: bool,
    /// `--attach auto`'s feature probe for kprobe-multi links (`probe::lacks_fprobe`), run in
    /// parallel: where the kernel has none, fentry's BTF is parsed in parallel too, and
    /// kprobe-multi is not loaded only to be refused at the link.
    pub lacks_fprobe: Option<fn() -> bool>,
}

/// Reads kallsyms, the struct offsets and aya's BTF in three threads. Each takes 0.1-0.4 s under
/// emulation and most of it is CPU (the kernel formatting kallsyms, then parsing): in parallel
/// they share both CPUs. `ahead` says what else to find out meanwhile (fentry starts without
/// its BTF otherwise: `--attach auto` starts with kprobe-multi, which needs none).
pub fn read(ahead: Ahead) -> Kernel {
    std::thread::scope(|s| {
        let offsets = s.spawn(|| {
            let offsets = btf::read_offsets();
            crate::timing::mark("BTF offsets read");
            offsets
        });
        let aya = s.spawn(|| {
            // EbpfLoader::new() parses the BTF for relocations, and fentry needs a parse of its
            // own; aya also probes the kernel's BPF features once.
            let lacks_fprobe = ahead.lacks_fprobe.is_some_and(|probe| probe());
            if ahead.lacks_fprobe.is_some() {
                crate::timing::mark(&format!("fprobe feature-probed (lacking: {lacks_fprobe})"));
            }
            let loader = EbpfLoader::new();
            aya::features();
            let fentry = ahead.fentry_only || lacks_fprobe;
            let kernel_btf = fentry.then(|| Btf::from_sys_fs().map_err(|e| format!("{e}")));
            crate::timing::mark("BTF parsed by aya, loader ready");
            (kernel_btf, Some(loader), lacks_fprobe)
        });
        let kallsyms = Kallsyms::load(queues::is_queue_var);
        crate::timing::mark("kallsyms read and parsed");
        let panicked = || anyhow::anyhow!("reading kernel BTF panicked");
        let offsets = offsets.join().unwrap_or_else(|_| Err(panicked()));
        let aya = aya
            .join()
            .unwrap_or_else(|_| (Some(Err(panicked().to_string())), None, false));
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Kernel {
            release: release.trim().to_owned(),
            kallsyms,
            offsets,
            kernel_btf: aya.0,
            loader: aya.1,
            lacks_fprobe: aya.2,
        }
    })
}

fn hidden_addresses_remedy() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        "kernel.kptr_restrict=2 hides them even from root; run `sysctl kernel.kptr_restrict=1`"
    } else {
        "the kernel hides them from unprivileged users; run wqflush as root (or with CAP_SYSLOG, \
         CAP_BPF and CAP_PERFMON)"
    }
}

/// What the probe attaches to and what it compares against.
pub struct Target {
    /// `uname -r`, which every JSON record and `wqflush_info` carry.
    pub release: String,
    /// `__flush_workqueue` (5.19+) or `flush_workqueue` (older).
    pub function: &'static str,
    pub queues: Vec<SystemQueue>,
    /// Whether the probe compares names (else pointers); `queue_source` says why.
    pub by_name: bool,
    /// Where the queues' addresses (or names) come from.
    pub queue_source: QueueSource,
    pub offsets: Option<Offsets>,
    /// [start, end) of the flush function and its wrappers, from kallsyms.
    pub flush_ranges: Vec<(u64, u64)>,
    /// Where the call patched into the flush function's entry returns to ([`ENTRY_CALL_ENDS`]
    /// past its start): the one return address a BPF trampoline's frame can hold that is the
    /// flush function's own, so fentry finds the caller's right above it.
    pub entry_returns: [u64; 2],
    /// The kernel's BTF as aya parsed it (fentry needs it), or why it could not be read.
    /// Parsed ahead of time when fentry is the only method asked for, else on its first use.
    pub kernel_btf: OnceCell<Result<Btf, String>>,
    /// A loader made ahead of time, for the first method tried.
    pub loader: Cell<Option<EbpfLoader<'static>>>,
    /// This kernel has no fprobe for kprobe-multi links, by the probe [`Ahead`] asked for.
    pub lacks_fprobe: bool,
}

impl Target {
    /// Drops what only attaching needs: aya's parsed BTF is megabytes a daemon should not keep.
    pub fn forget_btf(&mut self) {
        self.kernel_btf = Err("dropped once the probe was attached".to_owned()).into();
        self.loader.take();
    }
}

/// The workqueue flush core and its wrappers: frames a report should look through to find who
/// asked for the flush (per-kernel notes: `monitor_ebpf::kernels`):
/// - `__flush_workqueue`: the flush itself since 5.19 (c4f135d64382); `flush_workqueue` is then a
///   macro and leaves no frame.
/// - `flush_workqueue`: the flush itself before 5.19.
/// - `flush_scheduled_work`: an inline function before 5.19 (a frame only when not inlined), a
///   macro since.
/// - `drain_workqueue`: calls the flush in a loop; its caller is the one to blame.
pub const FLUSH_FUNCTIONS: &[&str] = &[
    "__flush_workqueue",
    "flush_workqueue",
    "flush_scheduled_work",
    "drain_workqueue",
];

/// The ends of the 5-byte `call __fentry__` that ftrace patches into every traceable x86-64
/// function: at the start, or behind a 4-byte `endbr64` (IBT kernels). No other call in the
/// function can return to either (a call there would overlap this one).
#[cfg(not(target_arch = "aarch64"))]
pub const ENTRY_CALL_ENDS: [u64; 2] = [5, 9];

/// The end of the `bl` that ftrace patches into every traceable arm64 function's entry
/// (`mov x9, x30; bl <trampoline>`, the two instructions -fpatchable-function-entry reserves
/// at the start), or behind a `bti c` landing pad. No other call in the function can return
/// there.
#[cfg(target_arch = "aarch64")]
pub const ENTRY_CALL_ENDS: [u64; 2] = [8, 12];

/// A kernel return address without its pointer-authentication code (arm64 signs the return
/// addresses functions save on the stack; the kernel's unwinder strips them, this is for any
/// that reach user space unstripped): the bits above the virtual address size are set again,
/// as the kernel's `ptrauth_strip_kernel_insn_pac` does, for an address in the kernel half
/// (bit 55). Kernel text is at or above 0xffff_8000_0000_0000 with 48- and 52-bit VAs alike.
/// x86-64 addresses are returned as they are.
pub fn strip_pac(addr: u64) -> u64 {
    if cfg!(target_arch = "aarch64") && addr & (1 << 55) != 0 {
        addr | 0xffff_0000_0000_0000
    } else {
        addr
    }
}

/// The function every workqueue flush passes through on this kernel.
pub fn flush_function(ks: &Kallsyms) -> Result<&'static str> {
    ["__flush_workqueue", "flush_workqueue"]
        .into_iter()
        .find(|f| ks.has_kernel_function(f))
        .ok_or_else(|| anyhow!("neither __flush_workqueue nor flush_workqueue is in kallsyms"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ksymtab::{FromImage, Located};

    /// kallsyms of a kernel without CONFIG_KALLSYMS_ALL: functions only.
    fn functions_only() -> Kallsyms {
        Kallsyms::parse(
            "ffff800008000000 T _text\nffff8000080b9c00 T __flush_workqueue\n",
            queues::is_queue_var,
        )
        .unwrap()
    }

    fn image_with(vars: &[(&str, u64)]) -> Result<FromImage> {
        Ok(FromImage {
            path: "/boot/vmlinuz-6.1.0-57-arm64".into(),
            format: "raw arm64 Image".into(),
            located: Located {
                vars: vars.iter().map(|(v, a)| (v.to_string(), *a)).collect(),
                anchor: "__flush_workqueue",
                agreeing: 12,
            },
        })
    }

    fn no_btf() -> anyhow::Error {
        anyhow!("no BTF")
    }

    #[test]
    fn without_data_symbols_the_image_gives_the_addresses() {
        let ks = functions_only();
        let vars = [("system_long_wq", 0x20), ("system_wq", 0x10)];
        let btf = no_btf();
        for mode in [MatchMode::Auto, MatchMode::Address] {
            let (queues, source) =
                queues_to_match(&ks, Err(&btf), mode, || image_with(&vars)).unwrap();
            let got: Vec<_> = queues.iter().map(|q| (q.label(), q.addr)).collect();
            assert_eq!(got, [("system_wq", 0x10), ("system_long_wq", 0x20)]);
            assert_eq!(source.matched_by(), "kernel image");
            let said = source.describe();
            assert!(
                said.starts_with("from the kernel image /boot/vmlinuz-6.1.0-57-arm64 (raw")
                    && said.contains("12 more exported functions agree with kallsyms"),
                "{said}"
            );
        }
        let err = queues_to_match(&ks, Err(&btf), MatchMode::Name, || -> Result<FromImage> {
            panic!("--match name reads no image")
        })
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("matching system workqueues by name needs"),
            "{err}"
        );
    }

    #[test]
    fn kallsyms_data_symbols_come_first() {
        let ks = Kallsyms::parse(
            "ffffffff810b5e20 T __flush_workqueue\nffffffff82a5e2c0 D system_wq\n",
            queues::is_queue_var,
        )
        .unwrap();
        let btf = no_btf();
        let (queues, source) = queues_to_match(&ks, Err(&btf), MatchMode::Auto, || {
            panic!("the image is not read when kallsyms has the variables")
        })
        .unwrap();
        assert_eq!((queues.len(), source), (1, QueueSource::Kallsyms));
    }

    #[test]
    fn why_the_image_could_not_stand_in_is_said() {
        let ks = functions_only();
        let btf = no_btf();
        let rejected = || Err(anyhow!("/boot/vmlinuz-x: it is not the running kernel"));
        let err = queues_to_match(&ks, Err(&btf), MatchMode::Address, rejected).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("not the running kernel") && err.contains("use --match name"),
            "{err}"
        );
        let err = queues_to_match(&ks, Err(&btf), MatchMode::Auto, rejected).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("not the running kernel") && err.contains("needs kernel BTF"),
            "{err}"
        );
        let btf = Offsets {
            wq_name_len: 32,
            ..Offsets::default()
        };
        let (queues, source) = queues_to_match(&ks, Ok(&btf), MatchMode::Auto, rejected).unwrap();
        assert!(queues.iter().all(|q| q.var.is_none()));
        assert_eq!(source.matched_by(), "name");
        assert!(
            source.describe().ends_with("not the running kernel"),
            "{source:?}"
        );
    }
}
