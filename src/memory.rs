//! Giving freed heap back to the system.
//!
//! glibc keeps what a thread frees in that thread's arena and returns it to
//! the system only from the top of the main heap, so memory that a burst
//! used stays resident after the burst: after 40 sessions that each held
//! ~26 MiB of buffers (a peer pushing streams it never read) had closed,
//! 87 % of the 1.06 GB peak was still resident (SECURITY.md), and compiling
//! a Python or JavaScript guest leaves a few hundred MB behind. Later work
//! reuses it, but an operator sees a server that never shrinks.
//! `malloc_trim` returns it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Returns the heap freed so far to the system. Blocking: it walks every
/// arena (milliseconds on a heap of a few hundred MB). Does nothing where
/// the allocator is not glibc's.
pub(crate) fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim only releases free memory; it has no
        // preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Runs [`release_freed_heap`] on a blocking thread a second from now
/// (when what is being freed now is free), unless a run is already due:
/// sessions that end together cost one trim. Outside a tokio runtime it
/// does nothing.
pub(crate) fn release_freed_heap_soon() {
    static DUE: AtomicBool = AtomicBool::new(false);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if DUE.swap(true, Ordering::AcqRel) {
        return;
    }
    runtime.spawn(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        DUE.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(release_freed_heap).await;
    });
}
