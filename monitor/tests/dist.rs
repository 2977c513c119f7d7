//! The files in dist/ that a fleet installs must be valid as shipped.

use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here; skipping");
        return;
    };
    assert!(out.status.success());
    let unit = include_str!("../../dist/wqflush.service");
    let bin = env!("CARGO_BIN_EXE_wqflush");
    // Point ExecStart at the binary just built, so verify can check it exists and runs.
    let unit = unit.replace("/usr/bin/wqflush", bin);
    let dir = std::env::temp_dir().join(format!("wqflush-unit-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("man1")).unwrap();
    let path = dir.join("wqflush.service");
    std::fs::write(&path, unit).unwrap();
    // Documentation=man:wqflush(1): verify runs man(1), so give it the page the package ships.
    let page = Command::new(bin).arg("manpage").output().unwrap();
    assert!(page.status.success());
    std::fs::write(dir.join("man1/wqflush.1"), page.stdout).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn unit_and_scrape_config_agree_on_the_port() {
    let unit = include_str!("../../dist/wqflush.service");
    let scrape = include_str!("../../dist/prometheus.yml");
    assert!(unit.contains("--metrics 127.0.0.1:19100"));
    assert!(scrape.contains("localhost:19100"));
}
