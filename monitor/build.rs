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
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        if !object.exists() {
            std::fs::write(&object, b"")?;
        }
        return Ok(());
    }
    strip_dwarf(&object)
}

/// Removes the object's DWARF. bpf-linker derives the BTF the kernel needs from it, and the
/// BTF stays; but aya's parser reads the relocations of every section, so the DWARF and its
/// relocations (about 0.4 MB of the 0.75 MB object) would cost the daemon resident pages and
/// heap at every start (the object shrinks from 745 to 202 KB).
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path)?;
    let mut elf = object::build::elf::Builder::read(&*data)
        .with_context(|| format!("reading {}", path.display()))?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name.starts_with(b".rel.debug_") {
            section.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM names sections from the symbol string table; the writer wants a table of its own.
    let shstrtab = elf.sections.add();
    shstrtab.name = b".shstrtab"[..].into();
    shstrtab.sh_type = object::elf::SHT_STRTAB;
    shstrtab.data = object::build::elf::SectionData::SectionString;
    let mut out = Vec::new();
    elf.write(&mut out)
        .with_context(|| format!("writing {} without DWARF", path.display()))?;
    std::fs::write(path, out)?;
    Ok(())
}
