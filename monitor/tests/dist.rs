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
    // Point ExecStart at the binary just built, so verify can check it exists and runs.
    let unit = unit.replace("/usr/local/bin/wqflush", env!("CARGO_BIN_EXE_wqflush"));
    let dir = std::env::temp_dir().join(format!("wqflush-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wqflush.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
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
