//! `cwa-sim`: the Communicator Web Access 2007 simulator (see cwa-sim(1)).

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = collabd::sim::run(&args) {
        let code = e.exit_code();
        if code != 0 {
            eprintln!("cwa-sim: {e}");
        }
        std::process::exit(code);
    }
}
