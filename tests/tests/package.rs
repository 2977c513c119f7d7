//! The Debian package and the tarball `cargo xtask dist` builds, as an operator gets them: lintian
//! finds no error, the control fields say what the package is and that it needs nothing, and both
//! hold the same files (the binary static, the ignore list a conffile, the man page renderable).
//! Installing and running it under systemd is tests/systemd.rs.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};
use wqflush_vmtest::{Arch, workspace_root};

/// What a fleet gets, whatever else the package may add.
const FILES: &[&str] = &[
    "etc/wqflush/ignore",
    "usr/bin/wqflush",
    "usr/lib/systemd/system/wqflush.service",
    "usr/share/bash-completion/completions/wqflush",
    "usr/share/doc/wqflush/changelog.gz",
    "usr/share/doc/wqflush/copyright",
    "usr/share/doc/wqflush/examples/prometheus.yml",
    "usr/share/doc/wqflush/examples/wqflush.rules.yml",
    "usr/share/fish/vendor_completions.d/wqflush.fish",
    "usr/share/man/man1/wqflush.1.gz",
    "usr/share/zsh/vendor-completions/_wqflush",
];

fn artifact(var: &str) -> Result<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .with_context(|| format!("{var} is not set: run through `cargo xtask test`"))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The version in monitor/Cargo.toml, which the package must carry.
fn workspace_version() -> Result<String> {
    let toml = std::fs::read_to_string(workspace_root().join("monitor/Cargo.toml"))?;
    let line = toml
        .lines()
        .find(|l| l.starts_with("version = "))
        .context("no version in monitor/Cargo.toml")?;
    Ok(line
        .trim_start_matches("version = ")
        .trim_matches('"')
        .to_owned())
}

#[test]
#[ignore = "needs cargo xtask dist; run through cargo xtask test"]
fn lintian_finds_no_error() -> Result<()> {
    let deb = artifact("WQFLUSH_DEB")?;
    let tags = output(
        Command::new("lintian")
            .args(["--fail-on", "error"])
            .arg(&deb),
    )?;
    ensure!(!tags.lines().any(|l| l.starts_with("E:")), "{tags}");
    Ok(())
}

#[test]
#[ignore = "needs cargo xtask dist; run through cargo xtask test"]
fn control_fields_name_the_version_and_no_dependencies() -> Result<()> {
    let deb = artifact("WQFLUSH_DEB")?;
    let field = |f: &str| output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f));
    ensure!(field("Package")?.trim() == "wqflush");
    ensure!(field("Version")?.trim() == workspace_version()?);
    let arch = Arch::current()?;
    ensure!(field("Architecture")?.trim() == arch.debian());
    for dep in ["Depends", "Pre-Depends", "Recommends"] {
        ensure!(
            field(dep)?.trim().is_empty(),
            "{dep}: the static binary needs nothing"
        );
    }
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    ensure!(
        name == format!("wqflush_{}_{arch}.deb", workspace_version()?),
        "{name}"
    );
    Ok(())
}

/// Regular files of the package's data, without the leading `./`.
fn deb_files(deb: &std::path::Path) -> Result<BTreeSet<String>> {
    let list = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    Ok(list
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_owned())
        .collect())
}

#[test]
#[ignore = "needs cargo xtask dist; run through cargo xtask test"]
fn package_and_tarball_hold_the_same_files() -> Result<()> {
    let deb = artifact("WQFLUSH_DEB")?;
    let files = deb_files(&deb)?;
    for f in FILES {
        ensure!(
            files.contains(*f),
            "{f} missing from the package: {files:?}"
        );
    }
    let tarball = artifact("WQFLUSH_TARBALL")?;
    let list = output(Command::new("tar").arg("-tvzf").arg(&tarball))?;
    let in_tar: BTreeSet<String> = list
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.split_once('/').map(|(_, rest)| rest.to_owned()))
        .collect();
    ensure!(in_tar == files, "tarball {in_tar:?}\npackage {files:?}");
    Ok(())
}

#[test]
#[ignore = "needs cargo xtask dist; run through cargo xtask test"]
fn the_binary_is_static_the_ignore_list_a_conffile_and_the_man_page_renders() -> Result<()> {
    let deb = artifact("WQFLUSH_DEB")?;
    let dir = std::env::temp_dir().join(format!("wqflush-deb-{}", std::process::id()));
    output(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&dir))?;
    let result = (|| {
        let headers = output(
            Command::new("readelf")
                .arg("-l")
                .arg(dir.join("usr/bin/wqflush")),
        )?;
        ensure!(!headers.contains("INTERP"), "a dynamic binary: {headers}");
        // The package's architecture is the binary's (arm64's is cross-built).
        let elf = output(
            Command::new("readelf")
                .arg("-h")
                .arg(dir.join("usr/bin/wqflush")),
        )?;
        let machine = match Arch::current()? {
            Arch::Amd64 => "X86-64",
            Arch::Arm64 => "AArch64",
        };
        ensure!(elf.contains(machine), "not a {machine} binary: {elf}");
        let conffiles = std::fs::read_to_string(dir.join("DEBIAN/conffiles"))?;
        ensure!(conffiles.trim() == "/etc/wqflush/ignore", "{conffiles}");
        let ignore = std::fs::read_to_string(dir.join("etc/wqflush/ignore"))?;
        ensure!(
            ignore
                .lines()
                .all(|l| l.trim().is_empty() || l.starts_with('#')),
            "the shipped ignore list ignores nothing: {ignore}"
        );
        let man = dir.join("usr/share/man/man1/wqflush.1.gz");
        let text = output(
            Command::new("man")
                .arg("-l")
                .arg(&man)
                .env("MANWIDTH", "80"),
        )?;
        ensure!(
            text.contains("wqflush") && text.contains("--attach"),
            "{text}"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
