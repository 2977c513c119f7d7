//! What every VM test does: boot one kernel with the test module (and wqflush), run a scenario,
//! check the guest ended cleanly, and share that one boot among a test binary's tests.

use std::{
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    MODULE_GUEST_PATH, Series, VmRun, build_module, cache_dir, prepare_kernel,
    qemu::{DEFAULT_MEMORY_MB, run_scenario_with},
};

/// How a scenario's guest is set up and judged.
pub struct Guest {
    /// A wqflush binary to copy to /bin (see [`wqflush_bin`]).
    pub wqflush: Option<PathBuf>,
    pub timeout: Duration,
    /// A "WARNING: CPU:" console line containing this is expected (wqflush --kmsg).
    pub expected_warning: Option<&'static str>,
    /// Added to the kernel command line (e.g. `preempt=full`).
    pub append: &'static str,
    /// More files for the initramfs: (host path, guest path).
    pub files: Vec<(PathBuf, String)>,
    /// Guest memory in MiB (the initramfs, with everything in it, lives there too).
    pub memory_mb: u32,
}

/// The static wqflush binary `cargo xtask test` built, from `WQFLUSH_BIN`.
pub fn wqflush_bin() -> Result<PathBuf> {
    std::env::var_os("WQFLUSH_BIN")
        .map(PathBuf::from)
        .context("WQFLUSH_BIN is not set: run the VM tests through `cargo xtask test`")
}

/// Boots `series` with the test module, runs `script`; returns the run and the module's path.
pub fn boot_scenario(series: Series, script: &str, guest: &Guest) -> Result<(VmRun, PathBuf)> {
    let cache = cache_dir();
    let t = Instant::now();
    let kernel = prepare_kernel(series, &cache)?;
    let ko = build_module(&kernel, &cache.join("module"))?;
    eprintln!(
        "{series}: kernel {} and module ready in {:?}",
        kernel.release,
        t.elapsed()
    );
    let mut files = vec![(ko.clone(), MODULE_GUEST_PATH.to_owned())];
    if let Some(bin) = &guest.wqflush {
        files.push((bin.clone(), "/bin/wqflush".to_owned()));
    }
    files.extend(guest.files.iter().cloned());
    let t = Instant::now();
    let run = run_scenario_with(
        &kernel,
        &files,
        script,
        guest.timeout,
        guest.memory_mb,
        guest.append,
    )?;
    eprintln!("{series}: boot and scenario took {:?}", t.elapsed());
    run.ensure_success_allowing(guest.expected_warning)?;
    Ok((run, ko))
}

/// One boot per kernel, shared by the tests of one test binary.
pub struct PerKernel([OnceLock<Result<VmRun, String>>; Series::ALL.len()]);

impl PerKernel {
    pub const fn new() -> Self {
        PerKernel([const { OnceLock::new() }; Series::ALL.len()])
    }

    /// The run for `series`, booting it with `boot` the first time.
    pub fn get(
        &'static self,
        series: Series,
        boot: impl FnOnce() -> Result<VmRun>,
    ) -> Result<&'static VmRun> {
        let cell = &self.0[series.index()];
        match cell.get_or_init(|| boot().map_err(|e| format!("{e:#}"))) {
            Ok(run) => Ok(run),
            Err(e) => bail!("{series} boot failed: {e}"),
        }
    }
}

impl PerKernel {
    /// `get` for the usual scenario: the test module plus the wqflush binary from `WQFLUSH_BIN`.
    pub fn with_wqflush(
        &'static self,
        series: Series,
        script: &str,
        timeout: Duration,
        expected_warning: Option<&'static str>,
    ) -> Result<&'static VmRun> {
        self.get(series, || {
            let guest = Guest {
                wqflush: Some(wqflush_bin()?),
                timeout,
                expected_warning,
                append: "",
                files: Vec::new(),
                memory_mb: DEFAULT_MEMORY_MB,
            };
            Ok(boot_scenario(series, script, &guest)?.0)
        })
    }
}

impl Default for PerKernel {
    fn default() -> Self {
        Self::new()
    }
}
