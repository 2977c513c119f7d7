//! One file that may hold debug info, opened for reading: a compressed module (xz, zstd, gzip,
//! by content) decompressed into memory, any other file read from disk as needed. The search
//! (debuginfo.rs) opens candidates with it and the loader (debug_object.rs) reads them.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The largest decompressed module accepted: a module with full DWARF is at most a few hundred
/// MB (amdgpu), and a hostile file must not grow without bound.
const MAX_DECOMPRESSED: u64 = 2 << 30;

/// Memory the xz decoder may take, KiB: the kernel compresses modules with a 1-2 MiB
/// dictionary (scripts/Makefile.modinst), `xz -9` takes 64 MiB.
const XZ_MEM_LIMIT_KB: u32 = 256 * 1024;

/// An ELF file to read: a compressed module decompressed into memory, any other file read from
/// disk as needed (a vmlinux with DWARF is hundreds of MB, most of it never needed).
pub struct DebugFile {
    path: PathBuf,
    contents: Contents,
}

pub(crate) enum Contents {
    Memory(Vec<u8>),
    Disk(File),
}

/// The compressions a module can be installed with (CONFIG_MODULE_COMPRESS_*), by magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"\xfd7zXZ\0") {
            Some(Compression::Xz)
        } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Compression::Zstd)
        } else if head.starts_with(b"\x1f\x8b") {
            Some(Compression::Gzip)
        } else {
            None
        }
    }
}

impl DebugFile {
    /// Opens `path`, decompressing it when it is an xz, zstd or gzip file (by content, not by
    /// name).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut head = [0u8; 6];
        let n = file
            .read_at(&mut head, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        let contents = match Compression::sniff(&head[..n]) {
            None => Contents::Disk(file),
            Some(kind) => Contents::Memory(
                decompress(kind, file)
                    .with_context(|| format!("decompressing {} ({kind:?})", path.display()))?,
            ),
        };
        Ok(DebugFile {
            path: path.to_owned(),
            contents,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn contents(&self) -> &Contents {
        &self.contents
    }
}

fn decompress(kind: Compression, file: File) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if kind == Compression::Xz {
        reserve_xz(&file, &mut out)?;
    }
    let input = BufReader::new(file);
    match kind {
        Compression::Xz => {
            let reader = lzma_rust2::XzReader::new_mem_limit(input, true, XZ_MEM_LIMIT_KB);
            read_capped(reader, &mut out)?;
        }
        Compression::Gzip => read_capped(flate2::read::MultiGzDecoder::new(input), &mut out)?,
        Compression::Zstd => decompress_zstd(input, &mut out)?,
    }
    Ok(out)
}

/// Room for the whole xz file at once, as its index declares: grown by doubling, the buffer of a
/// 29 MB amdgpu.ko would pass through 16 + 32 MB (`wqflush scan`'s peak memory). An index that
/// lies only costs a smaller reservation (capped, and only reserved, not touched) or regrowth.
fn reserve_xz(mut file: &File, out: &mut Vec<u8>) -> Result<()> {
    use std::io::{Seek as _, SeekFrom};
    const MAX_RESERVED: u64 = 512 << 20;
    if let Ok(size) = lzma_rust2::xz_uncompressed_size(file) {
        let size = usize::try_from(size.min(MAX_RESERVED)).unwrap_or(0);
        let _ = out.try_reserve_exact(size);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Every frame of a zstd file (the `zstd` tool writes one, concatenated files have more).
fn decompress_zstd(mut input: BufReader<File>, out: &mut Vec<u8>) -> Result<()> {
    while !input.fill_buf()?.is_empty() {
        let frame = ruzstd::decoding::StreamingDecoder::new(&mut input)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        read_capped(frame, out)?;
    }
    Ok(())
}

fn read_capped(reader: impl Read, out: &mut Vec<u8>) -> Result<()> {
    let room = MAX_DECOMPRESSED.saturating_sub(out.len() as u64);
    reader.take(room + 1).read_to_end(out)?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        bail!("larger than {MAX_DECOMPRESSED} bytes decompressed");
    }
    Ok(())
}
