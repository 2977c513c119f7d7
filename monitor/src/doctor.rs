//! `wqflush doctor`: what this kernel offers wqflush, each missing piece with its reason.

use anyhow::Result;

use crate::{
    btf,
    kallsyms::{self, Kallsyms},
    probe::{self, Method},
    queues,
    watch::{self, MatchMode},
};

/// Prints the report; Ok(true) when at least one attach method works.
pub fn run() -> Result<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel:           {}", release.trim());
    print_btf();
    match Kallsyms::load(queues::is_queue_var) {
        Ok(ks) => print_kallsyms(&ks),
        Err(e) => println!("kallsyms:         unusable: {e:#}"),
    }
    let target = match watch::prepare(MatchMode::Auto) {
        Ok((_, target)) => target,
        Err(e) => {
            println!("verdict:          wqflush cannot run here: {e:#}");
            return Ok(false);
        }
    };
    print_queues(&target);
    println!("attach methods (tried on {}):", target.function);
    let mut working = Vec::new();
    for &method in &[Method::Fentry, Method::Kprobe] {
        match probe::attach_with(&target, method) {
            Ok(_probe) => {
                println!("  {method}: available");
                working.push(method.to_string());
            }
            Err(e) => println!("  {method}: unavailable: {e:#}"),
        }
    }
    if working.is_empty() {
        println!(
            "verdict:          wqflush cannot probe this kernel; `cargo xtask demo` runs it under QEMU"
        );
    } else {
        println!(
            "verdict:          wqflush can run here ({})",
            working.join(", ")
        );
    }
    Ok(!working.is_empty())
}

fn print_btf() {
    match btf::read_offsets() {
        Ok(o) => println!(
            "BTF:              {}: workqueue_struct.name at +{} ({} bytes), task_struct.flags at +{}",
            btf::VMLINUX,
            o.wq_name,
            o.wq_name_len,
            o.task_flags
        ),
        Err(e) => println!(
            "BTF:              unavailable ({e:#}): no fentry, no name matching, no worker detection"
        ),
    }
}

fn print_kallsyms(ks: &Kallsyms) {
    let mode = if ks.addresses_hidden() {
        "addresses hidden (kernel.kptr_restrict): wqflush cannot work".to_owned()
    } else if queues::by_address(ks, None).is_ok_and(|q| q.is_empty()) {
        "no system_*wq variables (CONFIG_KALLSYMS_ALL off): queues matched by name".to_owned()
    } else {
        "system_*wq variables listed: queues matched by address".to_owned()
    };
    println!(
        "kallsyms:         {}: {} functions, {mode}",
        kallsyms::PATH,
        ks.text_symbol_count()
    );
}

fn print_queues(target: &probe::Target) {
    let how = if target.by_name {
        "by name"
    } else {
        "by address"
    };
    println!(
        "system workqueues ({}, matched {how}):",
        target.queues.len()
    );
    for q in &target.queues {
        let var = q.var.as_deref().unwrap_or("-");
        let name = q.name.as_deref().unwrap_or("?");
        let addr = if q.addr == 0 {
            String::new()
        } else {
            format!("{:#x}", q.addr)
        };
        println!("  {var:<40} {name:<32} {addr}");
    }
}
