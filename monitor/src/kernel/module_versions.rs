//! What a module says about its build: `/sys/module/M/version` (its `MODULE_VERSION()`) and
//! `srcversion` (modpost's checksum of its sources). A fleet's log pipeline groups one call site
//! across driver builds by them; they are JSON fields, not metric labels, to keep the label set
//! small.

use std::{collections::HashMap, path::Path, sync::Arc};

use crate::interned::intern;

/// Where the kernel lists loaded modules' attributes.
const SYS_MODULE: &str = "/sys/module";

/// A module's version strings; None where the module has none (no `MODULE_VERSION()`), or for
/// built-in code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub version: Option<Arc<str>>,
    pub srcversion: Option<Arc<str>>,
}

/// Each module's versions, read the first time it is asked for (while it is loaded, at its
/// first sighting) and kept after it is unloaded.
#[derive(Default)]
pub struct ModuleVersions {
    root: Option<std::path::PathBuf>,
    read: HashMap<Arc<str>, Versions>,
}

impl ModuleVersions {
    /// Reads under `root` instead of /sys/module (tests).
    #[cfg(test)]
    fn at(root: &Path) -> Self {
        ModuleVersions {
            root: Some(root.to_owned()),
            read: HashMap::new(),
        }
    }

    pub fn get(&mut self, module: Option<&str>) -> Versions {
        let Some(module) = module else {
            return Versions::default();
        };
        if let Some(v) = self.read.get(module) {
            return v.clone();
        }
        let dir = self
            .root
            .as_deref()
            .unwrap_or(Path::new(SYS_MODULE))
            .join(module);
        let attr = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            Some(intern(text.trim())).filter(|s| !s.is_empty())
        };
        let versions = Versions {
            version: attr("version"),
            srcversion: attr("srcversion"),
        };
        // A module not loaded (yet, or any more) is asked again next time.
        if dir.exists() {
            self.read.insert(intern(module), versions.clone());
        }
        versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_once_and_keeps_what_an_unloaded_module_had() {
        let root = std::env::temp_dir().join(format!("wqflush-sysmod-{}", std::process::id()));
        std::fs::create_dir_all(root.join("foo")).unwrap();
        std::fs::create_dir_all(root.join("bare")).unwrap();
        std::fs::write(root.join("foo/version"), "1.2.3\n").unwrap();
        std::fs::write(root.join("foo/srcversion"), "0123456789ABCDEF0123456\n").unwrap();
        let mut m = ModuleVersions::at(&root);
        let foo = m.get(Some("foo"));
        assert_eq!(foo.version.as_deref(), Some("1.2.3"));
        assert_eq!(foo.srcversion.as_deref(), Some("0123456789ABCDEF0123456"));
        assert_eq!(
            m.get(Some("bare")),
            Versions::default(),
            "no MODULE_VERSION()"
        );
        assert_eq!(m.get(None), Versions::default(), "built-in code");
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(m.get(Some("foo")), foo, "unloaded since: what it had");
        assert_eq!(m.get(Some("gone")), Versions::default());
    }
}
