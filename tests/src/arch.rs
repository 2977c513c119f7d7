//! The guest architecture the harness boots (`WQFLUSH_ARCH`: `amd64`, the default, or `arm64`)
//! and every fact that differs between the two: Debian's name, QEMU's binary and machine, the
//! console and data channel, and the cross toolchain for the test module.

use anyhow::{Result, bail};
use std::ffi::OsString;
use std::fmt;
use std::path::Path;

/// A guest architecture with Debian kernels to test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

/// The environment variable that picks the architecture.
pub const ARCH_VAR: &str = "WQFLUSH_ARCH";

impl Arch {
    /// Every architecture wqflush is built, packaged and tested for.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Rust's target for the wqflush binary; the eBPF object follows it (aya-build sets
    /// `bpf_target_arch` from it).
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The machine name (`uname -m`), as in the tarball's name.
    pub fn machine(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The architecture `WQFLUSH_ARCH` names; `amd64` when it is unset or empty.
    pub fn current() -> Result<Arch> {
        match std::env::var(ARCH_VAR) {
            Ok(name) if !name.is_empty() => Arch::from_name(&name).ok_or_else(|| {
                anyhow::anyhow!("{ARCH_VAR}={name:?}: want `amd64` (the default) or `arm64`")
            }),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Arch::Amd64),
            Err(e) => bail!("{ARCH_VAR}: {e}"),
        }
    }

    /// `amd64` / `arm64` (also accepts `x86_64` / `aarch64`).
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// Debian's name, the suffix of its kernel packages and releases (`6.1.0-57-arm64`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The QEMU system emulator and the Debian package that has it.
    pub fn qemu_binary(self) -> (&'static str, &'static str) {
        match self {
            Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }

    /// Machine and CPU. /dev/kvm exists on the CI machines but hangs guests, so always TCG.
    /// arm64: `virt` with pointer authentication on, as real arm64 servers have it (return
    /// addresses signed in their top bits); `impdef` is the fast algorithm under TCG.
    pub fn qemu_machine_args(self) -> &'static [&'static str] {
        match self {
            Arch::Amd64 => &["-accel", "tcg", "-cpu", "max"],
            Arch::Arm64 => &["-M", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on"],
        }
    }

    /// The kernel's console device (the board's first UART).
    pub fn console(self) -> &'static str {
        match self {
            Arch::Amd64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// The guest device of the data channel (fd 3 in scenarios).
    pub fn data_tty(self) -> &'static str {
        match self {
            Arch::Amd64 => "/dev/ttyS1",
            // `virt` has one pl011; the second channel is a virtio console on PCI (Debian builds
            // virtio_pci in from 6.12 on, virtio_mmio as a module).
            Arch::Arm64 => "/dev/hvc0",
        }
    }

    /// QEMU arguments that connect the data channel to the host file `data`.
    pub fn data_channel_args(self, data: &Path) -> Vec<OsString> {
        let file = |prefix: &str| {
            let mut s = OsString::from(prefix);
            s.push(data);
            s
        };
        match self {
            Arch::Amd64 => vec!["-serial".into(), file("file:")],
            Arch::Arm64 => vec![
                "-device".into(),
                "virtio-serial-pci".into(),
                "-chardev".into(),
                file("file,id=data,path="),
                "-device".into(),
                "virtconsole,chardev=data".into(),
            ],
        }
    }

    /// What kbuild's `ARCH=` and `CROSS_COMPILE=` take to build modules for this guest on this
    /// (amd64) host; `None` for a native build.
    pub fn cross(self) -> Option<(&'static str, &'static str)> {
        match self {
            Arch::Amd64 => None,
            Arch::Arm64 => Some(("arm64", "aarch64-linux-gnu-")),
        }
    }

    /// The binutils program `tool` (`objdump`, `objcopy`, `readelf`) that reads this
    /// architecture's objects: the host's cannot read aarch64 modules.
    pub fn binutil(self, tool: &str) -> String {
        let prefix = self.cross().map_or("", |(_, prefix)| prefix);
        format!("{prefix}{tool}")
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in [Arch::Amd64, Arch::Arm64] {
            assert_eq!(Arch::from_name(arch.debian()), Some(arch));
        }
        assert_eq!(Arch::from_name("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_name("riscv64"), None);
    }

    #[test]
    fn per_arch_facts() {
        assert_eq!(Arch::Arm64.binutil("objdump"), "aarch64-linux-gnu-objdump");
        assert_eq!(Arch::Amd64.binutil("objdump"), "objdump");
        let data = Arch::Arm64.data_channel_args(Path::new("/t/data.log"));
        assert!(data.contains(&OsString::from("file,id=data,path=/t/data.log")));
        assert_eq!(
            Arch::Amd64.data_channel_args(Path::new("/t/d")),
            [OsString::from("-serial"), OsString::from("file:/t/d")]
        );
    }
}
