//! /proc/kallsyms text: parsing never panics, and every address finds a sane location.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wqflush::kernel::kallsyms::Kallsyms;

fuzz_target!(|text: &str| {
    if let Ok(ks) = Kallsyms::parse(text, |name| name.starts_with("system_")) {
        for addr in [0, 1, u64::MAX, 0xffffffff81000000] {
            if let Some(loc) = ks.locate(addr) {
                assert!(loc.offset <= addr);
            }
        }
        let _ = ks.kernel_function("__flush_workqueue");
    }
});
