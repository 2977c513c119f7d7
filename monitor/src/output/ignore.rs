//! The `--ignore FILE` list: call sites the user already knows about. Matching flushes are still
//! counted, but not warned about.
//!
//! One entry per line, `caller` or `module:caller`, both globs (`*`, `?`, `[...]`); `#` starts a
//! comment. `vmlinux` as the module means built-in code only; an entry without a module matches
//! built-in code and every module.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use globset::{Glob, GlobSet, GlobSetBuilder};

/// The module name built-in code is matched as, so `vmlinux:foo` means "built in only" and a
/// module glob such as `*` covers built-in code too.
const BUILTIN: &str = "vmlinux";

/// One line of the file: the module glob (`None`: any module, built-in code included) and the
/// caller glob.
struct Entry {
    module: Option<Glob>,
    caller: Glob,
}

/// The entries compiled into two glob sets, so the whole file costs one match per set instead of
/// one regex per line (globset also answers literal, prefix and suffix globs without a regex).
#[derive(Clone, Debug)]
pub struct IgnoreList {
    /// Entry i's caller glob is pattern i.
    callers: GlobSet,
    /// The module globs of the entries that have one; `module_entry[j]` is pattern j's entry.
    modules: GlobSet,
    module_entry: Vec<usize>,
    /// Whether entry i names a module.
    has_module: Vec<bool>,
}

impl Default for IgnoreList {
    fn default() -> Self {
        Self {
            callers: GlobSet::empty(),
            modules: GlobSet::empty(),
            module_entry: Vec::new(),
            has_module: Vec::new(),
        }
    }
}

impl IgnoreList {
    /// Reads and parses FILE; every error names "FILE:LINE: reason".
    pub fn load(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{origin}: cannot read the --ignore list"))?;
        Self::parse(&text, &origin)
    }

    /// `origin` is used in error messages as the file name.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let parsed = parse_line(line).map_err(|reason| {
                anyhow!("{origin}:{}: {reason:#} (in {:?})", n + 1, line.trim())
            })?;
            entries.extend(parsed);
        }
        Self::compile(entries).with_context(|| format!("{origin}: cannot compile the globs"))
    }

    fn compile(entries: Vec<Entry>) -> Result<Self> {
        let mut callers = GlobSetBuilder::new();
        let mut modules = GlobSetBuilder::new();
        let mut module_entry = Vec::new();
        let mut has_module = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            callers.add(entry.caller);
            has_module.push(entry.module.is_some());
            if let Some(module) = entry.module {
                modules.add(module);
                module_entry.push(i);
            }
        }
        Ok(Self {
            callers: callers.build()?,
            modules: modules.build()?,
            module_entry,
            has_module,
        })
    }

    /// Whether the list covers a call site (by its caller).
    pub fn covers(&self, site: &crate::sites::Site) -> bool {
        site.caller()
            .and_then(|c| Some((c.module.as_deref(), c.func.as_deref()?)))
            .is_some_and(|(module, func)| self.matches(module, func))
    }

    /// Whether a call site is ignored. `module` is None for built-in code; `caller` is the
    /// kallsyms function name, possibly with a gcc suffix like `.isra.0`, `.constprop.0`, `.cold`.
    pub fn matches(&self, module: Option<&str>, caller: &str) -> bool {
        let module = module.unwrap_or(BUILTIN);
        // gcc clones (`.isra.0`, `.constprop.0`, `.cold`, ...) are the same function in the
        // source, and the user writes the name they see there.
        let base = caller.split_once('.').map_or(caller, |(base, _)| base);
        let mut hits = self.callers.matches(caller);
        if base != caller {
            hits.extend(self.callers.matches(base));
        }
        if hits.iter().any(|&i| !self.has_module[i]) {
            return true;
        }
        if hits.is_empty() {
            return false;
        }
        self.modules
            .matches(module)
            .into_iter()
            .any(|j| hits.contains(&self.module_entry[j]))
    }

    pub fn len(&self) -> usize {
        self.has_module.len()
    }

    pub fn is_empty(&self) -> bool {
        self.has_module.is_empty()
    }
}

/// One line: `Ok(None)` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<Entry>> {
    let entry = strip_comment(line)?.trim();
    if entry.is_empty() {
        return Ok(None);
    }
    if entry.contains(char::is_whitespace) {
        bail!("whitespace inside an entry; write one `[module:]caller` per line");
    }
    let (module, caller) = match entry.split_once(':') {
        None => (None, entry),
        Some((_, rest)) if rest.contains(':') => {
            bail!("more than one `:`; an entry is `caller` or `module:caller`")
        }
        Some((module, caller)) => (Some(module), caller),
    };
    if module == Some("") {
        bail!(
            "empty module before `:`; drop the `:` to match any module, or write `vmlinux:` for built-in code"
        );
    }
    if caller.is_empty() {
        bail!(
            "empty caller after `:`; write `{}:*` to ignore the whole module",
            module.unwrap_or("")
        );
    }
    Ok(Some(Entry {
        module: module.map(|m| glob(m, "module")).transpose()?,
        caller: glob(caller, "caller")?,
    }))
}

/// The line without its comment. A `#` glued to an entry is rejected rather than taken as part of
/// the pattern: no symbol contains `#`, so such an entry could only be a typo that never matches.
fn strip_comment(line: &str) -> Result<&str> {
    let Some(hash) = line.find('#') else {
        return Ok(line);
    };
    let before = &line[..hash];
    if !before.trim().is_empty() && !before.ends_with(char::is_whitespace) {
        bail!("`#` inside an entry; put whitespace before a trailing comment");
    }
    Ok(before)
}

fn glob(pattern: &str, what: &str) -> Result<Glob> {
    Glob::new(pattern).with_context(|| format!("invalid {what} glob `{pattern}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> IgnoreList {
        IgnoreList::parse(text, "ignore.txt").expect("valid list")
    }

    fn error(text: &str) -> String {
        let err = IgnoreList::parse(text, "ignore.txt").expect_err("invalid list");
        format!("{err:#}")
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let l =
            list("# known offenders\n\n   \n  foo_flush  \nbar_flush # reported upstream\n\t#x\n");
        assert_eq!(l.len(), 2);
        assert!(l.matches(None, "foo_flush"));
        assert!(l.matches(Some("m"), "bar_flush"));
        assert!(!l.matches(None, "baz_flush"));
        assert_eq!(list("").len(), 0);
    }

    #[test]
    fn bare_caller_matches_any_module_and_builtin() {
        let l = list("foo");
        assert!(l.matches(None, "foo"));
        assert!(l.matches(Some("mlx4_ib"), "foo"));
        assert!(!l.matches(None, "foobar"));
    }

    #[test]
    fn module_entries() {
        let l = list("mlx4_ib:foo\nvmlinux:bar\nnet_*:baz\n*:qux");
        assert!(l.matches(Some("mlx4_ib"), "foo"));
        assert!(!l.matches(Some("mlx5_ib"), "foo"));
        assert!(!l.matches(None, "foo"));
        assert!(l.matches(None, "bar"));
        assert!(!l.matches(Some("mlx4_ib"), "bar"));
        assert!(l.matches(Some("net_x"), "baz"));
        assert!(!l.matches(None, "baz"));
        assert!(l.matches(None, "qux"));
        assert!(l.matches(Some("any"), "qux"));
    }

    #[test]
    fn module_and_caller_must_come_from_the_same_entry() {
        let l = list("mod_a:foo\nmod_b:bar\nmod_*:baz.cold");
        assert!(l.matches(Some("mod_a"), "foo"));
        assert!(!l.matches(Some("mod_a"), "bar"));
        assert!(!l.matches(Some("mod_b"), "foo"));
        assert!(l.matches(Some("mod_b"), "bar.isra.0"));
        assert!(l.matches(Some("mod_c"), "baz.cold"));
        assert!(!l.matches(None, "baz.cold"));
    }

    #[test]
    fn globs() {
        let l = list("mlx?_ib:*_flush\ndrm_[ab]*\nm[0-9]:x");
        assert!(l.matches(Some("mlx4_ib"), "cm_flush"));
        assert!(!l.matches(Some("mlx44_ib"), "cm_flush"));
        assert!(l.matches(None, "drm_atomic"));
        assert!(l.matches(None, "drm_bridge"));
        assert!(!l.matches(None, "drm_crtc"));
        assert!(l.matches(Some("m7"), "x"));
        assert!(!l.matches(Some("mx"), "x"));
    }

    #[test]
    fn gcc_suffixes() {
        let l = list("mlx4_ib_cm_paravirt_clean\nvmlinux:foo.cold\nbar*");
        for name in [
            "mlx4_ib_cm_paravirt_clean.isra.0",
            "mlx4_ib_cm_paravirt_clean.constprop.0",
        ] {
            assert!(l.matches(Some("mlx4_ib"), name), "{name}");
        }
        assert!(l.matches(None, "mlx4_ib_cm_paravirt_clean.cold"));
        assert!(!l.matches(None, "mlx4_ib_cm_paravirt_clean_x.isra.0"));
        // A pattern that names a suffix means that clone only.
        assert!(l.matches(None, "foo.cold"));
        assert!(!l.matches(None, "foo"));
        assert!(!l.matches(None, "foo.isra.0"));
        assert!(l.matches(None, "bar_baz.part.1"));
    }

    #[test]
    fn malformed_lines_name_file_line_and_reason() {
        for (text, line, reason) in [
            ("ok\nfoo bar\n", 2, "whitespace inside an entry"),
            ("a:b:c", 1, "more than one `:`"),
            ("\n\n:foo", 3, "empty module"),
            ("mod:", 1, "empty caller"),
            ("mod: # comment", 1, "empty caller"),
            ("foo[", 1, "invalid caller glob `foo[`"),
            ("m[:foo", 1, "invalid module glob `m[`"),
            ("foo#bar", 1, "`#` inside an entry"),
        ] {
            let err = error(text);
            assert!(
                err.starts_with(&format!("ignore.txt:{line}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("wqflush-ignore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ignore.txt");
        std::fs::write(&path, "good\nbad:x:y\n").expect("write");
        let err = format!("{:#}", IgnoreList::load(&path).expect_err("malformed"));
        assert!(err.starts_with(&format!("{}:2: ", path.display())), "{err}");
        std::fs::write(&path, "good # fine\n").expect("write");
        assert_eq!(IgnoreList::load(&path).expect("valid").len(), 1);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let err = format!("{:#}", IgnoreList::load(&path).expect_err("missing"));
        assert!(
            err.contains(&path.display().to_string()) && err.contains("No such file"),
            "{err}"
        );
    }
}
