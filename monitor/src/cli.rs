//! The command line: `wqflush [watch]`, `check -- CMD`, `doctor`, and what each exits with.

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    daemon::{
        options::{DebugInfoArgs, Options},
        watch::{self, End},
    },
    doctor,
    output::{static_sites, text},
};

/// Exit codes; documented in README.md ("Exit codes").
pub mod exit {
    /// wqflush itself failed (cannot read kallsyms, cannot attach, ...).
    pub const ERROR: u8 = 1;
    /// `check`: a system workqueue was flushed while the command ran; `scan`: a function that
    /// flushes one was found.
    pub const FLUSHED: u8 = 3;
    /// `check`: the command failed (non-zero exit, signal) and nothing was flushed.
    pub const COMMAND_FAILED: u8 = 4;
}

#[derive(Parser)]
#[command(name = "wqflush", version, args_conflicts_with_subcommands = true)]
/// Catches kernel code flushing the kernel-global workqueues (flush_scheduled_work(),
/// flush_workqueue(system_*wq)), names the caller and counts each call site.
pub struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    watch: Options,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Report flushes until interrupted or --duration ends (the default command)
    Watch(Options),
    /// Run CMD while watching: exit 0 if nothing flushed a system workqueue, 3 if something did,
    /// 4 if CMD failed
    Check {
        #[command(flatten)]
        watch: Options,
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// List the functions in module files that flush a system workqueue, before any runs: exit
    /// 0 if none, 3 if some, 1 if a file could not be read
    Scan {
        /// One JSON object per site and a summary (docs/json.md)
        #[arg(long)]
        json: bool,
        /// Module files (.ko, .ko.xz, .ko.zst, .ko.gz) and directories to search; default: the
        /// running kernel's modules, /lib/modules/$(uname -r)
        #[arg(value_name = "PATH")]
        paths: Vec<std::path::PathBuf>,
    },
    /// Tell which attach methods, symbols, BTF and debug info this kernel offers
    Doctor {
        #[command(flatten)]
        debuginfo: DebugInfoArgs,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff); `cargo xtask dist` packages it
    #[command(hide = true)]
    Manpage,
}

/// Runs the parsed command line; `stdout_closed`: wqflush was started with stdout closed.
pub fn run(cli: Cli, stdout_closed: bool) -> ExitCode {
    crate::timing::start();
    match cli.command {
        Some(Cmd::Completions { shell }) => return print_completions(shell),
        Some(Cmd::Manpage) => return print_manpage(),
        Some(Cmd::Scan { json, paths }) => return scan(json, &paths),
        _ => {}
    }
    if stdout_closed {
        return fail(anyhow::anyhow!(
            "standard output is closed (`>&-`), so every report would be lost; send it to a file, \
             or to /dev/null when only --metrics or --kmsg matter"
        ));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.into()),
    };
    let result = match cli.command {
        None => runtime.block_on(watch(cli.watch)),
        Some(Cmd::Watch(args)) => runtime.block_on(watch(args)),
        Some(Cmd::Check { watch, command }) => runtime.block_on(check(watch, command)),
        Some(Cmd::Doctor { debuginfo }) => runtime
            .block_on(async { doctor::run(debuginfo.dirs) })
            .map(|ok| {
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(exit::ERROR)
                }
            }),
        Some(Cmd::Completions { .. } | Cmd::Manpage | Cmd::Scan { .. }) => {
            unreachable!("handled above")
        }
    };
    result.unwrap_or_else(fail)
}

/// `wqflush scan`: needs no runtime, no root and no BPF.
fn scan(json: bool, paths: &[std::path::PathBuf]) -> ExitCode {
    let found = crate::scan::scan(paths);
    for error in &found.errors {
        eprintln!("wqflush: error: {error}");
    }
    let out = if json {
        static_sites::json(&found)
    } else {
        static_sites::text(&found)
    };
    let written = write_stdout(out.as_bytes());
    if written != ExitCode::SUCCESS || !found.errors.is_empty() {
        ExitCode::from(exit::ERROR)
    } else if found.sites.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FLUSHED)
    }
}

fn print_completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "wqflush", &mut out);
    write_stdout(&out)
}

fn print_manpage() -> ExitCode {
    use clap::CommandFactory;
    let mut out = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut out) {
        Ok(()) => write_stdout(&out),
        Err(e) => fail(anyhow::Error::new(e).context("rendering the man page")),
    }
}

/// One write, so a closed or full stdout is an error line, not a panic in print!.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(anyhow::Error::new(e).context("writing to standard output")),
    }
}

fn fail(err: anyhow::Error) -> ExitCode {
    eprintln!("wqflush: error: {err:#}");
    ExitCode::from(exit::ERROR)
}

async fn watch(args: Options) -> anyhow::Result<ExitCode> {
    watch::run(&args, None).await?;
    Ok(ExitCode::SUCCESS)
}

async fn check(args: Options, command: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let outcome = watch::run(&args, Some(&command)).await?;
    let name = command[0].to_string_lossy();
    if let Some(line) = text::missed_line(outcome.missed) {
        eprint!("{line}");
    }
    let (status, failed) = match &outcome.end {
        End::Exited(s) if s.success() => ("succeeded".to_owned(), false),
        End::Exited(s) => (format!("failed ({s})"), true),
        End::NotStarted(e) => (format!("could not be started: {e}"), true),
        End::Stopped => ("was interrupted".to_owned(), true),
    };
    if outcome.flushes > 0 {
        eprintln!(
            "wqflush: check: {} flush(es) of system workqueues while `{name}` ran; it {status}",
            outcome.flushes
        );
        Ok(ExitCode::from(exit::FLUSHED))
    } else if failed {
        eprintln!("wqflush: check: no system workqueue flushed, but `{name}` {status}");
        Ok(ExitCode::from(exit::COMMAND_FAILED))
    } else {
        eprintln!("wqflush: check: no system workqueue flushed; `{name}` {status}");
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Attach;

    #[test]
    fn cli_shapes() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["wqflush", "--json", "--attach", "kprobe"]).unwrap();
        assert!(cli.command.is_none() && cli.watch.json && cli.watch.attach == Attach::Kprobe);
        let cli = Cli::try_parse_from(["wqflush", "check", "--json", "--", "insmod", "-f", "x.ko"])
            .unwrap();
        let Some(Cmd::Check { command, watch }) = cli.command else {
            panic!("not check")
        };
        assert!(watch.json);
        assert_eq!(command, ["insmod", "-f", "x.ko"]);
        assert!(
            Cli::try_parse_from(["wqflush", "check"]).is_err(),
            "CMD is required"
        );
    }
}
