//! One debug file loaded for line lookups: its DWARF under addr2line, and its function symbols
//! by name, both in one address space.
//!
//! vmlinux (and any linked file) has real addresses. A kernel module is an ET_REL file: every
//! section starts at 0, so `.text`, `.init.text`, `.exit.text` and `.text.unlikely` overlap, and
//! the DWARF's addresses are relocations against those sections (`.rela.debug_info`,
//! `.rela.debug_line`, ...). As libdwfl does for `.ko` files, each allocated section is given a
//! base address of its own, one after the other, and the relocations are applied to the DWARF
//! sections with those bases; a symbol's address is then its section's base plus its value.
//! addr2line's own loader applies relocations with every section at 0, so it is not used.

use std::{fs::File, os::unix::fs::FileExt, sync::Arc};

use anyhow::{Context as _, Result, anyhow, bail};
use object::{
    CompressionFormat, Object as _, ObjectKind, ObjectSection as _, ObjectSymbol as _, ReadCache,
    ReadRef, RelocationKind, RelocationTarget, SectionFlags, SectionIndex, SymbolIndex, SymbolKind,
    SymbolSection, elf,
};

use crate::sources::debug_file::{Contents, DebugFile};

/// The reader the DWARF is parsed with: each section in one shared buffer of its own.
pub(crate) type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// Where the first section of a module goes: not 0, where DWARF 4 would read a range list
/// entry (0, 0) as the end of the list and addr2line would skip a range starting at 0.
const FIRST_BASE: u64 = 0x1_0000;

/// What the search needs to know of a candidate file.
pub(crate) struct Inspection {
    pub(crate) build_id: Option<Vec<u8>>,
    /// `.debug_info` and `.debug_line` with contents (a stripped or split file has none).
    pub(crate) has_dwarf: bool,
}

pub(crate) fn inspect(file: &DebugFile) -> Result<Inspection> {
    match file.contents() {
        Contents::Memory(data) => inspect_elf(&parse(data.as_slice())?),
        Contents::Disk(f) => inspect_elf(&parse(&ReadCache::new(f))?),
    }
}

fn parse<'d, R: ReadRef<'d>>(data: R) -> Result<object::File<'d, R>> {
    let file = object::File::parse(data).context("not an object file")?;
    if file.format() != object::BinaryFormat::Elf {
        bail!("not an ELF file");
    }
    Ok(file)
}

fn inspect_elf<'d, R: ReadRef<'d>>(elf: &object::File<'d, R>) -> Result<Inspection> {
    let build_id = elf.build_id().context("reading the build-id note")?;
    let has_data = |name: &str| {
        elf.section_by_name(name)
            .and_then(|s| s.compressed_file_range().ok())
            .is_some_and(|r| r.compressed_size > 0 && r.uncompressed_size > 0)
    };
    Ok(Inspection {
        build_id: build_id.map(<[u8]>::to_vec),
        has_dwarf: has_data(".debug_info") && has_data(".debug_line"),
    })
}

/// A debug file's DWARF and function symbols, parsed.
pub(crate) struct DebugObject {
    context: addr2line::Context<Reader>,
    symbols: Symbols,
    /// The DWARF sections' bytes held, for [`DebugObject::memory_bytes`].
    dwarf_bytes: usize,
}

impl DebugObject {
    pub(crate) fn load(file: &DebugFile) -> Result<Self> {
        let loaded = match file.contents() {
            Contents::Memory(data) => load_elf(&parse(data.as_slice())?, Raw::Memory(data)),
            Contents::Disk(f) => load_elf(&parse(&ReadCache::new(f))?, Raw::Disk(f)),
        };
        loaded.with_context(|| format!("loading the DWARF of {}", file.path().display()))
    }

    pub(crate) fn context(&self) -> &addr2line::Context<Reader> {
        &self.context
    }

    /// The addresses and sizes of the functions called `name` (more than one when static
    /// functions of several files share it). kallsyms drops clang LTO's `.llvm.<hash>` suffix,
    /// so a name without one also finds the suffixed symbol.
    pub(crate) fn functions(&self, name: &str) -> Vec<(u64, u64)> {
        let exact = self.symbols.named(name);
        if !exact.is_empty() {
            return exact;
        }
        self.symbols.llvm_suffixed(name)
    }

    /// Bytes of section data and symbol names held (addr2line's parsed units come on top, as
    /// lookups need them).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.dwarf_bytes + self.symbols.memory_bytes()
    }
}

fn load_elf<'d, R: ReadRef<'d>>(elf: &object::File<'d, R>, raw: Raw<'_>) -> Result<DebugObject> {
    let endian = if elf.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let layout = Layout::new(elf)?;
    let mut dwarf_bytes = 0;
    let dwarf = gimli::Dwarf::load(|id| -> Result<Reader> {
        let data = if addr2line_reads(id) {
            dwarf_section(elf, &layout, &raw, id.name())
                .with_context(|| format!("reading {}", id.name()))?
        } else {
            Arc::from(&[][..])
        };
        dwarf_bytes += data.len();
        Ok(gimli::EndianArcSlice::new(data, endian))
    })?;
    let context = addr2line::Context::from_dwarf(dwarf).context("parsing the DWARF units")?;
    Ok(DebugObject {
        context,
        symbols: Symbols::new(elf, &layout),
        dwarf_bytes,
    })
}

/// The sections addr2line reads for lines and inline chains. Location lists, macros, type
/// units and name indexes are a large part of a vmlinux's DWARF, and are left on disk.
fn addr2line_reads(id: gimli::SectionId) -> bool {
    use gimli::SectionId::*;
    matches!(
        id,
        DebugAbbrev
            | DebugAddr
            | DebugAranges
            | DebugInfo
            | DebugLine
            | DebugLineStr
            | DebugRanges
            | DebugRngLists
            | DebugStr
            | DebugStrOffsets
    )
}

/// A section's bytes, decompressed and relocated; empty when the file has no such section.
fn dwarf_section<'d, R: ReadRef<'d>>(
    elf: &object::File<'d, R>,
    layout: &Layout,
    raw: &Raw<'_>,
    name: &str,
) -> Result<Arc<[u8]>> {
    let Some(section) = elf.section_by_name(name) else {
        return Ok(Arc::from(&[][..]));
    };
    let range = section.compressed_file_range()?;
    let mut data: Arc<[u8]> = if range.format == CompressionFormat::None {
        raw.read(range.offset, range.uncompressed_size)?
    } else {
        // SHF_COMPRESSED (zlib or zstd) and `.zdebug_*`; object decompresses them.
        Arc::from(&*section.compressed_data()?.decompress()?)
    };
    if layout.relocatable {
        let bytes = Arc::get_mut(&mut data).context("section buffer shared")?;
        relocate(elf, layout, &section, bytes)?;
    }
    Ok(data)
}

/// Applies the section's relocations in place (as libdwfl does), so the DWARF reads final
/// values and no relocation map has to be kept.
fn relocate<'d, R: ReadRef<'d>>(
    elf: &object::File<'d, R>,
    layout: &Layout,
    section: &object::Section<'d, '_, R>,
    data: &mut [u8],
) -> Result<()> {
    let little = elf.is_little_endian();
    for (offset, reloc) in section.relocations() {
        // DWARF refers to code and to other DWARF sections with absolute relocations; others
        // (TLS offsets in variable locations) do not affect lines.
        if reloc.kind() != RelocationKind::Absolute {
            continue;
        }
        let width = match reloc.size() {
            32 => 4,
            64 => 8,
            _ => continue,
        };
        let target = match reloc.target() {
            RelocationTarget::Symbol(index) => layout.symbol_value(elf, index)?,
            RelocationTarget::Section(index) => layout.base(Some(index)),
            _ => bail!("relocation at {offset:#x} with an unsupported target"),
        };
        let at = usize::try_from(offset)?;
        let slot = at
            .checked_add(width)
            .and_then(|end| data.get_mut(at..end))
            .with_context(|| format!("relocation at {offset:#x} outside its section"))?;
        let implicit = if reloc.has_implicit_addend() {
            read_word(slot, little)
        } else {
            0
        };
        let value = target
            .wrapping_add(reloc.addend() as u64)
            .wrapping_add(implicit);
        write_word(slot, value, little);
    }
    Ok(())
}

fn read_word(slot: &[u8], little: bool) -> u64 {
    let mut bytes = [0u8; 8];
    let n = slot.len().min(8);
    if little {
        bytes[..n].copy_from_slice(&slot[..n]);
        u64::from_le_bytes(bytes)
    } else {
        bytes[8 - n..].copy_from_slice(&slot[..n]);
        u64::from_be_bytes(bytes)
    }
}

/// Writes the low `slot.len()` bytes of `value` (a 32-bit relocation is truncated as the
/// linker would store it).
fn write_word(slot: &mut [u8], value: u64, little: bool) {
    let n = slot.len().min(8);
    if little {
        slot[..n].copy_from_slice(&value.to_le_bytes()[..n]);
    } else {
        slot[..n].copy_from_slice(&value.to_be_bytes()[8 - n..]);
    }
}

/// Where the file's bytes are: in memory (a decompressed module) or in a file read as needed.
enum Raw<'a> {
    Memory(&'a [u8]),
    Disk(&'a File),
}

impl Raw<'_> {
    /// `len` bytes at `offset`, in one buffer allocated once: a vmlinux's `.debug_info` is
    /// hundreds of MB, so it is neither read twice nor copied.
    fn read(&self, offset: u64, len: u64) -> Result<Arc<[u8]>> {
        let end = offset.checked_add(len).context("section past 2^64")?;
        let size = match self {
            Raw::Memory(data) => data.len() as u64,
            Raw::Disk(f) => f.metadata()?.len(),
        };
        if end > size {
            bail!("section at {offset:#x}+{len:#x} past the end of the file ({size:#x})");
        }
        let len = usize::try_from(len)?;
        let mut data: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
        let buf = Arc::get_mut(&mut data).context("section buffer shared")?;
        match self {
            Raw::Memory(bytes) => {
                let at = usize::try_from(offset)?;
                buf.copy_from_slice(&bytes[at..at + len]);
            }
            Raw::Disk(f) => f.read_exact_at(buf, offset)?,
        }
        Ok(data)
    }
}

/// The address each section is placed at: its own address in a linked file; in a relocatable
/// one, a base of its own for each allocated section, in section order, aligned.
struct Layout {
    relocatable: bool,
    bases: Vec<u64>,
    executable: Vec<bool>,
}

impl Layout {
    fn new<'d, R: ReadRef<'d>>(elf: &object::File<'d, R>) -> Result<Self> {
        let relocatable = elf.kind() == ObjectKind::Relocatable;
        let mut layout = Layout {
            relocatable,
            bases: Vec::new(),
            executable: Vec::new(),
        };
        let mut next = FIRST_BASE;
        for section in elf.sections() {
            let index = section.index().0;
            let flags = match section.flags() {
                SectionFlags::Elf { sh_flags } => sh_flags,
                _ => 0,
            };
            if layout.bases.len() <= index {
                layout.bases.resize(index + 1, 0);
                layout.executable.resize(index + 1, false);
            }
            layout.executable[index] = flags & u64::from(elf::SHF_EXECINSTR) != 0;
            if relocatable && flags & u64::from(elf::SHF_ALLOC) != 0 {
                let base = next
                    .checked_next_multiple_of(section.align().max(1))
                    .context("section alignment overflows")?;
                // An empty section still gets an address of its own.
                next = base
                    .checked_add(section.size().max(1))
                    .context("sections overflow the address space")?;
                layout.bases[index] = base;
            }
        }
        Ok(layout)
    }

    fn base(&self, section: Option<SectionIndex>) -> u64 {
        section
            .and_then(|s| self.bases.get(s.0).copied())
            .unwrap_or(0)
    }

    fn is_executable(&self, section: Option<SectionIndex>) -> bool {
        section.is_some_and(|s| self.executable.get(s.0) == Some(&true))
    }

    fn symbol_value<'d, R: ReadRef<'d>>(
        &self,
        elf: &object::File<'d, R>,
        index: SymbolIndex,
    ) -> Result<u64> {
        let symbol = elf
            .symbol_by_index(index)
            .map_err(|e| anyhow!("relocation against symbol {}: {e}", index.0))?;
        Ok(self
            .base(symbol.section_index())
            .wrapping_add(symbol.address()))
    }
}

/// Function symbols by name, sorted for binary search: (name, address, size).
struct Symbols(Vec<(Box<str>, u64, u64)>);

impl Symbols {
    fn new<'d, R: ReadRef<'d>>(elf: &object::File<'d, R>, layout: &Layout) -> Self {
        let mut symbols: Vec<_> = elf
            .symbols()
            .filter(|s| {
                // Assembly functions are STT_NOTYPE; kallsyms lists them as text too.
                matches!(s.kind(), SymbolKind::Text | SymbolKind::Unknown)
                    && matches!(s.section(), SymbolSection::Section(_))
                    && layout.is_executable(s.section_index())
            })
            .filter_map(|s| {
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                let address = layout.base(s.section_index()).wrapping_add(s.address());
                Some((Box::from(name), address, s.size()))
            })
            .collect();
        symbols.sort_unstable();
        symbols.dedup();
        Symbols(symbols)
    }

    fn named(&self, name: &str) -> Vec<(u64, u64)> {
        let start = self.0.partition_point(|(n, ..)| &**n < name);
        self.0[start..]
            .iter()
            .take_while(|(n, ..)| &**n == name)
            .map(|&(_, address, size)| (address, size))
            .collect()
    }

    fn llvm_suffixed(&self, name: &str) -> Vec<(u64, u64)> {
        self.0
            .iter()
            .filter(|(n, ..)| n.split_once(".llvm.").is_some_and(|(base, _)| base == name))
            .map(|&(_, address, size)| (address, size))
            .collect()
    }

    fn memory_bytes(&self) -> usize {
        let entry = size_of::<(Box<str>, u64, u64)>();
        self.0.iter().map(|(n, ..)| entry + n.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_read_and_write_in_both_byte_orders() {
        let mut slot = [0u8; 4];
        write_word(&mut slot, 0x1122_3344_5566_7788, true);
        assert_eq!(slot, [0x88, 0x77, 0x66, 0x55]);
        assert_eq!(read_word(&slot, true), 0x5566_7788);
        write_word(&mut slot, 0x5566_7788, false);
        assert_eq!(slot, [0x55, 0x66, 0x77, 0x88]);
        assert_eq!(read_word(&slot, false), 0x5566_7788);
        let mut wide = [0u8; 8];
        write_word(&mut wide, 0x0102_0304_0506_0708, false);
        assert_eq!(read_word(&wide, false), 0x0102_0304_0506_0708);
    }

    #[test]
    fn looks_up_names_exactly_then_without_the_llvm_suffix() {
        let symbols = Symbols(vec![
            ("a".into(), 1, 10),
            ("dup".into(), 2, 10),
            ("dup".into(), 3, 10),
            ("f.llvm.123".into(), 4, 10),
            ("g.isra.0".into(), 5, 10),
        ]);
        assert_eq!(symbols.named("dup"), vec![(2, 10), (3, 10)]);
        assert_eq!(symbols.named("g"), vec![]);
        assert_eq!(symbols.named("g.isra.0"), vec![(5, 10)]);
        assert_eq!(symbols.llvm_suffixed("f"), vec![(4, 10)]);
        assert_eq!(symbols.named("zzz"), vec![]);
    }
}
