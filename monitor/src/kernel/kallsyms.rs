//! `/proc/kallsyms`: the kernel's and modules' symbols, for symbolizing stacks and for finding
//! the `system_*wq` pointer variables.
//!
//! A kernel has 60k-150k function symbols, and this table is most of the daemon's memory (7.x:
//! 92k). So it holds the addresses as one sorted Vec, the modules as runs of it, and the names
//! front-coded in address order (neighbours share prefixes: `ext4_...`, `drm_...`): about 26
//! bytes a symbol where 150k Strings would take ~60 and a record with an arena name took 38.

use anyhow::{Context as _, Result, bail};

pub const PATH: &str = "/proc/kallsyms";

/// Names per front-coding block: decoding one name walks at most this many entries.
const NAME_BLOCK: usize = 16;

/// A data symbol kept because the caller's filter asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSym {
    pub name: String,
    pub addr: u64,
    pub module: Option<String>,
}

/// Where an address falls: `func+offset/size [module]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location<'a> {
    pub func: String,
    pub offset: u64,
    /// Distance to the next symbol: the function's size as far as kallsyms can tell.
    pub size: u64,
    pub module: Option<&'a str>,
}

/// The padding in front of a function, which kallsyms lists as a symbol of its own since 6.2
/// (`__pfx_<func>`, CONFIG_FUNCTION_PADDING_ALIGNMENT, e.g. with call depth tracking) and with
/// clang's kCFI (`__cfi_<func>`, 6.1). No return address points into it, and it is nearly half
/// of the text symbols of such a kernel (Debian's 6.12 has it), so it is not kept.
fn is_padding(name: &str) -> bool {
    name.starts_with("__pfx_") || name.starts_with("__cfi_")
}

/// An ELF mapping symbol (`$x` code, `$d` data; `$x.12` in merged sections): arm64 modules'
/// symbol tables have them, and a module's kallsyms lists them before 6.4 and for its init and
/// exit sections. They name no function: one at the same address as a function, or between
/// it and a return address, would name the frame `$x+0x2c` instead of `wqflush_test_exit+0x2c`.
fn is_mapping_symbol(name: &str) -> bool {
    name.starts_with('$')
}

/// The symbols as they are read (file order, one arena for the names), before [`Builder::finish`]
/// sorts and packs them.
#[derive(Default)]
struct Builder {
    arena: String,
    /// (address, name start in the arena, name length, module index + 1; 0 is the kernel).
    text: Vec<(u64, u32, u16, u16)>,
    modules: Vec<String>,
    data: Vec<DataSym>,
    nonzero_addrs: bool,
}

impl Builder {
    fn add_line(&mut self, line: &str, keep_data: &impl Fn(&str) -> bool) -> Result<()> {
        let mut fields = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("expected `<address> <type> <name> [[module]]`");
        };
        let addr = u64::from_str_radix(addr, 16).context("bad address")?;
        let module = match fields.next() {
            Some(m) if m.starts_with('[') && m.ends_with(']') => Some(&m[1..m.len() - 1]),
            Some(_) => bail!("bad module field"),
            None => None,
        };
        let kind = kind.chars().next().unwrap_or('?');
        self.nonzero_addrs |= addr != 0;
        match kind.to_ascii_lowercase() {
            't' | 'w' if is_padding(name) || is_mapping_symbol(name) => {}
            't' | 'w' => self.add_text(addr, name, module),
            'd' | 'b' | 'r' | 'v' if keep_data(name) => {
                let module = module.map(str::to_owned);
                self.data.push(DataSym {
                    name: name.to_owned(),
                    addr,
                    module,
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn add_text(&mut self, addr: u64, name: &str, module: Option<&str>) {
        let module = module.map_or(0, |m| self.module_index(m));
        // Longer names do not exist (KSYM_NAME_LEN); a hostile file's are cut, not wrapped.
        let name = &name[..name.floor_char_boundary(u16::MAX as usize)];
        let start = self.arena.len() as u32;
        self.arena.push_str(name);
        self.text.push((addr, start, name.len() as u16, module));
    }

    fn module_index(&mut self, name: &str) -> u16 {
        // Module symbols come grouped per module, so the last one is almost always the hit.
        if let Some(i) = self.modules.iter().rposition(|m| m == name) {
            return i as u16 + 1;
        }
        self.modules.push(name.to_owned());
        self.modules.len() as u16
    }

    fn finish(mut self) -> Kallsyms {
        // Stable: symbols sharing an address keep their kallsyms order, which `locate` needs to
        // name a frame the way the kernel does.
        self.text.sort_by_key(|s| s.0);
        let mut ks = Kallsyms {
            addrs: self.text.iter().map(|s| s.0).collect(),
            modules: self.modules,
            data: self.data,
            nonzero_addrs: self.nonzero_addrs,
            ..Kallsyms::default()
        };
        let mut prev: &[u8] = &[];
        for (i, &(_, start, len, module)) in self.text.iter().enumerate() {
            if ks.module_runs.last().is_none_or(|&(_, m)| m != module) {
                ks.module_runs.push((i as u32, module));
            }
            let name = &self.arena.as_bytes()[start as usize..][..len as usize];
            if i % NAME_BLOCK == 0 {
                ks.blocks.push(ks.names.len() as u32);
                prev = &[];
            }
            push_entry(&mut ks.names, prev, name);
            prev = name;
        }
        ks.names.shrink_to_fit();
        ks.module_runs.shrink_to_fit();
        ks
    }
}

/// One front-coded name: the length of the prefix shared with `prev` (at most 255), the length
/// of the rest (one byte, or 255 and two more), and the rest.
fn push_entry(out: &mut Vec<u8>, prev: &[u8], name: &[u8]) {
    let shared = prev
        .iter()
        .zip(name)
        .take(u8::MAX as usize)
        .take_while(|(a, b)| a == b)
        .count();
    let rest = &name[shared..];
    out.push(shared as u8);
    match u8::try_from(rest.len()) {
        Ok(n) if n < u8::MAX => out.push(n),
        _ => {
            out.push(u8::MAX);
            out.extend_from_slice(&(rest.len() as u16).to_le_bytes());
        }
    }
    out.extend_from_slice(rest);
}

/// Decodes the entry at `pos` onto the previous name in `name`; returns the next entry's position.
fn next_entry(names: &[u8], pos: usize, name: &mut Vec<u8>) -> usize {
    let shared = names[pos] as usize;
    let (len, rest) = match names[pos + 1] {
        u8::MAX => (
            u16::from_le_bytes([names[pos + 2], names[pos + 3]]) as usize,
            pos + 4,
        ),
        n => (n as usize, pos + 2),
    };
    name.truncate(shared);
    name.extend_from_slice(&names[rest..rest + len]);
    rest + len
}

/// Names were whole `&str`s when encoded, so a decoded one is valid UTF-8.
fn into_string(name: Vec<u8>) -> String {
    String::from_utf8(name).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[derive(Debug, Default)]
pub struct Kallsyms {
    /// The function symbols' addresses, sorted.
    addrs: Vec<u64>,
    /// Their names, in the same order, front-coded in blocks of [`NAME_BLOCK`].
    names: Vec<u8>,
    /// Where each block starts in `names`.
    blocks: Vec<u32>,
    /// (first symbol, module index + 1; 0 the kernel image) wherever the module changes.
    module_runs: Vec<(u32, u16)>,
    modules: Vec<String>,
    data: Vec<DataSym>,
    nonzero_addrs: bool,
}

impl Kallsyms {
    /// Reads `/proc/kallsyms`, keeping the data symbols for which `keep_data(name)` is true.
    pub fn load(keep_data: impl Fn(&str) -> bool) -> Result<Self> {
        let text = std::fs::read_to_string(PATH).with_context(|| {
            format!("cannot read {PATH}: wqflush needs it to find the system workqueues and to name callers (run as root)")
        })?;
        let ks = Self::parse(&text, keep_data).with_context(|| format!("parsing {PATH}"))?;
        if ks.addrs.is_empty() {
            bail!("{PATH} lists no functions: it is empty or not the kernel's (is /proc mounted?)");
        }
        Ok(ks)
    }

    /// Parses kallsyms text: `<hex addr> <type> <name>[\t[<module>]]` per line.
    pub fn parse(text: &str, keep_data: impl Fn(&str) -> bool) -> Result<Self> {
        let mut b = Builder::default();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            b.add_line(line, &keep_data)
                .with_context(|| format!("line {}: {line:?}", n + 1))?;
        }
        Ok(b.finish())
    }

    /// True when every address is 0: `kernel.kptr_restrict` (or no CAP_SYSLOG) hides them.
    pub fn addresses_hidden(&self) -> bool {
        !self.nonzero_addrs
    }

    /// The data symbols the load filter kept, in file order.
    pub fn data(&self) -> &[DataSym] {
        &self.data
    }

    pub fn text_symbol_count(&self) -> usize {
        self.addrs.len()
    }

    /// Whether a text symbol of the kernel image has this name.
    pub fn has_kernel_function(&self, name: &str) -> bool {
        self.kernel_function(name).is_some()
    }

    /// [start, end) of a function of the kernel image, its end being the next symbol.
    pub fn kernel_function(&self, name: &str) -> Option<(u64, u64)> {
        let i = self.find(|i, n| n == name.as_bytes() && self.module_of(i) == 0)?;
        let start = self.addrs[i];
        let end = self.addrs[i + 1..]
            .iter()
            .find(|&&a| a > start)
            .map_or(start + 1, |&a| a);
        Some((start, end))
    }

    /// A table of the text symbols of the modules `keep` accepts, and nothing else.
    pub fn only_modules(&self, keep: impl Fn(&str) -> bool) -> Kallsyms {
        let mut out = Builder {
            nonzero_addrs: self.nonzero_addrs,
            ..Builder::default()
        };
        self.find(|i, name| {
            if let Some(module) = self.module_name(self.module_of(i)).filter(|m| keep(m)) {
                out.add_text(self.addrs[i], &String::from_utf8_lossy(name), Some(module));
            }
            false
        });
        out.finish()
    }

    /// The modules that have text symbols here.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(String::as_str)
    }

    /// The function containing `addr`, if any symbol precedes it. Of several symbols at one
    /// address it names the one the kernel's own `%pS` names: the first in kallsyms order
    /// (`get_symbol_pos` walks back to the first alias), except that the aliases
    /// `module_init()`/`module_exit()` add (`init_module`, `cleanup_module`) never win over
    /// the function's real name.
    pub fn locate(&self, addr: u64) -> Option<Location<'_>> {
        let last = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let start = self.addrs[last];
        let first = self.addrs.partition_point(|&a| a < start);
        let (sym, func) = (first..=last)
            .map(|i| (i, self.name(i)))
            .find(|(_, n)| !matches!(n.as_str(), "init_module" | "cleanup_module"))
            .unwrap_or_else(|| (first, self.name(first)));
        let next = self.addrs.get(last + 1);
        Some(Location {
            func,
            offset: addr - start,
            size: next.map_or(0, |n| n - start),
            module: self.module_name(self.module_of(sym)),
        })
    }

    /// The first symbol for which `hit(index, name)` holds, decoding the names in address order
    /// into one buffer (this runs over every symbol at start-up: no allocation per name).
    fn find(&self, mut hit: impl FnMut(usize, &[u8]) -> bool) -> Option<usize> {
        let mut pos = 0;
        let mut name = Vec::new();
        (0..self.addrs.len()).find(|&i| {
            pos = next_entry(&self.names, pos, &mut name);
            hit(i, &name)
        })
    }

    fn name(&self, i: usize) -> String {
        let block = i / NAME_BLOCK;
        let mut pos = self.blocks[block] as usize;
        let mut name = Vec::new();
        for _ in block * NAME_BLOCK..=i {
            pos = next_entry(&self.names, pos, &mut name);
        }
        into_string(name)
    }

    /// The module index (+ 1; 0 the kernel image) of symbol `i`.
    fn module_of(&self, i: usize) -> u16 {
        let run = self
            .module_runs
            .partition_point(|&(first, _)| first as usize <= i);
        self.module_runs[run - 1].1
    }

    fn module_name(&self, index: u16) -> Option<&str> {
        index
            .checked_sub(1)
            .map(|i| self.modules[i as usize].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff810b5e20 T __flush_workqueue
ffffffff810b6300 t flush_workqueue_prep_pwqs
ffffffff82a5e2c0 D system_wq
ffffffff82a5e2b8 D system_long_wq
ffffffff82a60000 b system_freezable_wq
ffffffff82b00000 D some_other_var
ffffffffc0a01000 t wqflush_test_flush_long\t[wqflush_test]
ffffffffc0a01040 t wqflush_test_flush_scheduled\t[wqflush_test]
ffffffffc0a02000 d wq_mod_data\t[wqflush_test]
ffffffffc0b00000 T e1000_probe\t[e1000]
";

    fn parse(keep: impl Fn(&str) -> bool) -> Kallsyms {
        Kallsyms::parse(SAMPLE, keep).unwrap()
    }

    #[test]
    fn an_impossibly_long_name_is_cut_not_wrapped() {
        let long = "é".repeat(40_000);
        let ks = Kallsyms::parse(&format!("ffffffff81000000 T {long}\n"), |_| false).unwrap();
        let name = ks.locate(0xffffffff81000010).unwrap().func;
        assert!(name.len() <= u16::MAX as usize && long.starts_with(&name));
        assert!(name.len() > 65_000);
    }

    #[test]
    fn every_name_and_module_survives_the_packing() {
        // Blocks of 16, prefixes longer than 255 bytes, a name longer than 255 bytes, a name
        // that is a prefix of the one before, and modules interleaved in address order.
        let long = "x".repeat(300);
        let mut text = String::new();
        let mut want = Vec::new();
        for i in 0..40u64 {
            let name = match i % 4 {
                0 => format!("{long}_{i}"),
                1 => long.clone(),
                2 => format!("ext4_é{i}"),
                _ => format!("e{i}"),
            };
            let module = (i % 3 == 0).then(|| format!("m{}", i % 2));
            let addr = 0xffffffffc0000000 + (39 - i) * 0x100;
            let field = module
                .as_ref()
                .map(|m| format!("\t[{m}]"))
                .unwrap_or_default();
            text += &format!("{addr:x} t {name}{field}\n");
            want.push((addr, name, module));
        }
        let ks = Kallsyms::parse(&text, |_| false).unwrap();
        assert_eq!(ks.text_symbol_count(), 40);
        for (addr, name, module) in want {
            let loc = ks.locate(addr + 3).unwrap();
            assert_eq!(
                (loc.func.as_str(), loc.offset, loc.module),
                (name.as_str(), 3, module.as_deref())
            );
        }
    }

    #[test]
    fn function_padding_symbols_are_not_functions() {
        let ks = Kallsyms::parse(
            "ffffffff810b5e10 T __pfx___flush_workqueue\n\
             ffffffff810b5e20 T __flush_workqueue\n\
             ffffffff810b62f0 t __cfi_next\n\
             ffffffff810b6300 t next\n",
            |_| false,
        )
        .unwrap();
        assert_eq!(ks.text_symbol_count(), 2);
        let loc = ks.locate(0xffffffff810b5e29).unwrap();
        assert_eq!((loc.func.as_str(), loc.offset), ("__flush_workqueue", 9));
        assert_eq!(loc.size, 0xffffffff810b6300 - 0xffffffff810b5e20);
        assert_eq!(
            ks.kernel_function("__flush_workqueue"),
            Some((0xffffffff810b5e20, 0xffffffff810b6300))
        );
    }

    #[test]
    fn mapping_symbols_are_not_functions() {
        let ks = Kallsyms::parse(
            "ffff800079a30000 t $x\t[wqflush_test]\n\
             ffff800079a30000 t wqflush_test_exit\t[wqflush_test]\n\
             ffff800079a30040 t $x.3\t[wqflush_test]\n",
            |_| false,
        )
        .unwrap();
        assert_eq!(ks.text_symbol_count(), 1);
        let loc = ks.locate(0xffff800079a3002c).unwrap();
        assert_eq!((loc.func.as_str(), loc.offset), ("wqflush_test_exit", 0x2c));
    }

    #[test]
    fn locates_kernel_and_module_functions() {
        let ks = parse(|_| false);
        let loc = ks.locate(0xffffffff810b5e20 + 0x9a).unwrap();
        assert_eq!(
            (loc.func.as_str(), loc.offset, loc.module),
            ("__flush_workqueue", 0x9a, None)
        );
        assert_eq!(loc.size, 0xffffffff810b6300 - 0xffffffff810b5e20);
        let loc = ks.locate(0xffffffffc0a01012).unwrap();
        assert_eq!(loc.func, "wqflush_test_flush_long");
        assert_eq!(
            (loc.offset, loc.size, loc.module),
            (0x12, 0x40, Some("wqflush_test"))
        );
        assert_eq!(ks.locate(0xffffffffc0b00010).unwrap().module, Some("e1000"));
        assert!(ks.locate(0x1000).is_none(), "below the first symbol");
    }

    #[test]
    fn keeps_only_requested_data_symbols() {
        let ks = parse(|n| n.starts_with("system_"));
        let names: Vec<_> = ks.data().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["system_wq", "system_long_wq", "system_freezable_wq"]
        );
        assert_eq!(ks.data()[0].addr, 0xffffffff82a5e2c0);
        assert!(!ks.addresses_hidden());
        assert!(ks.has_kernel_function("__flush_workqueue"));
        assert_eq!(
            ks.kernel_function("__flush_workqueue"),
            Some((0xffffffff810b5e20, 0xffffffff810b6300))
        );
        assert!(
            !ks.has_kernel_function("wqflush_test_flush_long"),
            "module, not kernel"
        );
    }

    #[test]
    fn aliases_are_named_as_the_kernel_names_them() {
        // module_exit() makes cleanup_module an alias of the exit function; which one kallsyms
        // lists first varies. The real name wins either way, and otherwise the first listed.
        for text in [
            "ffffffffc0a02000 t cleanup_module\t[m]\nffffffffc0a02000 t m_exit\t[m]\n",
            "ffffffffc0a02000 t m_exit\t[m]\nffffffffc0a02000 t cleanup_module\t[m]\n",
        ] {
            let ks = Kallsyms::parse(&format!("{text}ffffffffc0a02040 t m_next\t[m]\n"), |_| {
                false
            })
            .unwrap();
            let loc = ks.locate(0xffffffffc0a02010).unwrap();
            assert_eq!((loc.func.as_str(), loc.size), ("m_exit", 0x40), "{text}");
        }
        let ks = Kallsyms::parse(
            "ffffffff81000000 T zeta\nffffffff81000000 T alpha\nffffffff81000100 T next\n",
            |_| false,
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(ks.locate(0xffffffff81000004).unwrap().func, "zeta");
        }
        let ks = Kallsyms::parse("ffffffffc0a02000 t cleanup_module\t[m]\n", |_| false).unwrap();
        assert_eq!(
            ks.locate(0xffffffffc0a02004).unwrap().func,
            "cleanup_module",
            "an alias is better than nothing"
        );
    }

    #[test]
    fn notices_hidden_addresses() {
        let ks = Kallsyms::parse(
            "0000000000000000 T _stext\n0000000000000000 D system_wq\n",
            |_| true,
        )
        .unwrap();
        assert!(ks.addresses_hidden());
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let err = Kallsyms::parse("ffffffff81000000 T _stext\nzzzz T x\n", |_| true).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        let err = Kallsyms::parse("ffffffff81000000 T\n", |_| true).unwrap_err();
        assert!(format!("{err:#}").contains("expected"), "{err:#}");
    }
}
