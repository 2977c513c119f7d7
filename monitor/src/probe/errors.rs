//! Why loading or attaching failed, in words that name a fix: the errno behind aya's error,
//! and what it means at each step.

use std::io;

use anyhow::anyhow;
use aya::programs::ProgramError;

/// Adds what an errno means for this tool to aya's error.
pub(super) fn explain(err: ProgramError, doing: &str) -> anyhow::Error {
    let hint = errno(&err)
        .and_then(|e| errno_hint(e, Step::Program))
        .map(|h| format!(" ({h})"));
    let verifier = match &err {
        ProgramError::LoadError { verifier_log, .. } if hint.is_none() => {
            format!("\nverifier log:\n{verifier_log}")
        }
        _ => String::new(),
    };
    anyhow!(
        "{doing} failed: {err}{}{verifier}",
        hint.unwrap_or_default()
    )
}

/// Loading the object creates its maps (and reads its BTF): a failure there is about maps,
/// never about tracing the flush function.
pub(super) fn explain_object(err: aya::EbpfError) -> anyhow::Error {
    let hint = errno(&err)
        .and_then(|e| errno_hint(e, Step::Maps))
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    anyhow!("creating the probe's maps failed: {err}{hint}")
}

/// The errno in an aya error, wherever in its chain of sources it sits.
pub(super) fn errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        if let Some(ProgramError::LoadError { io_error, .. }) = e.downcast_ref::<ProgramError>() {
            return io_error.raw_os_error();
        }
        cause = e.source();
    }
    None
}

/// The kernel-internal errno BPF returns for unsupported attach types.
pub(super) const ENOTSUPP: i32 = 524;

/// Which step of attaching an errno came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Creating the maps (loading the object).
    Maps,
    /// Loading or attaching the program on the flush function.
    Program,
}

fn errno_hint(errno: i32, step: Step) -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    Some(match (errno, step) {
        (libc::EPERM | libc::EACCES, _) if !root => {
            "permission denied: run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYSLOG"
        }
        (libc::EPERM, Step::Maps) => {
            "EPERM as root: the kernel refused to create a BPF map; before 5.11 maps count \
             against RLIMIT_MEMLOCK, so raise `ulimit -l` (LimitMEMLOCK=infinity in a unit)"
        }
        (libc::EPERM, Step::Program) => {
            "EPERM as root: this kernel does not allow tracing this function (lockdown, or a BPF restriction)"
        }
        (libc::EACCES, _) => "EACCES as root: the kernel refused (lockdown, or an LSM policy)",
        (libc::ENOENT, _) => "ENOENT: the kernel has no such function or probe type",
        (libc::EOPNOTSUPP | ENOTSUPP, _) => "not supported by this kernel",
        (libc::EINVAL, Step::Maps) => {
            "EINVAL: the kernel rejected a map (the ring buffer needs 5.8)"
        }
        (libc::EINVAL, Step::Program) => "EINVAL: the kernel rejected the request",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[test]
    fn a_map_failure_is_not_blamed_on_tracing() {
        // Root or not decides the first line; as root (CI) both differ by step.
        let maps = errno_hint(libc::EPERM, Step::Maps).unwrap();
        let prog = errno_hint(libc::EPERM, Step::Program).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(
                maps.contains("BPF map") && maps.contains("ulimit -l"),
                "{maps}"
            );
            assert!(!maps.contains("tracing"), "{maps}");
            assert!(prog.contains("tracing this function"), "{prog}");
        } else {
            assert!(maps.contains("run as root") && prog.contains("run as root"));
        }
    }

    #[test]
    fn errno_is_found_through_the_chain_of_sources() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("creating map EVENTS")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(errno(&err), Some(libc::EPERM));
        assert_eq!(errno(&Outer(io::Error::other("no errno"))), None);
    }
}
