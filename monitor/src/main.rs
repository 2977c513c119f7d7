//! wqflush: reports kernel code that flushes a kernel-global (system_*) workqueue. Everything
//! but the process set-up lives in the library (`src/lib.rs`).

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use clap::Parser as _;
use wqflush::cli::{self, Cli};

/// Whether wqflush was started with standard output closed (`>&-`). Rust's runtime reopens a
/// closed stdout as /dev/null before `main`, where every report would vanish without an error;
/// this constructor runs before that.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

#[used]
#[unsafe(link_section = ".init_array")]
static NOTE_CLOSED_STDOUT: extern "C" fn() = {
    extern "C" fn note() {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1 {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
    }
    note
};

fn main() -> ExitCode {
    // One malloc arena: start-up parses in three threads, and glibc would otherwise leave the
    // daemon's main thread on a second arena with the first one's freed pages still resident
    // (measured: 20 MB against 15 MB of RSS after 10,000 call sites; no slower to attach).
    // SAFETY: mallopt only changes allocator parameters; nothing has started another thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // Fixed thresholds: glibc raises both after the first large free (the kallsyms text, the
    // BTF), and then keeps later large blocks, freed, in the heap (measured on 7.x: 1.0 MB of
    // the 9.6 MB after attach).
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
    }
    // No transparent huge pages: with THP "always" (Debian's default) khugepaged folds the heap
    // into 2 MB pages some seconds after a burst, and the pages malloc_trim gave back count
    // again (measured: 5 MB of RSS became 10 MB with nothing allocated). Best effort.
    // SAFETY: PR_SET_THP_DISABLE takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    cli::run(Cli::parse(), STDOUT_CLOSED.load(Ordering::Relaxed))
}
