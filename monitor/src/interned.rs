//! Names that repeat across thousands of records, stored once: the function and module names of
//! frames, and the task and queue names of first sightings. A daemon holding 10,000 call sites
//! then pays a pointer for each instead of a copy each.

use std::{cell::RefCell, collections::HashSet, sync::Arc};

thread_local! {
    static NAMES: RefCell<HashSet<Arc<str>>> = RefCell::default();
}

/// The one shared copy of `name`.
pub fn intern(name: &str) -> Arc<str> {
    NAMES.with_borrow_mut(|names| match names.get(name) {
        Some(n) => n.clone(),
        None => {
            let n: Arc<str> = name.into();
            names.insert(n.clone());
            n
        }
    })
}
