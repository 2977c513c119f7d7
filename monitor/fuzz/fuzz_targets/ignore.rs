//! Ignore files: parsing never panics, every error names the file, and matching never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wqflush::output::ignore::IgnoreList;

fuzz_target!(|text: &str| {
    match IgnoreList::parse(text, "fuzz.ignore") {
        Ok(list) => {
            let _ = list.matches(Some("mod"), "caller.isra.0");
            let _ = list.matches(None, "caller");
        }
        Err(e) => assert!(format!("{e:#}").starts_with("fuzz.ignore:"), "{e:#}"),
    }
});
