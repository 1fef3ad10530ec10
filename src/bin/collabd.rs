//! collabd: the collaboration service (see collabd(8)).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(collabd::service::run::main())
}
