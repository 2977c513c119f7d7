use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// Builds the eBPF programs (monitor-ebpf's binary) with nightly + bpf-linker into OUT_DIR, from
/// where `include_bytes_aligned!` embeds the object into the wqflush binary.
fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitor-ebpf");
    let package = Package { name: "monitor-ebpf", root_dir, ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::default()).context(
        "building the eBPF programs failed; `cargo xtask setup` installs what they need \
         (nightly rust-src, bpf-linker)",
    )
}
