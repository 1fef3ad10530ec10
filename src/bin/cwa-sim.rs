//! `cwa-sim`: the Communicator Web Access 2007 simulator (see cwa-sim(1)).

fn main() {
    // The same log format as collabd's (journald priorities under systemd).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    if let Err(e) = collabd::ops::logging::init(&filter) {
        eprintln!("cwa-sim: RUST_LOG: {e}");
        std::process::exit(64);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = collabd::sim::run(&args) {
        let code = e.exit_code();
        if code != 0 {
            eprintln!("cwa-sim: {e}");
        }
        std::process::exit(code);
    }
}
