//! Call sites: flushes grouped by (system queue, calling frame), counted.

use std::collections::HashMap;

use crate::{
    events::Flush,
    symbolize::{self, Frame},
};

/// One place in the kernel that flushes one system queue.
#[derive(Clone, Debug)]
pub struct Site {
    pub queue: usize,
    /// The symbolized stack of the first sighting.
    pub frames: Vec<Frame>,
    /// Index into `frames` of the caller, if the stack had one.
    pub caller: Option<usize>,
    /// The first flush seen here.
    pub first: Flush,
    pub count: u64,
}

impl Site {
    pub fn caller(&self) -> Option<&Frame> {
        self.caller.map(|i| &self.frames[i])
    }
}

#[derive(Default)]
pub struct Sites {
    index: HashMap<(usize, String), usize>,
    list: Vec<Site>,
}

fn key(queue: usize, frames: &[Frame]) -> (usize, String) {
    // The return address inside the caller identifies the call site, across module reloads too.
    (
        queue,
        symbolize::caller(frames)
            .map(ToString::to_string)
            .unwrap_or_default(),
    )
}

impl Sites {
    pub fn is_new(&self, queue: usize, frames: &[Frame]) -> bool {
        !self.index.contains_key(&key(queue, frames))
    }

    /// Counts a flush; returns the site when this was its first sighting.
    pub fn record(&mut self, flush: Flush, frames: Vec<Frame>) -> Option<&Site> {
        let k = key(flush.queue, &frames);
        if let Some(&i) = self.index.get(&k) {
            self.list[i].count += 1;
            return None;
        }
        let caller =
            symbolize::caller(&frames).map(|c| frames.iter().position(|f| f == c).unwrap_or(0));
        self.index.insert(k, self.list.len());
        self.list.push(Site {
            queue: flush.queue,
            frames,
            caller,
            first: flush,
            count: 1,
        });
        self.list.last()
    }

    /// Sites by count, highest first; ties in order of first sighting.
    pub fn by_count(&self) -> Vec<&Site> {
        let mut v: Vec<&Site> = self.list.iter().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.count));
        v
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn total(&self) -> u64 {
        self.list.iter().map(|s| s.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{decode, encode, sample_event},
        kallsyms::Kallsyms,
    };

    const KALLSYMS: &str = "\
ffffffff810b5e20 T __flush_workqueue
ffffffff810b6300 t other
ffffffffc0a01000 t wqflush_test_flush_long\t[wqflush_test]
ffffffffc0a01040 t wqflush_test_write\t[wqflush_test]
";

    fn flush(queue: u32, stack: &[u64]) -> (Flush, Vec<Frame>) {
        let ks = Kallsyms::parse(KALLSYMS, |_| false).unwrap();
        let f = decode(&encode(&sample_event(queue, stack)), 4).unwrap();
        let frames = symbolize::symbolize(&ks, &f.stack);
        (f, frames)
    }

    #[test]
    fn dedups_by_queue_and_call_site_and_counts_exactly() {
        let mut sites = Sites::default();
        let a = [0xffffffff810b5e25, 0xffffffffc0a0101e, 0xffffffffc0a01050];
        let a_other_path = [0xffffffff810b5e25, 0xffffffffc0a0101e, 0xffffffff810b6310];
        let b = [0xffffffff810b5e25, 0xffffffffc0a01022];
        let (f, fr) = flush(1, &a);
        assert!(sites.is_new(1, &fr));
        assert_eq!(
            sites.record(f, fr).unwrap().caller().unwrap().to_string(),
            "wqflush_test_flush_long+0x1e [wqflush_test]"
        );
        for _ in 0..4 {
            let (f, fr) = flush(1, &a_other_path);
            assert!(
                sites.record(f, fr).is_none(),
                "same call site, other path above it"
            );
        }
        let (f, fr) = flush(1, &b);
        assert!(
            sites.record(f, fr).is_some(),
            "another call site in the same function"
        );
        let (f, fr) = flush(2, &a);
        assert!(sites.record(f, fr).is_some(), "same site, other queue");
        assert_eq!((sites.len(), sites.total()), (3, 7));
        let counts: Vec<u64> = sites.by_count().iter().map(|s| s.count).collect();
        assert_eq!(counts, [5, 1, 1]);
    }
}
