//! collabd: the collaboration service (see collabd(8)).

/// Frees memory through the wiping allocator, so a password never lingers
/// in a block freed inside a wipe scope (see `collabd::wire::secret`). Set
/// by the programs that hold passwords, not by the library, so a test
/// binary may install an allocator of its own. Under it, each thread keeps
/// a small cache of freed small blocks, given back before it waits for its
/// device or for CWA (see `collabd::ops::thread_cache`).
#[global_allocator]
static ALLOCATOR: WipingAllocator<ThreadCache> = WipingAllocator::over(ThreadCache::new());

use collabd::ops::thread_cache::ThreadCache;
use collabd::wire::secret::WipingAllocator;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(collabd::service::run::main())
}
