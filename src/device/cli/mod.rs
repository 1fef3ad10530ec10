//! `collab-device`: argument parsing and the key and password files
//! (`options.rs`), the two front ends over [`DeviceClient`](super::DeviceClient):
//! `--script` (records on standard input and output in the
//! [`lineformat`](super::lineformat), for tests and load: `script.rs`) and
//! an interactive line UI for a person (`interactive.rs`), what each
//! prints (`output.rs`), and the connection's run with its reconnects
//! (`run.rs`). Exit codes are in [`CliError::exit_code`] and
//! collab-device(1).

mod error;
mod interactive;
mod options;
mod output;
mod run;
mod script;

pub use error::CliError;
pub use options::{parse_args, read_key_file, read_password_file, Options};
pub use run::run;
