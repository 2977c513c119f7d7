//! Ring buffer records: decoding arbitrary bytes never panics and never yields an event that
//! names a queue or a stack outside what the record can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wqflush::sites::events::{MAX_FRAMES, decode};

fuzz_target!(|data: (u8, &[u8])| {
    let (nr_queues, bytes) = data;
    if let Ok(flush) = decode(bytes, usize::from(nr_queues)) {
        assert!(flush.queue < usize::from(nr_queues));
        assert!(flush.stack.len() <= MAX_FRAMES);
        if let Some(running) = &flush.running {
            assert!(running.queue.is_none_or(|q| (q as usize) < usize::from(nr_queues)));
        }
    }
});
