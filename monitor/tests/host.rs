//! wqflush on the machine running the tests. This project's machines run a kernel that cannot
//! be probed (fentry refused, no kprobes, no data symbols in kallsyms): there it must fail with
//! one clear message per attach method, never a panic. Where the kernel can be probed, it must
//! say it attached.

use std::process::Command;

fn wqflush(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wqflush"))
        .args(args)
        .output()
        .expect("run wqflush");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn watch_attaches_or_explains_each_method() {
    let (code, _, err) = wqflush(&["--duration", "1"]);
    assert!(!err.contains("panicked"), "{err}");
    if code == Some(0) {
        assert!(err.contains("wqflush: attached ("), "{err}");
        return;
    }
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("wqflush: error: "), "{err}");
    if err.contains("cannot probe") {
        assert!(
            err.contains("\n  fentry: ") && err.contains("\n  kprobe: "),
            "each method and why: {err}"
        );
        assert!(
            err.contains("cargo xtask demo"),
            "points at what to do: {err}"
        );
    }
}

#[test]
fn doctor_agrees_with_watch() {
    let (watch_code, _, _) = wqflush(&["--duration", "1"]);
    let (code, out, err) = wqflush(&["doctor"]);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.starts_with("kernel:"), "{out}");
    assert!(
        out.contains("\nprivileges:       "),
        "doctor checks capabilities: {out}"
    );
    assert!(out.contains("\nverdict:"), "{out}");
    assert_eq!(code == Some(0), watch_code == Some(0), "doctor:\n{out}");
    if code != Some(0) && out.contains("attach methods") {
        assert!(
            out.contains("  fentry: unavailable: ") && out.contains("  kprobe: unavailable: "),
            "{out}"
        );
    }
}

#[test]
fn check_without_a_command_is_a_usage_error() {
    let (code, _, err) = wqflush(&["check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("CMD"), "{err}");
}

#[test]
fn a_closed_pipe_on_stdout_is_an_error_not_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wqflush"))
        .arg("doctor")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wqflush doctor");
    drop(child.stdout.take()); // the reader goes away, like `wqflush doctor | head -1`
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn a_closed_stdout_is_an_error_not_silence() {
    let script = format!(
        "exec {} --json --duration 1 >&-",
        env!("CARGO_BIN_EXE_wqflush")
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("wqflush: error: standard output is closed"),
        "{err}"
    );
}

#[test]
fn a_missing_debuginfo_path_is_one_clear_error_before_attaching() {
    let (code, out, err) = wqflush(&["--debuginfo", "/nonexistent/dbg", "--duration", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err.trim_end(),
        "wqflush: error: --debuginfo /nonexistent/dbg: no such file or directory"
    );
}

#[test]
fn doctor_says_where_debug_info_comes_from() {
    let (_, out, err) = wqflush(&["doctor", "--debuginfo", "/tmp"]);
    assert!(!err.contains("panicked"), "{err}");
    let at = out
        .find("\ndebug info (source lines")
        .unwrap_or_else(|| panic!("no debug info section:\n{out}"));
    let vmlinux = out[at + 1..].lines().nth(1).unwrap_or_default();
    assert!(vmlinux.starts_with("  vmlinux "), "{out}");
}
