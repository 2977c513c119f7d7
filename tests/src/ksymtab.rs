//! Addresses of exported symbols in an uncompressed kernel image (arm64's `Image`), read from
//! its export table, for kernels whose kallsyms lacks data symbols and whose package ships only
//! a placeholder System.map (Debian's arm64 6.1).
//!
//! An export is a `struct kernel_symbol { int value_offset, name_offset, namespace_offset; }`
//! (arm64 has PREL32 relocations): each field holds the distance from itself to the symbol and
//! to its name in `__ksymtab_strings`, fixed at link time. The image is the kernel laid out
//! flat from `_text`, so a file offset is an address minus `_text`'s, and the distance between
//! two symbols found here is the distance at run time (KASLR moves the image as a whole).

use anyhow::{Result, bail};
use std::collections::BTreeMap;

/// The image offset of every exported symbol whose name `wanted` accepts, found by scanning
/// the image for `kernel_symbol` entries whose `name_offset` points at such a name.
pub fn exported(image: &[u8], wanted: impl Fn(&str) -> bool) -> Result<BTreeMap<String, u64>> {
    let names = name_strings(image, &wanted);
    let (Some(&lowest), Some(&highest)) = (names.keys().next(), names.keys().next_back()) else {
        return Ok(BTreeMap::new());
    };
    let mut found: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let read = |at: usize| -> Option<i64> {
        let bytes: [u8; 4] = image.get(at..at + 4)?.try_into().ok()?;
        Some(i32::from_le_bytes(bytes).into())
    };
    for entry in (0..image.len().saturating_sub(12)).step_by(4) {
        let Some(target) = read(entry + 4).map(|off| entry as i64 + 4 + off) else {
            continue;
        };
        if target < lowest as i64 || target > highest as i64 {
            continue;
        }
        let Some(name) = names.get(&(target as usize)) else {
            continue;
        };
        let Some(value) = read(entry).map(|off| entry as i64 + off) else {
            continue;
        };
        if (0..image.len() as i64).contains(&value) {
            found.entry(name.clone()).or_default().push(value as u64);
        }
    }
    let mut out = BTreeMap::new();
    for (name, mut values) in found {
        values.dedup();
        if values.len() != 1 {
            bail!("{name} has {} candidate export entries", values.len());
        }
        out.insert(name, values[0]);
    }
    Ok(out)
}

/// Offsets of the NUL-terminated strings (preceded by a NUL) that `wanted` accepts.
fn name_strings(image: &[u8], wanted: &impl Fn(&str) -> bool) -> BTreeMap<usize, String> {
    let mut names = BTreeMap::new();
    let mut start = 0;
    for (i, &b) in image.iter().enumerate() {
        if b != 0 {
            continue;
        }
        if i > start
            && start > 0
            && let Ok(name) = std::str::from_utf8(&image[start..i])
            && wanted(name)
        {
            names.insert(start, name.to_string());
        }
        start = i + 1;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image with strings at 0x40.., a function at 0x10, a variable at 0x30 and their
    /// export entries at 0x60 and 0x6c.
    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 0x80];
        img[0x41..0x46].copy_from_slice(b"f_one");
        img[0x47..0x4e].copy_from_slice(b"var_two");
        img[0x4f..0x56].copy_from_slice(b"var_six");
        let mut entry = |at: usize, value: i32, name: i32| {
            img[at..at + 4].copy_from_slice(&value.to_le_bytes());
            img[at + 4..at + 8].copy_from_slice(&name.to_le_bytes());
        };
        entry(0x60, 0x10 - 0x60, 0x41 - 0x64);
        entry(0x6c, 0x30 - 0x6c, 0x47 - 0x70);
        img
    }

    #[test]
    fn finds_exports_by_their_name_offsets() {
        let got =
            exported(&image(), |n| n.starts_with("f_") || n.starts_with("var_")).expect("scans");
        // var_six has a name but no export entry.
        assert_eq!(
            got,
            BTreeMap::from([("f_one".to_string(), 0x10), ("var_two".to_string(), 0x30)])
        );
        assert!(
            exported(&image(), |n| n == "none")
                .expect("scans")
                .is_empty()
        );
    }
}
