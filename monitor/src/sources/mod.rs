//! Kernel frames, as kallsyms names them (`func+0xoff [module]`), to source lines with the chain
//! of inlined calls, from the debug info debuginfo.rs finds.
//!
//! A frame is resolved by symbol, not by address: the function is looked up in the debug file's
//! own symbol table and the offset added, so neither KASLR nor where a module was loaded
//! matters. Nothing is read until the first frame of an object is resolved; an object's DWARF
//! is then parsed once and kept, and each frame's answer (with or without lines) is kept too.

pub mod debug_file;
pub mod debug_object;
pub mod debuginfo;
pub mod frames;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use anyhow::Result;
use gimli::Reader as _;

use crate::{
    sources::debug_file::DebugFile,
    sources::debug_object::{DebugObject, Reader},
    sources::debuginfo::{DebugInfoSearch, DebugStatus, module_name},
};

/// One level of a frame's source: innermost first, each inlined function before the function
/// it was inlined into; the last one is the function the code belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceLine {
    /// The function's name in the DWARF: its name in the source (`foo` for the symbol
    /// `foo.isra.0`), or its linkage name where it has one (an assembler label, Rust).
    pub function: Arc<str>,
    /// The file as decode_stacktrace.sh prints it: relative to the kernel tree
    /// (`drivers/md/dm.c`), or for an out-of-tree module to its source directory.
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    /// This function was inlined into the next one; `line` is in it.
    pub inlined: bool,
}

/// The frames' lines, for every object (vmlinux, each module) that has debug info.
pub struct SourceResolver {
    search: DebugInfoSearch,
    /// vmlinux's build-id, read once: it cannot change while the kernel runs.
    vmlinux_build_id: Option<Option<Vec<u8>>>,
    objects: HashMap<Option<Arc<str>>, Object>,
    frames: HashMap<FrameKey, Option<Arc<[SourceLine]>>>,
}

/// One object's debug info, for the build that was running when it was first needed.
struct Object {
    build_id: Vec<u8>,
    state: State,
}

enum State {
    Loaded(Box<DebugObject>, PathBuf),
    Unavailable(DebugStatus),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FrameKey {
    module: Option<Arc<str>>,
    function: Box<str>,
    offset: u64,
    is_return_address: bool,
}

impl SourceResolver {
    /// Reads nothing yet.
    pub fn new(search: DebugInfoSearch) -> Self {
        SourceResolver {
            search,
            vmlinux_build_id: None,
            objects: HashMap::new(),
            frames: HashMap::new(),
        }
    }

    /// The source lines of `function+offset` in `module` (None: vmlinux), innermost first; None
    /// when no debug info of the running build has them. `is_return_address` is true for every
    /// frame but the innermost: a return address is the instruction after the call, so as
    /// scripts/decode_stacktrace.sh and faddr2line do, the byte before it is looked up, which
    /// is the call's line.
    pub fn resolve(
        &mut self,
        module: Option<&str>,
        function: &str,
        offset: u64,
        is_return_address: bool,
    ) -> Option<Arc<[SourceLine]>> {
        let module: Option<Arc<str>> = module.map(|m| Arc::from(module_name(m)));
        let build_id = self.running_build_id(module.as_deref())?;
        self.object(&module, build_id);
        let key = FrameKey {
            module,
            function: function.into(),
            offset,
            is_return_address,
        };
        // Without debug info nothing is kept per frame: 10,000 call sites of a module built
        // without -g must not cost memory.
        let State::Loaded(object, _) = &self.objects.get(&key.module)?.state else {
            return None;
        };
        if let Some(known) = self.frames.get(&key) {
            return known.clone();
        }
        let lines = lines_of(object, function, offset, is_return_address);
        self.frames.insert(key, lines.clone());
        lines
    }

    /// Which file an object's lines come from, or why there are none (for `doctor`); does not
    /// parse any DWARF.
    pub fn status(&mut self, module: Option<&str>) -> DebugStatus {
        let name: Option<Arc<str>> = module.map(|m| Arc::from(module_name(m)));
        let Some(build_id) = self.running_build_id(name.as_deref()) else {
            return DebugStatus::NoRunningBuildId;
        };
        match self.objects.get(&name) {
            Some(o) if o.build_id == build_id => match &o.state {
                State::Loaded(_, path) => DebugStatus::Found(path.clone()),
                State::Unavailable(status) => status.clone(),
            },
            _ => self.search.find(module, &build_id).0,
        }
    }

    /// Bytes of debug sections and symbol tables held by the loaded objects; 0 while no debug
    /// info has been found.
    pub fn memory_bytes(&self) -> usize {
        self.objects
            .values()
            .map(|o| match &o.state {
                State::Loaded(object, _) => object.memory_bytes(),
                State::Unavailable(_) => 0,
            })
            .sum()
    }

    /// How many objects have their DWARF parsed and kept.
    pub fn loaded_objects(&self) -> usize {
        self.objects
            .values()
            .filter(|o| matches!(o.state, State::Loaded(..)))
            .count()
    }

    fn running_build_id(&mut self, module: Option<&str>) -> Option<Vec<u8>> {
        match module {
            None => self
                .vmlinux_build_id
                .get_or_insert_with(|| self.search.running_build_id(None))
                .clone(),
            // Read on every new frame: a module can be reloaded as another build.
            Some(m) => self.search.running_build_id(Some(m)),
        }
    }

    /// Makes sure the object of the running build is searched for (and loaded when found). A
    /// module reloaded as another build drops the old build's DWARF and answers.
    fn object(&mut self, module: &Option<Arc<str>>, build_id: Vec<u8>) {
        if let Some(old) = self.objects.get(module) {
            if old.build_id == build_id {
                return;
            }
            self.objects.remove(module);
            self.frames.retain(|k, _| k.module != *module);
        }
        let (status, file) = self.search.find(module.as_deref(), &build_id);
        let state = match file {
            Some(file) => match DebugObject::load(&file) {
                Ok(object) => State::Loaded(Box::new(object), file.path().to_owned()),
                Err(e) => State::Unavailable(DebugStatus::Unreadable {
                    path: file.path().to_owned(),
                    error: format!("{e:#}"),
                }),
            },
            None => State::Unavailable(status),
        };
        self.objects
            .insert(module.clone(), Object { build_id, state });
    }
}

/// `file:line` of each place (a function symbol and an offset in it) in a module file's own
/// DWARF (`wqflush scan`); all None when the file has none.
pub fn places_in_file(file: &DebugFile, places: &[(&str, u64)]) -> Vec<Option<String>> {
    let object = match debug_object::inspect(file) {
        Ok(found) if found.has_dwarf => DebugObject::load(file).ok(),
        _ => None,
    };
    places
        .iter()
        .map(|&(function, offset)| {
            let lines = lines_of(object.as_ref()?, function, offset, false)?;
            frames::location(Some(&lines))
        })
        .collect()
}

/// The lines of `function+offset`. When several functions have that name (static functions of
/// different files) and they disagree, there is no answer: kallsyms cannot tell which one ran.
fn lines_of(
    object: &DebugObject,
    function: &str,
    offset: u64,
    is_return_address: bool,
) -> Option<Arc<[SourceLine]>> {
    // A return address at offset 0 follows a call in the previous function, which kallsyms
    // could not name: nothing to look up.
    let offset = if is_return_address {
        offset.checked_sub(1)?
    } else {
        offset
    };
    let mut found: Option<Vec<SourceLine>> = None;
    for (address, size) in object.functions(function) {
        if size != 0 && offset >= size {
            continue;
        }
        let lines = lines_at(object, address.checked_add(offset)?, function)
            .ok()
            .flatten()?;
        match &found {
            Some(earlier) if *earlier != lines => return None,
            Some(_) => {}
            None => found = Some(lines),
        }
    }
    found.map(Arc::from)
}

/// addr2line's frames at `address`, innermost first; None when the DWARF has no line for it.
fn lines_at(object: &DebugObject, address: u64, symbol: &str) -> Result<Option<Vec<SourceLine>>> {
    let context = object.context();
    let roots = context
        .find_dwarf_and_unit(address)
        .skip_all_loads()
        .map(PathRoots::of)
        .unwrap_or_default();
    let mut frames = context.find_frames(address).skip_all_loads()?;
    let mut lines = Vec::new();
    while let Some(frame) = frames.next()? {
        let function = match &frame.function {
            Some(name) => Some(Arc::from(&*name.raw_name()?)),
            None => None,
        };
        let location = frame.location.as_ref();
        lines.push((
            function,
            location.and_then(|l| l.file).map(|f| roots.display(f)),
            location.and_then(|l| l.line),
        ));
    }
    if lines.iter().all(|(_, _, line)| line.is_none()) {
        return Ok(None);
    }
    let last = lines.len() - 1;
    let lines = lines
        .into_iter()
        .enumerate()
        .map(|(i, (function, file, line))| {
            // An unnamed outermost function is the symbol itself, without gcc's suffixes.
            let fallback = if i == last {
                symbol.split('.').next().unwrap_or(symbol)
            } else {
                "??"
            };
            SourceLine {
                function: function.unwrap_or_else(|| Arc::from(fallback)),
                file,
                line,
                inlined: i != last,
            }
        });
    Ok(Some(lines.collect()))
}

/// The directories a unit's file names are made relative to, as decode_stacktrace.sh strips
/// the kernel tree (its "base path") from addr2line's output.
#[derive(Debug, Default)]
struct PathRoots {
    /// DW_AT_comp_dir: the kernel's build directory (the tree itself, when built in it).
    comp_dir: Option<String>,
    /// The tree `include/linux` is in: the source tree of an `O=` build, or the headers
    /// package an out-of-tree module was built against.
    kernel_tree: Option<String>,
    /// An out-of-tree module's own directory: its unit's file lies outside both above.
    module_dir: Option<String>,
}

impl PathRoots {
    fn of(unit: gimli::UnitRef<'_, Reader>) -> Self {
        let text = |r: &Reader| -> Option<String> { Some(r.to_string_lossy().ok()?.into_owned()) };
        let comp_dir = unit.comp_dir.as_ref().and_then(text).map(|d| normalize(&d));
        let within = |dir: &str| join(comp_dir.as_deref(), dir);
        let kernel_tree = unit.line_program.as_ref().and_then(|program| {
            program
                .header()
                .include_directories()
                .iter()
                .find_map(|dir| {
                    let dir = text(&unit.attr_string(dir.clone()).ok()?)?;
                    Some(within(&dir).strip_suffix("/include/linux")?.to_owned())
                })
        });
        let name = unit.name.as_ref().and_then(text).map(|n| within(&n));
        let outside = |n: &String, root: &Option<String>| {
            root.as_deref().is_none_or(|r| strip_dir(n, r).is_none())
        };
        let module_dir = name
            .filter(|n| n.starts_with('/') && outside(n, &comp_dir) && outside(n, &kernel_tree))
            .and_then(|n| Some(n.rsplit_once('/')?.0.to_owned()))
            .filter(|d| !d.is_empty());
        PathRoots {
            comp_dir,
            kernel_tree,
            module_dir,
        }
    }

    /// `file` relative to the deepest root it is under, else as it is (normalized).
    fn display(&self, file: &str) -> Arc<str> {
        let path = normalize(file);
        let roots = [&self.comp_dir, &self.kernel_tree, &self.module_dir];
        let relative = roots
            .into_iter()
            .flatten()
            .filter_map(|root| strip_dir(&path, root))
            .min_by_key(|rest| rest.len());
        Arc::from(relative.unwrap_or(&path))
    }
}

/// `path` joined to `dir` unless absolute, normalized.
fn join(dir: Option<&str>, path: &str) -> String {
    match dir {
        Some(dir) if !path.starts_with('/') => normalize(&format!("{dir}/{path}")),
        _ => normalize(path),
    }
}

/// `path` below `dir`, relative to it; never for `/` (everything is below it).
fn strip_dir<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    if dir == "/" || dir.is_empty() {
        return None;
    }
    path.strip_prefix(dir)?
        .strip_prefix('/')
        .filter(|r| !r.is_empty())
}

/// `a/./b//c/../d` to `a/b/d`, by text: DWARF paths name a build machine's files, which are not
/// here to ask about symbolic links.
fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// A resolved line as the tests write it.
#[cfg(test)]
pub(crate) fn line(function: &str, file: &str, line: u32, inlined: bool) -> SourceLine {
    SourceLine {
        function: function.into(),
        file: Some(file.into()),
        line: Some(line),
        inlined,
    }
}

#[cfg(test)]
mod tests;
