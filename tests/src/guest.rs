//! Shell code that runs inside the guest, kept as shell files in `tests/guest/` (checked by
//! shellcheck) and embedded here: `/init`, the part of it that runs the scenario, and the helper
//! functions every scenario can call. See tests/README.md for the interface.

use crate::arch::Arch;
use crate::oracle;

/// Where the harness writes the guest architecture's facts for `/init` ([`arch_vars`]).
pub const ARCH_PATH: &str = "/lib/vmtest/arch.sh";
/// Where the distribution's modules `/init` loads before opening the data channel go.
pub const MODULES_DIR: &str = "/lib/vmtest/modules";
/// Where the helpers live in the guest; [`RUN`] sources them before the scenario.
pub const HELPERS_PATH: &str = "/lib/vmtest/helpers.sh";
/// Where [`RUN`] lives in the guest; both guests' init sources it.
pub const RUN_PATH: &str = "/lib/vmtest/run.sh";
/// Where the scenario given to `build_initramfs` lands in the guest.
pub const SCENARIO_PATH: &str = "/scenario.sh";
/// Line written to the data port after the scenario: `@@EXIT <status>`.
pub const EXIT_MARKER: &str = "@@EXIT ";

/// `/init` (`tests/guest/init.sh`): mounts the pseudo file systems, loads the modules the data
/// channel needs, opens it once as fd 3 (closing a tty with a signal pending drops unsent
/// output), runs [`RUN`] and powers off.
pub const INIT: &str = include_str!("../guest/init.sh");

/// [`RUN_PATH`] (`tests/guest/run.sh`), shared by `/init` and the systemd guest's service: runs
/// the scenario in a subshell with the helpers sourced, so `exit` in it cannot kill PID 1, and
/// reports its status on fd 3.
pub const RUN: &str = include_str!("../guest/run.sh");

/// Helper functions for scenarios (`tests/guest/helpers.sh`; the oracle's are appended from
/// [`oracle::GUEST_FUNCTIONS`]).
const HELPERS: &str = include_str!("../guest/helpers.sh");

/// Contents of [`HELPERS_PATH`].
pub fn helpers() -> String {
    format!("{HELPERS}\n{}", oracle::GUEST_FUNCTIONS)
}

/// [`ARCH_PATH`]: what `/init` (and the systemd guest's service) reads, and what every scenario
/// then sees: `ARCH` (`amd64`, `arm64`), `CONSOLE` (the console's device), `DATA_TTY` (the data
/// channel's device) and `PRELOAD` (modules to insmod first, in order).
pub fn arch_vars(arch: Arch, preload: &[String]) -> String {
    scenario(
        &[
            ("ARCH", arch.debian()),
            ("CONSOLE", &format!("/dev/{}", arch.console())),
            ("DATA_TTY", arch.data_tty()),
            ("PRELOAD", &preload.join(" ")),
        ],
        "",
    )
}

/// A scenario for the guest: `NAME='value'` lines for `vars`, then `body` (a `tests/guest/*.sh`
/// file that reads them). Values are single-quoted, so they may not hold a `'`.
pub fn scenario(vars: &[(&str, &str)], body: &str) -> String {
    let mut script = String::new();
    for (name, value) in vars {
        assert!(
            !value.contains('\''),
            "scenario variable {name}: {value:?} holds a single quote"
        );
        script.push_str(&format!("{name}='{value}'\n"));
    }
    script + body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_scripts_use_the_paths_the_harness_writes() {
        assert!(INIT.contains(&format!(". {RUN_PATH}\n")));
        assert!(INIT.contains(&format!(". {ARCH_PATH}\n")));
        assert!(INIT.contains("exec 3>\"$DATA_TTY\"\n"));
        assert!(RUN.contains(&format!(". {HELPERS_PATH}\n")));
        assert!(RUN.contains(&format!(". {SCENARIO_PATH}\n")));
        assert!(RUN.contains(&format!("echo \"{EXIT_MARKER}$rc\" >&3\n")));
    }

    #[test]
    fn arch_variables() {
        assert_eq!(
            arch_vars(
                Arch::Arm64,
                &["/lib/vmtest/modules/a.ko".into(), "/b.ko".into()]
            ),
            "ARCH='arm64'\nCONSOLE='/dev/ttyAMA0'\nDATA_TTY='/dev/hvc0'\nPRELOAD='/lib/vmtest/modules/a.ko /b.ko'\n"
        );
        assert!(arch_vars(Arch::Amd64, &[]).contains("DATA_TTY='/dev/ttyS1'\n"));
    }

    #[test]
    fn scenario_variables_come_first() {
        assert_eq!(
            scenario(&[("METHOD", "fentry"), ("KO", "/lib/a b.ko")], "body\n"),
            "METHOD='fentry'\nKO='/lib/a b.ko'\nbody\n"
        );
    }
}
