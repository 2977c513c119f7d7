//! One module file parsed for the scan: its code sections and their relocations, its functions
//! with their `.cold`/`.part`/`.isra`/`.constprop` pieces, the flush functions and `system_*wq`
//! variables it imports, and the `.modinfo` name.

use std::{collections::HashMap, ops::Range};

use anyhow::{Context as _, Result, bail};
use object::{
    Architecture, Object as _, ObjectKind, ObjectSection as _, ObjectSymbol as _, SectionFlags,
    SectionKind, SymbolIndex, SymbolKind, SymbolSection, elf,
    read::elf::{ElfFile64, Rela as _, SectionHeader as _, Sym as _},
};

use crate::scan::flow::Ref;

/// The functions a flush goes through: `__flush_workqueue` since 5.19, `flush_workqueue` before.
pub(crate) const FLUSH_FUNCTIONS: [&str; 2] = ["__flush_workqueue", "flush_workqueue"];

/// The instruction sets the scan decodes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    X86_64,
    Aarch64,
}

/// Where a function's code is, in its section.
#[derive(Clone, Debug)]
pub(crate) struct Function {
    pub(crate) name: String,
    pub(crate) section: usize,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

impl Function {
    /// The name without gcc's clone suffixes: `foo.cold`, `foo.part.0`, `foo.isra.0` are `foo`.
    pub(crate) fn base_name(&self) -> &str {
        self.name.split('.').next().unwrap_or(&self.name)
    }

    /// A piece only jumped to from its function, never called.
    pub(crate) fn is_cold(&self) -> bool {
        self.name.split('.').any(|part| part == "cold")
    }
}

/// A relocation, resolved to what the flow needs.
#[derive(Clone, Copy, Debug)]
struct Reloc {
    at: u64,
    target: Ref,
    /// Counts from the end of the field (x86_64 rip-relative), not from its start.
    pc_relative: bool,
}

/// One section's relocations, by place.
#[derive(Default, Debug)]
pub(crate) struct Relocs(Vec<Reloc>);

impl Relocs {
    /// The relocation whose place lies in `[start, end)`. A pc-relative one names the byte
    /// `value + addend + (from - place)`: the instruction's own reading of it.
    pub(crate) fn within(&self, start: u64, end: u64, from: u64) -> Option<Ref> {
        let i = self.0.partition_point(|r| r.at < start);
        let r = self.0.get(i).filter(|r| r.at < end)?;
        Some(match r.target {
            Ref::Local { section, offset } if r.pc_relative => Ref::Local {
                section,
                offset: offset.wrapping_add(from.wrapping_sub(r.at)),
            },
            other => other,
        })
    }
}

/// A module file, parsed.
pub(crate) struct Module<'d> {
    pub(crate) elf: ElfFile64<'d>,
    pub(crate) isa: Isa,
    /// Indexes of the undefined flush-function symbols.
    pub(crate) flush: Vec<usize>,
    /// Undefined `system_*wq` symbols: index -> name.
    pub(crate) queues: HashMap<usize, String>,
    /// Functions by (section, start).
    pub(crate) functions: Vec<Function>,
}

impl<'d> Module<'d> {
    /// Parses `data`; None when the module imports no flush function (most modules: nothing
    /// else is read of them).
    pub(crate) fn parse(data: &'d [u8]) -> Result<Option<Module<'d>>> {
        let elf = ElfFile64::parse(data).context("not a 64-bit ELF object file")?;
        if elf.kind() != ObjectKind::Relocatable {
            bail!("not a kernel module (an ELF relocatable file)");
        }
        let isa = match elf.architecture() {
            Architecture::X86_64 => Isa::X86_64,
            Architecture::Aarch64 => Isa::Aarch64,
            other => bail!("a module for {other:?}: the scan reads x86_64 and aarch64 code"),
        };
        let mut flush = Vec::new();
        let mut queues = HashMap::new();
        for symbol in elf.symbols().filter(|s| s.is_undefined()) {
            let name = symbol.name().context("reading the symbol table")?;
            if FLUSH_FUNCTIONS.contains(&name) {
                flush.push(symbol.index().0);
            } else if is_system_queue(name) {
                queues.insert(symbol.index().0, name.to_owned());
            }
        }
        if flush.is_empty() {
            return Ok(None);
        }
        let functions = functions(&elf)?;
        Ok(Some(Module {
            elf,
            isa,
            flush,
            queues,
            functions,
        }))
    }

    /// The relocations of `section` whose place lies in `places`, resolved and sorted by place.
    /// Only a function's worth is kept at a time: amdgpu's `.text` alone has a million.
    pub(crate) fn relocs(&self, section: usize, places: Range<u64>) -> Result<Relocs> {
        let mut out = Vec::new();
        self.each_reloc(section, |at, target, pc_relative| {
            if places.contains(&at) {
                out.push(Reloc {
                    at,
                    target,
                    pc_relative,
                });
            }
        })?;
        out.sort_by_key(|r| r.at);
        Ok(Relocs(out))
    }

    /// Calls `f` with the place, target and pc-relativity of every relocation of `section`. A
    /// relocation section that cannot be read is an error, never an empty one: a module whose
    /// flush calls cannot be seen must not be called clean.
    pub(crate) fn each_reloc(
        &self,
        section: usize,
        mut f: impl FnMut(u64, Ref, bool),
    ) -> Result<()> {
        let endian = self.elf.endian();
        let data = self.elf.data();
        let table = self.elf.elf_section_table();
        for header in table.iter() {
            let Some((relas, link)) = header.rela(endian, data)? else {
                continue;
            };
            if header.sh_info(endian) as usize != section {
                continue;
            }
            let symbols = table.symbol_table_by_index(endian, data, link)?;
            for rela in relas {
                let index = SymbolIndex(rela.r_sym(endian, false) as usize);
                let symbol = symbols.symbol(index)?;
                let addend = rela.r_addend(endian);
                let target = match symbol.st_shndx(endian) {
                    elf::SHN_UNDEF => Ref::Extern(index.0),
                    shndx => Ref::Local {
                        section: usize::from(shndx),
                        offset: symbol.st_value(endian).wrapping_add_signed(addend),
                    },
                };
                let kind = rela.r_type(endian, false);
                let pc_relative = self.isa == Isa::X86_64
                    && matches!(kind, elf::R_X86_64_PC32 | elf::R_X86_64_PLT32);
                f(rela.r_offset(endian), target, pc_relative);
            }
        }
        Ok(())
    }

    /// The code of a function piece.
    pub(crate) fn code(&self, f: &Function) -> Result<&'d [u8]> {
        let data = self
            .elf
            .section_by_index(object::SectionIndex(f.section))?
            .data()?;
        let range = usize::try_from(f.start)?..usize::try_from(f.end)?;
        data.get(range)
            .with_context(|| format!("{} lies outside its section", f.name))
    }

    /// The function piece holding `offset` of `section`.
    pub(crate) fn function_at(&self, section: usize, offset: u64) -> Option<usize> {
        let i = self
            .functions
            .partition_point(|f| (f.section, f.start) <= (section, offset));
        let f = self.functions.get(i.checked_sub(1)?)?;
        (f.section == section && offset < f.end).then_some(i - 1)
    }

    pub(crate) fn section_name(&self, section: usize) -> &str {
        self.elf
            .section_by_index(object::SectionIndex(section))
            .and_then(|s| s.name())
            .unwrap_or("")
    }

    /// The sections the loaded module keeps (code, data): relocations in others (DWARF) do not
    /// run.
    pub(crate) fn allocated_sections(&self) -> Vec<usize> {
        self.elf
            .sections()
            .filter(|s| match s.flags() {
                SectionFlags::Elf { sh_flags } => sh_flags & u64::from(elf::SHF_ALLOC) != 0,
                _ => false,
            })
            .map(|s| s.index().0)
            .collect()
    }

    pub(crate) fn is_code(&self, section: usize) -> bool {
        self.elf
            .section_by_index(object::SectionIndex(section))
            .is_ok_and(|s| s.kind() == SectionKind::Text)
    }

    /// The name of the data symbol at `offset` of `section` (a module variable), or
    /// `section+0xoff`.
    pub(crate) fn data_name(&self, section: usize, offset: u64) -> String {
        let found = self.elf.symbols().find_map(|s| {
            let start = s.address();
            let inside =
                offset == start || (start < offset && offset < start.saturating_add(s.size()));
            let ours =
                s.kind() == SymbolKind::Data && s.section_index().map(|i| i.0) == Some(section);
            (ours && inside).then(|| Some((s.name().ok()?.to_owned(), offset - start)))?
        });
        match found {
            Some((name, 0)) => name,
            Some((name, off)) => format!("{name}+{off:#x}"),
            None => format!("{}+{offset:#x}", self.section_name(section)),
        }
    }

    /// The module's name: `.modinfo`'s `name=`, which modpost writes.
    pub(crate) fn modinfo_name(&self) -> Option<String> {
        let data = self.elf.section_by_name(".modinfo")?.data().ok()?;
        data.split(|&b| b == 0)
            .find_map(|field| field.strip_prefix(b"name="))
            .and_then(|name| std::str::from_utf8(name).ok())
            .map(str::to_owned)
    }
}

/// `system_wq`, `system_long_wq`, `system_bh_highpri_wq`, ...: the kernel-global queues.
pub(crate) fn is_system_queue(name: &str) -> bool {
    name.starts_with("system_") && name.ends_with("wq")
}

/// Every defined function symbol in a code section, sorted by place, each ending where its size
/// says (or, without one, at the next function or the section's end).
fn functions(elf: &ElfFile64<'_>) -> Result<Vec<Function>> {
    let mut out: Vec<Function> = Vec::new();
    for symbol in elf.symbols() {
        let SymbolSection::Section(section) = symbol.section() else {
            continue;
        };
        if symbol.kind() != SymbolKind::Text {
            continue;
        }
        out.push(Function {
            name: symbol
                .name()
                .context("reading the symbol table")?
                .to_owned(),
            section: section.0,
            start: symbol.address(),
            end: symbol.address().saturating_add(symbol.size()),
        });
    }
    out.sort_by_key(|f| (f.section, f.start));
    out.dedup_by_key(|f| (f.section, f.start));
    for i in 0..out.len() {
        if out[i].end > out[i].start {
            continue;
        }
        let next = out
            .get(i + 1)
            .filter(|n| n.section == out[i].section)
            .map(|n| n.start);
        let size = elf
            .section_by_index(object::SectionIndex(out[i].section))?
            .size();
        out[i].end = next.unwrap_or(size);
    }
    Ok(out)
}
