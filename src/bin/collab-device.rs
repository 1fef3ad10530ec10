//! `collab-device`: a terminal collaboration client (see collab-device(1)).

/// Frees memory through the wiping allocator, so a password never lingers
/// in a block freed inside a wipe scope (see `collabd::wire::secret`). Set
/// by the programs that hold passwords, not by the library, so a test
/// binary may install an allocator of its own.
#[global_allocator]
static ALLOCATOR: collabd::wire::secret::WipingAllocator =
    collabd::wire::secret::WipingAllocator::system();

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match collabd::device::cli::run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("collab-device: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
