use std::process::ExitCode;

use clap::Parser;

// glibc's allocator spent a fifth of the server's CPU under a city round
// (malloc_consolidate, unlink_chunk); mimalloc's thread-local pages do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    without_transparent_huge_pages();
    match healthcode::runtime() {
        Ok(runtime) => runtime.block_on(healthcode::cli::run(healthcode::cli::Cli::parse())),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc asks for transparent huge pages on its arenas, and the kernel
/// then counts a 2 MiB page as resident for every few bytes used in it:
/// 434-876 MiB of `up`'s peak in the 13M round were huge pages. Memory
/// is bounded by settings (docs/operations.md), so the process opts out;
/// where the call is refused, huge pages only cost memory, not correctness.
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
