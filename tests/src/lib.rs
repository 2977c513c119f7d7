//! QEMU test harness for wqflush.
//!
//! The pieces are independent so `xtask` and the integration tests can combine them:
//! [`debian::prepare_kernel`] fetches a Debian kernel with its headers, [`module::build_module`]
//! builds the `wqflush_test` module against it, [`initramfs::build_initramfs`] packs a busybox
//! guest that runs a shell scenario, [`qemu::boot`] runs it under TCG and returns what the guest
//! wrote, and [`oracle`] parses an independent tracefs kprobe record of every workqueue flush.

pub mod arch;
pub mod debian;
pub mod foreign;
pub mod guest;
mod guest_modules;
pub mod host_program;
pub mod initramfs;
pub mod ksymtab;
pub mod module;
pub mod oracle;
pub mod qemu;
pub mod records;
pub mod scan_objects;
pub mod scan_oracle;
pub mod scenario;
mod systemd_foreign;
pub mod systemd_guest;
pub mod util;

use std::path::PathBuf;

pub use arch::Arch;
pub use debian::{Kernel, Series, prepare_kernel};
pub use initramfs::build_initramfs;
pub use module::{MODULE_GUEST_PATH, build_module, build_module_variant};
pub use oracle::{FlushEvent, Oracle, parse_trace};
pub use qemu::{VmRun, boot, boot_with, run_scenario};
pub use scenario::{Guest, PerKernel, boot_scenario, wqflush_bin};
pub use systemd_guest::{Rootfs, boot_systemd_scenario, prepare_rootfs, run_systemd_scenario};

/// Where kernels, module builds and initramfs images are cached between runs.
///
/// `WQFLUSH_VM_CACHE` overrides it; the default lives inside the (gitignored) workspace
/// `.cache/` so it survives `cargo clean` and is shared by xtask and the tests.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("WQFLUSH_VM_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".cache").join("vm"),
    }
}

/// The Cargo workspace this crate belongs to (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// One `#[test]` per kernel and check: `per_kernel_tests! { test_name => check_fn, ... }` makes
/// `debian_5_10::test_name`, `debian_6_1::test_name`, `debian_6_12::test_name` and
/// `debian_7::test_name`, each calling `check_fn(series)` (`cargo xtask test --kernel 6.12`
/// runs one of them). They boot QEMU, so they are ignored by plain `cargo test`;
/// `cargo xtask test` includes them.
#[macro_export]
macro_rules! per_kernel_tests {
    ($($name:ident => $check:ident),* $(,)?) => {
        $crate::per_kernel_tests!(@series debian_5_10, V5_10; $($name => $check),*);
        $crate::per_kernel_tests!(@series debian_6_1, V6_1; $($name => $check),*);
        $crate::per_kernel_tests!(@series debian_6_12, V6_12; $($name => $check),*);
        $crate::per_kernel_tests!(@series debian_7, V7; $($name => $check),*);
    };
    (@series $module:ident, $series:ident; $($name:ident => $check:ident),*) => {
        mod $module {
            $(
                #[test]
                #[ignore = "boots QEMU; run through cargo xtask test"]
                fn $name() -> anyhow::Result<()> {
                    super::$check($crate::Series::$series)
                }
            )*
        }
    };
}
