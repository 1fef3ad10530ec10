//! collabd: the collaboration service (see collabd(8)).

/// Frees memory through the wiping allocator, so a password never lingers
/// in a block freed inside a wipe scope (see `collabd::wire::secret`). Set
/// by the programs that hold passwords, not by the library, so a test
/// binary may install an allocator of its own.
#[global_allocator]
static ALLOCATOR: collabd::wire::secret::WipingAllocator = collabd::wire::secret::WipingAllocator;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(collabd::service::run::main())
}
