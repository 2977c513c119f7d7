use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// Builds the eBPF programs (monitor-ebpf's binary) with the pinned nightly + bpf-linker into
/// OUT_DIR, from where `include_bytes_aligned!` embeds the object into the wqflush binary.
fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitor-ebpf");
    let pin = format!("{root_dir}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={pin}");
    let nightly = std::fs::read_to_string(&pin)?
        .lines()
        .find_map(|l| Some(l.strip_prefix("channel = ")?.trim_matches('"').to_owned()))
        .with_context(|| format!("no `channel = \"...\"` in {pin}"))?;
    let package = Package {
        name: "monitor-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&nightly)).context(
        "building the eBPF programs failed; `cargo xtask setup` installs what they need \
         (nightly rust-src, bpf-linker)",
    )?;
    // With AYA_BUILD_SKIP (the fuzz targets, which never load a probe) aya-build writes no
    // object; an empty one lets the library build, and loading it fails with a clear error.
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("wqflush-ebpf");
    if std::env::var_os("AYA_BUILD_SKIP").is_some() && !object.exists() {
        std::fs::write(&object, b"")?;
    }
    Ok(())
}
