//! The running kernel's exported-symbol table (`__ksymtab`), read from its image on disk: where
//! the exported `system_*wq` variables are on kernels whose kallsyms lists no data symbols
//! (CONFIG_KALLSYMS_ALL off, e.g. Debian arm64).
//!
//! Every `EXPORT_SYMBOL` leaves a `struct kernel_symbol` in `__ksymtab`/`__ksymtab_gpl`; with
//! CONFIG_HAVE_ARCH_PREL32_RELOCATIONS (arm64, x86_64) it is three 32-bit place-relative offsets
//! `{ value_offset, name_offset, namespace_offset }`, so the table gives each exported symbol's
//! distance from any other, and KASLR (which moves the image as a whole) keeps those distances.
//! kallsyms lists the exported functions, so one of them anchors the image in memory, and at
//! least 8 more prove that the file on disk is the running kernel: a variable's run-time address
//! is then kallsyms(anchor) + (its image address - the anchor's image address).
//!
//! A raw arm64 `Image` has no section headers, so the table is found by content: the wanted
//! names' strings first, then the 4-byte-aligned words that point at one of them.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use object::{Object as _, ObjectSegment as _};

use crate::kernel::{
    kallsyms::Kallsyms,
    queues::{QUEUE_VAR_PREFIX, QUEUE_VAR_SUFFIX},
};

/// Exported functions compared with kallsyms before the image is trusted, the flush function
/// first (it is the anchor). Chosen to be exported and out of line on every kernel from 5.10 on,
/// with names no static function shares; a kernel lacking some of them still has enough.
pub const CHECKS: &[&str] = &[
    "__flush_workqueue",
    "flush_workqueue",
    "queue_work_on",
    "queue_delayed_work_on",
    "mod_delayed_work_on",
    "flush_work",
    "flush_delayed_work",
    "cancel_work_sync",
    "cancel_delayed_work_sync",
    "destroy_workqueue",
    "drain_workqueue",
    "workqueue_set_max_active",
    "schedule_timeout",
    "msleep",
    "wake_up_process",
    "wait_for_completion",
    "kthread_stop",
    "synchronize_rcu",
    "call_rcu",
    "kfree",
    "vfree",
];

/// How many exported functions besides the anchor must agree with kallsyms, all of those tried.
pub const MIN_AGREEING: usize = 8;

/// The longest symbol name (KSYM_NAME_LEN): no name is searched for further back, or in a
/// neighbouring entry further on.
const MAX_NAME: usize = 512;

/// Size of one `struct kernel_symbol` with a namespace field (5.4+).
const ENTRY: usize = 12;

/// A decompressed kernel is 30-100 MB; a hostile file must not grow without bound.
const MAX_DECOMPRESSED: u64 = 512 << 20;

/// The kernel's xz uses a 32 MiB dictionary (scripts/xz_wrap.sh).
const XZ_MEM_LIMIT_KB: u32 = 128 * 1024;

/// A part of the image file and the link-time addresses it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: u64,
    off: usize,
    len: usize,
}

/// A kernel image's bytes and where each part of them sits in the kernel's address space: a raw
/// `Image` is one piece whose addresses are offsets from `_text`, an ELF `vmlinux` has its
/// program headers.
pub struct Image {
    bytes: Vec<u8>,
    segments: Vec<Segment>,
    /// What the file was, for messages: "raw arm64 Image", "ELF vmlinux", "bzImage (xz)"...
    pub format: String,
}

impl Image {
    /// Recognizes a raw arm64 `Image`, an ELF `vmlinux`, an x86 bzImage, an EFI zboot image or a
    /// whole-file gzip/xz/zstd of either of the first two; anything else is an error naming it.
    pub fn parse(bytes: Vec<u8>) -> Result<Image> {
        if let Some(image) = Image::uncompressed(&bytes, "")? {
            return Ok(image.with_bytes(bytes));
        }
        let (payload, container) = if let Some(p) = bzimage_payload(&bytes)? {
            (p, "bzImage")
        } else if let Some(p) = zboot_payload(&bytes)? {
            (p, "EFI zboot image")
        } else {
            (&bytes[..], "compressed file")
        };
        let kind = Compression::sniff(payload).ok_or_else(|| {
            anyhow!(
                "{}: not a kernel image wqflush can read (a raw arm64 Image, an ELF vmlinux, or \
                 one compressed with gzip, xz or zstd)",
                describe_unknown(container, payload)
            )
        })?;
        let inner = decompress(kind, payload)
            .with_context(|| format!("decompressing the {container} ({kind:?})"))?;
        let format = format!(" in a {container} ({kind:?})");
        match Image::uncompressed(&inner, &format)? {
            Some(image) => Ok(image.with_bytes(inner)),
            None => bail!("the {container} holds neither a raw arm64 Image nor an ELF vmlinux"),
        }
    }

    /// A raw arm64 Image or an ELF file, by magic; None for anything else. `suffix` is added to
    /// the format's name.
    fn uncompressed(bytes: &[u8], suffix: &str) -> Result<Option<Image>> {
        if bytes.get(0x38..0x3c) == Some(b"ARMd") {
            let seg = Segment {
                addr: 0,
                off: 0,
                len: bytes.len(),
            };
            return Ok(Some(Image::new(
                vec![seg],
                format!("raw arm64 Image{suffix}"),
            )));
        }
        if bytes.starts_with(b"\x7fELF") {
            let segments = elf_segments(bytes)?;
            return Ok(Some(Image::new(segments, format!("ELF vmlinux{suffix}"))));
        }
        Ok(None)
    }

    fn new(segments: Vec<Segment>, format: String) -> Image {
        Image {
            bytes: Vec::new(),
            segments,
            format,
        }
    }

    fn with_bytes(mut self, bytes: Vec<u8>) -> Image {
        self.bytes = bytes;
        self
    }

    /// A raw image whose addresses are its file offsets (tests build them).
    #[cfg(test)]
    fn raw(bytes: Vec<u8>) -> Image {
        let len = bytes.len();
        Image::new(
            vec![Segment {
                addr: 0,
                off: 0,
                len,
            }],
            "raw".into(),
        )
        .with_bytes(bytes)
    }

    /// The file offset holding link-time address `addr`, if the file holds it.
    fn offset_of(&self, addr: u64) -> Option<usize> {
        self.segments.iter().find_map(|s| {
            let d = addr.checked_sub(s.addr)?;
            (d < s.len as u64).then(|| s.off + d as usize)
        })
    }

    /// The 32-bit little-endian word at `off` (both architectures are little-endian).
    fn word(&self, off: usize) -> Option<i32> {
        let b = self.bytes.get(off..off.checked_add(4)?)?;
        Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The PT_LOAD segments of an ELF vmlinux, as file ranges and their virtual addresses.
fn elf_segments(bytes: &[u8]) -> Result<Vec<Segment>> {
    let elf = object::File::parse(bytes).context("parsing the ELF vmlinux")?;
    let segments: Vec<Segment> = elf
        .segments()
        .filter_map(|s| {
            let (off, len) = s.file_range();
            let end = off.checked_add(len)?;
            (len > 0 && end <= bytes.len() as u64).then_some(Segment {
                addr: s.address(),
                off: off as usize,
                len: len as usize,
            })
        })
        .collect();
    if segments.is_empty() {
        bail!("the ELF vmlinux has no loadable segment in the file");
    }
    Ok(segments)
}

/// The compressed kernel inside an x86 bzImage (boot protocol 2.08+: `payload_offset` and
/// `payload_length` in the setup header), or None when this is no bzImage.
fn bzimage_payload(bytes: &[u8]) -> Result<Option<&[u8]>> {
    if bytes.get(0x202..0x206) != Some(b"HdrS") {
        return Ok(None);
    }
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| le32(b) as usize);
    let version = bytes
        .get(0x206..0x208)
        .map_or(0, |b| b[0] as u16 | (b[1] as u16) << 8);
    let (Some(offset), Some(length)) = (u32_at(0x248), u32_at(0x24c)) else {
        bail!("the bzImage's setup header is cut short");
    };
    if version < 0x208 {
        bail!("the bzImage's boot protocol ({version:#x}) is older than 2.08 and names no payload");
    }
    let setup_sects = match bytes[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + offset;
    bytes
        .get(start..start + length)
        .map(Some)
        .ok_or_else(|| anyhow!("the bzImage's payload lies outside the file"))
}

/// The compressed kernel inside an EFI zboot image (arm64 CONFIG_EFI_ZBOOT: "zimg" at 4, then
/// the payload's offset and size), or None when this is none.
fn zboot_payload(bytes: &[u8]) -> Result<Option<&[u8]>> {
    if !bytes.starts_with(b"MZ") || bytes.get(4..8) != Some(b"zimg") {
        return Ok(None);
    }
    let (Some(o), Some(l)) = (bytes.get(8..12), bytes.get(12..16)) else {
        bail!("the zboot header is cut short");
    };
    let (start, len) = (le32(o) as usize, le32(l) as usize);
    bytes
        .get(start..start.saturating_add(len))
        .map(Some)
        .ok_or_else(|| anyhow!("the zboot image's payload lies outside the file"))
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// What an unreadable payload is, by its magic: the kernel's other compressions have one each.
fn describe_unknown(container: &str, payload: &[u8]) -> String {
    let what = if payload.starts_with(b"\x02\x21\x4c\x18") {
        "lz4"
    } else if payload.starts_with(b"\x89LZO") {
        "lzo"
    } else if payload.starts_with(b"BZh") {
        "bzip2"
    } else if payload.starts_with(b"\x5d\x00\x00") {
        "lzma"
    } else {
        return format!("a {container} in an unknown format");
    };
    format!("a {container} compressed with {what}, which wqflush cannot decompress")
}

/// The compressions wqflush can undo, by magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"\x1f\x8b") {
            Some(Compression::Gzip)
        } else if head.starts_with(b"\xfd7zXZ\0") {
            Some(Compression::Xz)
        } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// The first stream or frame only: the kernel's build appends the decompressed size after it.
fn decompress(kind: Compression, input: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let reader: Box<dyn Read + '_> = match kind {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            input,
            false,
            XZ_MEM_LIMIT_KB,
        )),
        Compression::Zstd => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| anyhow!("{e}"))?)
        }
    };
    reader.take(MAX_DECOMPRESSED + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        bail!("larger than {MAX_DECOMPRESSED} bytes decompressed");
    }
    Ok(out)
}

/// Exported symbols found in an image, with their link-time addresses.
#[derive(Debug, Default)]
pub struct Exports {
    /// Sorted by name; one address each.
    symbols: Vec<(String, u64)>,
    /// Names with entries that disagree (a word elsewhere that happens to point at the name):
    /// left out of `symbols`.
    pub ambiguous: Vec<String>,
}

impl Exports {
    pub fn get(&self, name: &str) -> Option<u64> {
        let i = self
            .symbols
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()?;
        Some(self.symbols[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.symbols.iter().map(|(n, a)| (n.as_str(), *a))
    }
}

/// The wanted names' strings in the image: (link-time address, name), sorted by address.
#[derive(Debug, Default)]
struct Targets {
    names: Vec<String>,
    at: Vec<(u64, u32)>,
}

impl Targets {
    fn add(&mut self, addr: u64, name: &[u8]) {
        let name = String::from_utf8_lossy(name);
        let i = match self.names.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.into_owned());
                self.names.len() - 1
            }
        };
        self.at.push((addr, i as u32));
    }
}

/// The exported symbols named in `names` and those matching the queue-variable pattern
/// (`system_*wq`, [`crate::kernel::queues::is_queue_var`]), found in one pass over the image
/// for the strings and one for the table.
pub fn exports(image: &Image, names: &[&str]) -> Exports {
    let targets = name_strings(image, names);
    let mut found = entries_naming(image, &targets);
    found.sort_unstable();
    found.dedup();
    let mut out = Exports::default();
    for group in found.chunk_by(|a, b| a.0 == b.0) {
        let name = targets.names[group[0].0 as usize].clone();
        match group {
            [(_, addr)] => out.symbols.push((name, *addr)),
            _ => out.ambiguous.push(name),
        }
    }
    out.symbols.sort_unstable();
    out.ambiguous.sort_unstable();
    out
}

/// Every place a wanted name ends at a NUL. Not only where a string starts: the linker merges
/// `__ksymtab_strings` and may keep a name as the tail of a longer one.
fn name_strings(image: &Image, names: &[&str]) -> Targets {
    // Most NULs end no wanted name; the two bytes before them say so without comparing. An
    // array, so that indexing it by a u16 needs no bounds check.
    let mut tails = [false; 1 << 16];
    let suffix = QUEUE_VAR_SUFFIX.as_bytes();
    for n in names.iter().map(|n| n.as_bytes()).chain([suffix]) {
        if n.len() >= 2 {
            tails[tail_key(n)] = true;
        }
    }
    let mut targets = Targets::default();
    for seg in &image.segments {
        let data = &image.bytes[seg.off..seg.off + seg.len];
        // One plain loop over the bytes: a third of a kernel's bytes are NULs, too many for
        // memchr to pay (measured at opt-level "s": 52 ms for 33 MB, memchr_iter 80).
        let mut last_two = 0u16;
        for (end, &b) in data.iter().enumerate() {
            if b == 0 && tails[last_two as usize] {
                // The string this NUL ends, as far back as a name can reach.
                let from = end.saturating_sub(MAX_NAME);
                let start = data[from..end]
                    .iter()
                    .rposition(|&b| b == 0)
                    .map_or(from, |i| from + i + 1);
                wanted_in(
                    &data[start..end],
                    seg.addr + start as u64,
                    names,
                    &mut targets,
                );
            }
            last_two = (last_two << 8) | b as u16;
        }
    }
    targets.at.sort_unstable();
    targets.at.dedup();
    targets
}

/// The wanted names that `piece` (a string at `addr`) ends with, and the queue variables' names
/// it ends with.
fn wanted_in(piece: &[u8], addr: u64, names: &[&str], targets: &mut Targets) {
    for n in names.iter().map(|n| n.as_bytes()) {
        if piece.ends_with(n) {
            targets.add(addr + (piece.len() - n.len()) as u64, n);
        }
    }
    if piece.ends_with(QUEUE_VAR_SUFFIX.as_bytes()) {
        queue_vars_in(piece, addr, targets);
    }
}

fn tail_key(s: &[u8]) -> usize {
    ((s[s.len() - 2] as usize) << 8) | s[s.len() - 1] as usize
}

/// Each tail of `piece` (at `addr`) that is a queue variable's name.
fn queue_vars_in(piece: &[u8], addr: u64, targets: &mut Targets) {
    let prefix = QUEUE_VAR_PREFIX.as_bytes();
    for i in 0..piece.len().saturating_sub(prefix.len()) {
        let tail = &piece[i..];
        if tail.starts_with(prefix) && tail.iter().all(|&b| is_symbol_byte(b)) {
            targets.add(addr + i as u64, tail);
        }
    }
}

fn is_symbol_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'$'
}

/// (name, value) of each table entry whose name field points at a target. Every aligned word is
/// read as a name field; one that hits a target makes an entry when it lies in a sorted table
/// ([`in_sorted_table`]).
fn entries_naming(image: &Image, targets: &Targets) -> Vec<(u32, u64)> {
    // Most words point nowhere near a target: a bit per low address bits rules them out
    // before a search (a few hundred targets set well under 1% of the bits).
    let mut bits = vec![0u64; FILTER_BITS / 64];
    for &(addr, _) in &targets.at {
        let b = addr as usize % FILTER_BITS;
        bits[b / 64] |= 1 << (b % 64);
    }
    let mut found = Vec::new();
    for seg in &image.segments {
        let skew = (4 - (seg.addr % 4) as usize) % 4;
        let Some(data) = image.bytes.get(seg.off + skew..seg.off + seg.len) else {
            continue;
        };
        for (k, w) in data.chunks_exact(4).enumerate() {
            let field = seg.addr + (skew + 4 * k) as u64;
            let rel = i32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let points_at = field.wrapping_add_signed(rel.into());
            let b = points_at as usize % FILTER_BITS;
            if bits[b / 64] & (1 << (b % 64)) == 0 {
                continue;
            }
            if let Some(entry) = entry_at(image, targets, field, points_at) {
                found.push(entry);
            }
        }
    }
    found
}

/// Bits of the filter [`entries_naming`] reads for every word: 128 KiB, which stays in cache.
const FILTER_BITS: usize = 1 << 20;

/// The (name, value) of the entry whose name field is at `field` and points at `points_at`,
/// when that is a target and the entry lies in a sorted table.
fn entry_at(image: &Image, targets: &Targets, field: u64, points_at: u64) -> Option<(u32, u64)> {
    let i = targets.at.binary_search_by_key(&points_at, |t| t.0).ok()?;
    let value_field = field.wrapping_sub(4);
    let rel = image.offset_of(value_field).and_then(|o| image.word(o))?;
    in_sorted_table(image, field)
        .then(|| (targets.at[i].1, value_field.wrapping_add_signed(rel.into())))
}

/// Whether the name field at `field` lies in a table sorted by name, as the kernel's are (it
/// binary-searches them): [`RUN`] entries around it name symbols in strictly increasing order.
/// Other arrays of place-relative string pointers (tracepoint and static-call names) can point
/// at a wanted name too; they are not sorted tables of symbol names.
fn in_sorted_table(image: &Image, field: u64) -> bool {
    let Some(name) = name_at(image, field) else {
        return false;
    };
    let run = |step: i64| {
        let mut prev = name;
        (1..=RUN)
            .map_while(|k| {
                let here = name_at(image, field.wrapping_add_signed(step * k as i64))?;
                let ordered = if step < 0 { here < prev } else { here > prev };
                prev = here;
                ordered.then_some(())
            })
            .count()
    };
    run(-(ENTRY as i64)) + run(ENTRY as i64) >= RUN
}

/// Entries around a candidate that must be in order, in all.
const RUN: usize = 8;

/// The symbol name the name field at `field` points at, if it is one.
fn name_at(image: &Image, field: u64) -> Option<&[u8]> {
    let rel = image.offset_of(field).and_then(|o| image.word(o))?;
    let at = image.offset_of(field.wrapping_add_signed(rel.into()))?;
    let head = &image.bytes[at..image.bytes.len().min(at + MAX_NAME + 1)];
    let len = head.iter().position(|&b| b == 0)?;
    (len > 0 && head[..len].iter().all(|&b| is_symbol_byte(b))).then_some(&head[..len])
}

/// The queue variables' run-time addresses, and what vouches for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// `system_*wq` variable -> run-time address, by name.
    pub vars: Vec<(String, u64)>,
    /// The exported function whose kallsyms address places the image in memory.
    pub anchor: &'static str,
    /// Further exported functions whose predicted addresses equal kallsyms' (all those tried).
    pub agreeing: usize,
}

/// Places the image's exports in memory by `kernel_function` (kallsyms: a function's run-time
/// address), or says why the image cannot be trusted: a function that disagrees, or too few to
/// compare.
pub fn locate(exports: &Exports, kernel_function: impl Fn(&str) -> Option<u64>) -> Result<Located> {
    let pairs: Vec<(&'static str, u64, u64)> = CHECKS
        .iter()
        .filter_map(|&n| Some((n, exports.get(n)?, kernel_function(n)?)))
        .collect();
    let Some(&(anchor, image_addr, run_addr)) = pairs.first() else {
        bail!(
            "none of the {} exported functions it checks is both in its symbol table and in kallsyms",
            CHECKS.len()
        );
    };
    let shift = run_addr.wrapping_sub(image_addr);
    if let Some((name, image_addr, run_addr)) =
        pairs.iter().find(|p| p.1.wrapping_add(shift) != p.2)
    {
        bail!(
            "it is not the running kernel: placed by {anchor}, it has {name} at {:#x}, kallsyms at \
             {run_addr:#x}",
            image_addr.wrapping_add(shift)
        );
    }
    let agreeing = pairs.len() - 1;
    if agreeing < MIN_AGREEING {
        bail!(
            "only {agreeing} exported functions besides {anchor} could be compared with kallsyms; \
             {MIN_AGREEING} must agree before it is trusted"
        );
    }
    if let Some(name) = exports.ambiguous.iter().find(|n| is_queue_name(n)) {
        bail!("its symbol table seems to have two different entries for {name}");
    }
    let vars: Vec<(String, u64)> = exports
        .iter()
        .filter(|(n, _)| is_queue_name(n))
        .map(|(n, a)| (n.to_owned(), a.wrapping_add(shift)))
        .collect();
    if vars.is_empty() {
        bail!("it exports no system_*wq variables");
    }
    Ok(Located {
        vars,
        anchor,
        agreeing,
    })
}

fn is_queue_name(name: &str) -> bool {
    crate::kernel::queues::is_queue_var(name)
}

/// Where distributions install the running kernel's image, in the order they are tried.
pub fn image_paths(release: &str) -> Vec<PathBuf> {
    [
        format!("/boot/vmlinuz-{release}"),
        format!("/boot/Image-{release}"),
        format!("/boot/vmlinux-{release}"),
        // Where Debian's 7.x packages (linux-binary-*) install it; /lib is /usr/lib on a
        // merged-/usr system, not on every one.
        format!("/lib/modules/{release}/vmlinuz"),
        format!("/usr/lib/modules/{release}/vmlinuz"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// The queue variables as the running kernel's image places them, and which file it was.
#[derive(Debug)]
pub struct FromImage {
    pub path: PathBuf,
    /// What the file was ("raw arm64 Image", "ELF vmlinux in a bzImage (Zstd)").
    pub format: String,
    pub located: Located,
}

/// The largest image file read: vmlinuz is 10-60 MB, a vmlinux without DWARF under 100.
const MAX_FILE: u64 = 256 << 20;

/// Finds the running kernel's image ([`image_paths`]) and the queue variables in it, checked
/// against kallsyms; the error says what each file that exists lacked, or that none does.
pub fn from_running_kernel(release: &str, ks: &Kallsyms) -> Result<FromImage> {
    let mut errors = Vec::new();
    let paths = image_paths(release);
    for path in &paths {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            _ => {}
        }
        match from_file(path, ks) {
            Ok(found) => return Ok(found),
            Err(e) => errors.push(format!("{}: {e:#}", path.display())),
        }
    }
    if errors.is_empty() {
        let tried: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        bail!("no kernel image found (looked for {})", tried.join(", "));
    }
    bail!("{}", errors.join("; "))
}

/// One image file, read whole (and decompressed), searched and checked against kallsyms.
pub fn from_file(path: &Path, ks: &Kallsyms) -> Result<FromImage> {
    let file = std::fs::File::open(path).context("cannot open it")?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .context("cannot read it")?;
    if bytes.len() as u64 > MAX_FILE {
        bail!("larger than {MAX_FILE} bytes: a vmlinux with debug info, too large to read");
    }
    let image = Image::parse(bytes)?;
    let exports = exports(&image, CHECKS);
    let located = locate(&exports, |n| ks.kernel_function(n).map(|(start, _)| start))
        .with_context(|| format!("the {}", image.format))?;
    Ok(FromImage {
        path: path.to_owned(),
        format: image.format,
        located,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw image under construction: strings and entries placed at chosen offsets.
    struct Synth {
        bytes: Vec<u8>,
    }

    impl Synth {
        fn new(len: usize) -> Self {
            // Filler that is neither NUL nor a name byte, as code mostly is.
            Synth {
                bytes: vec![0xa5; len],
            }
        }

        /// `name` at `at`, with a NUL on either side.
        fn string(&mut self, at: usize, name: &str) -> usize {
            self.bytes[at - 1] = 0;
            self.bytes[at..at + name.len()].copy_from_slice(name.as_bytes());
            self.bytes[at + name.len()] = 0;
            at
        }

        fn rel(&mut self, field: usize, target: usize) {
            let rel = (target as i64 - field as i64) as i32;
            self.bytes[field..field + 4].copy_from_slice(&rel.to_le_bytes());
        }

        /// A table at `at` of (value, name string) entries, namespace offsets pointing at `ns`.
        fn table(&mut self, at: usize, entries: &[(usize, usize)], ns: usize) {
            for (i, &(value, name)) in entries.iter().enumerate() {
                let e = at + i * ENTRY;
                self.rel(e, value);
                self.rel(e + 4, name);
                self.rel(e + 8, ns);
            }
        }

        fn image(self) -> Image {
            Image::raw(self.bytes)
        }
    }

    /// Functions at 0x1000 + 0x100 * i (CHECKS order), variables at 0xc000 + 8 * i.
    const VARS: &[&str] = &["system_wq", "system_long_wq", "system_percpu_wq"];

    fn func_addr(i: usize) -> usize {
        0x1000 + 0x100 * i
    }

    fn var_addr(i: usize) -> usize {
        0xc000 + 8 * i
    }

    /// Strings at 0x8000; entries sorted by name as the kernel's are, the first half in a table
    /// below the strings (positive name offsets), the rest in one above (negative). Fillers make
    /// each table long enough to be recognized as one.
    fn synthetic(checks: &[&str]) -> Image {
        let mut s = Synth::new(0x10000);
        let ns = s.string(0x8001, "X");
        let fillers: Vec<String> = (0..2 * RUN).map(|i| format!("filler_{i:02}")).collect();
        let named = checks
            .iter()
            .enumerate()
            .map(|(i, n)| (func_addr(i), *n))
            .chain(VARS.iter().enumerate().map(|(i, n)| (var_addr(i), *n)))
            .chain(fillers.iter().map(|f| (0x3000, f.as_str())));
        let mut at = 0x8010;
        let mut entries = Vec::new();
        for (value, name) in named {
            entries.push((name, value, s.string(at, name)));
            at += name.len() + 1;
        }
        entries.sort_unstable();
        let entries: Vec<(usize, usize)> = entries.iter().map(|e| (e.1, e.2)).collect();
        let half = entries.len() / 2;
        s.table(0x4000, &entries[..half], ns);
        s.table(0xa000, &entries[half..], ns);
        s.image()
    }

    fn kallsyms_at(shift: u64) -> impl Fn(&str) -> Option<u64> {
        move |name| {
            let i = CHECKS.iter().position(|c| *c == name)?;
            Some(func_addr(i) as u64 + shift)
        }
    }

    const SHIFT: u64 = 0xffff_8000_1234_0000;

    #[test]
    fn finds_entries_above_and_below_the_strings() {
        let image = synthetic(CHECKS);
        let ex = exports(&image, CHECKS);
        assert!(ex.ambiguous.is_empty(), "{:?}", ex.ambiguous);
        for (i, name) in CHECKS.iter().enumerate() {
            assert_eq!(ex.get(name), Some(func_addr(i) as u64), "{name}");
        }
        for (i, var) in VARS.iter().enumerate() {
            assert_eq!(ex.get(var), Some(var_addr(i) as u64), "{var}");
        }
        assert_eq!(ex.iter().count(), CHECKS.len() + VARS.len());
        assert!(
            ex.get("filler_00").is_none(),
            "only wanted names are looked for"
        );
    }

    #[test]
    fn places_the_variables_by_kallsyms() {
        let image = synthetic(CHECKS);
        let located = locate(&exports(&image, CHECKS), kallsyms_at(SHIFT)).unwrap();
        assert_eq!(located.anchor, "__flush_workqueue");
        assert_eq!(located.agreeing, CHECKS.len() - 1);
        let mut want: Vec<(String, u64)> = VARS
            .iter()
            .enumerate()
            .map(|(i, v)| (v.to_string(), var_addr(i) as u64 + SHIFT))
            .collect();
        want.sort();
        assert_eq!(located.vars, want);
    }

    #[test]
    fn a_name_that_appears_twice_is_found_where_the_table_points() {
        let mut image = synthetic(CHECKS);
        // Another "system_wq", and a tail-merged one inside a longer string: no entry points
        // at either.
        let copy = b"\0system_wq\0my_system_wq\0";
        image.bytes[0x2000..0x2000 + copy.len()].copy_from_slice(copy);
        let ex = exports(&image, CHECKS);
        assert_eq!(ex.get("system_wq"), Some(var_addr(0) as u64));
        assert!(ex.ambiguous.is_empty());
    }

    #[test]
    fn a_stray_word_pointing_at_a_name_is_not_an_entry() {
        let mut image = synthetic(CHECKS);
        let name = 0x8010; // CHECKS[0]'s string
        let field = 0x3000;
        let rel = (name as i64 - field as i64) as i32;
        image.bytes[field..field + 4].copy_from_slice(&rel.to_le_bytes());
        let ex = exports(&image, CHECKS);
        assert_eq!(ex.get(CHECKS[0]), Some(func_addr(0) as u64));
        assert!(ex.ambiguous.is_empty());
    }

    /// An array of string offsets like a table, but not sorted by name (tracepoint names).
    #[test]
    fn an_unsorted_array_pointing_at_a_name_is_not_a_table() {
        for sorted in [true, false] {
            let mut s = Synth::new(0x10000);
            let ns = s.string(0x8001, "X");
            let mut at = 0x8010;
            let mut table = Vec::new();
            for i in 0..2 * RUN {
                let name = match i {
                    _ if i == RUN => "system_wq".to_owned(),
                    _ if i < RUN => format!("n{i:02}"),
                    _ => format!("z{i:02}"),
                };
                table.push((0x1000 + i, s.string(at, &name)));
                at += name.len() + 1;
            }
            if !sorted {
                table.swap(RUN - 4, RUN - 2);
                table.swap(RUN + 2, RUN + 4);
            }
            s.table(0x4000, &table, ns);
            let found = exports(&s.image(), CHECKS).get("system_wq");
            assert_eq!(
                found,
                sorted.then_some(0x1000 + RUN as u64),
                "sorted: {sorted}"
            );
        }
    }

    #[test]
    fn two_tables_that_disagree_make_a_name_ambiguous() {
        let mut s = Synth::new(0x10000);
        let ns = s.string(0x8001, "X");
        let wq = s.string(0x8010, "system_wq");
        let mut at = 0x8020;
        let mut table = Vec::new();
        for i in 0..RUN {
            let name = format!("a{i}");
            table.push((0x1100, s.string(at, &name)));
            at += name.len() + 1;
        }
        let mut other = table.clone();
        table.push((0x1000, wq));
        other.push((0x1200, wq));
        s.table(0x4000, &table, ns);
        s.table(0x5000, &other, ns);
        let ex = exports(&s.image(), CHECKS);
        assert_eq!(ex.ambiguous, ["system_wq"]);
        assert_eq!(ex.get("system_wq"), None);
        let err = locate(&ex, kallsyms_at(SHIFT)).unwrap_err().to_string();
        assert!(err.contains("none of the"), "{err}");
    }

    #[test]
    fn an_image_that_disagrees_with_kallsyms_is_rejected() {
        let image = synthetic(CHECKS);
        let ex = exports(&image, CHECKS);
        let off_by_one = |name: &str| {
            let addr = kallsyms_at(SHIFT)(name)?;
            Some(if name == "flush_work" { addr + 4 } else { addr })
        };
        let err = locate(&ex, off_by_one).unwrap_err().to_string();
        assert!(
            err.contains("not the running kernel") && err.contains("flush_work"),
            "{err}"
        );
    }

    #[test]
    fn too_few_functions_to_compare_is_rejected() {
        let image = synthetic(&CHECKS[..MIN_AGREEING]);
        let err = locate(&exports(&image, CHECKS), kallsyms_at(SHIFT))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("only {}", MIN_AGREEING - 1)), "{err}");
        let enough = synthetic(&CHECKS[..=MIN_AGREEING]);
        let located = locate(&exports(&enough, CHECKS), kallsyms_at(SHIFT)).unwrap();
        assert_eq!(located.agreeing, MIN_AGREEING);
        let err = locate(&exports(&enough, CHECKS), |_| None).unwrap_err();
        assert!(err.to_string().contains("none of the"), "{err}");
    }

    #[test]
    fn recognizes_formats_and_names_what_it_cannot_read() {
        let mut arm64 = vec![0u8; 0x100];
        arm64[0x38..0x3c].copy_from_slice(b"ARMd");
        assert_eq!(
            Image::parse(arm64.clone()).unwrap().format,
            "raw arm64 Image"
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &arm64).unwrap();
        let gz = gz.finish().unwrap();
        let image = Image::parse(gz.clone()).unwrap();
        assert_eq!(image.format, "raw arm64 Image in a compressed file (Gzip)");
        assert_eq!(image.bytes, arm64);
        // A bzImage whose payload is lz4, as CONFIG_KERNEL_LZ4 makes it.
        let mut bz = vec![0u8; 0x1000];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&0x10u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&0x20u32.to_le_bytes());
        bz[0x410..0x414].copy_from_slice(b"\x02\x21\x4c\x18");
        let err = Image::parse(bz.clone()).err().unwrap().to_string();
        assert!(err.contains("bzImage compressed with lz4"), "{err}");
        bz[0x410..0x410 + gz.len().min(0x20)].copy_from_slice(&gz[..gz.len().min(0x20)]);
        assert!(Image::parse(bz).is_err(), "a payload cut short is an error");
        let err = Image::parse(b"not a kernel".to_vec())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown format"), "{err}");
        assert!(Image::parse(Vec::new()).is_err());
    }

    /// A real image: `WQFLUSH_KERNEL_IMAGE` (a vmlinuz, Image or vmlinux). Prints what it
    /// exports and how long that took (in a test build: the shipped one is 3-20 times faster);
    /// with `WQFLUSH_KERNEL_SYMBOLS` (that kernel's
    /// /proc/kallsyms, taken with CONFIG_KALLSYMS_ALL so that the data symbols are listed) also
    /// checks every variable found against it. Run with `cargo test -p wqflush real_image --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "needs a kernel image"]
    fn real_image() {
        let Some(path) = std::env::var_os("WQFLUSH_KERNEL_IMAGE") else {
            panic!("set WQFLUSH_KERNEL_IMAGE");
        };
        let start = std::time::Instant::now();
        let image = Image::parse(std::fs::read(&path).unwrap()).unwrap();
        let parsed = start.elapsed();
        let ex = exports(&image, CHECKS);
        println!(
            "{}: read and parsed in {parsed:?}, searched in {:?}",
            image.format,
            start.elapsed() - parsed
        );
        for (name, addr) in ex.iter() {
            println!("  {addr:#018x} {name}");
        }
        println!("  ambiguous: {:?}", ex.ambiguous);
        if let Some(symbols) = std::env::var_os("WQFLUSH_KERNEL_SYMBOLS") {
            check_against(&ex, &std::fs::read_to_string(symbols).unwrap());
        }
    }

    fn check_against(ex: &Exports, kallsyms: &str) {
        let ks = Kallsyms::parse(kallsyms, crate::kernel::queues::is_queue_var).unwrap();
        let start = std::time::Instant::now();
        let located = locate(ex, |n| ks.kernel_function(n).map(|(a, _)| a)).unwrap();
        println!("placed by kallsyms in {:?}", start.elapsed());
        let data: Vec<(&str, u64)> = ks
            .data()
            .iter()
            .map(|d| (d.name.as_str(), d.addr))
            .collect();
        for (var, addr) in &located.vars {
            assert!(
                data.contains(&(var.as_str(), *addr)),
                "{var} at {addr:#x}: {data:x?}"
            );
        }
        println!(
            "{} of {} system_*wq variables in kallsyms found, all at their addresses; {} \
             functions agree",
            located.vars.len(),
            data.len(),
            located.agreeing
        );
    }
}
