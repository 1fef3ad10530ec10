//! `collab-device`: a terminal collaboration client (see collab-device(1)).

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
