use which::which;

/// Rebuild the eBPF object when bpf-linker changes: a new linker (for a new LLVM) changes the
/// object even when no source did.
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_default();
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    // aya-build passes the architecture the programs are built for (src/arch.rs).
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\"))");
}
