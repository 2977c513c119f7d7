//! `wqflush scan` on damaged module files: the seed objects (seeds/flush.c, x86_64 and aarch64)
//! truncated and with bytes overwritten never panic, and whatever is found names a system queue.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const SEEDS: [&[u8]; 2] = [
    include_bytes!("../seeds/flush_x86_64.o"),
    include_bytes!("../seeds/flush_aarch64.o"),
];

fuzz_target!(|edit: (bool, u16, Vec<(u16, u8)>)| {
    let (arm, keep, patches) = edit;
    let mut data = SEEDS[usize::from(arm)].to_vec();
    for (at, byte) in patches {
        let len = data.len();
        data[usize::from(at) % len] = byte;
    }
    // Truncated by up to the whole file (keep = 0 keeps it whole).
    let len = data.len() - usize::from(keep) % data.len();
    data.truncate(len);
    if let Ok(sites) = wqflush::scan::sites_in(&data, Path::new("seed.ko")) {
        for site in sites {
            assert!(site.wq.starts_with("system_") && site.wq.ends_with("wq"), "{site:?}");
            assert!(site.calls > 0);
        }
    }
});
