/*! collabctl: administers the collabd Config DB. The work is in
[`collabd::admin::collabctl`]; this maps its errors to exit codes. */

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = std::env::args_os().skip(1).collect();
    let env_database = std::env::var_os(collabd::admin::collabctl::DATABASE_ENV);
    let mut stdout = std::io::stdout().lock();
    let result = collabd::admin::collabctl::run(args, env_database, &mut stdout);
    let _ = stdout.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("collabctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
