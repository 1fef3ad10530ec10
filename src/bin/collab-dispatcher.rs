//! collab-dispatcher: relays device connections (port 3101) to live collabd
//! instances. See collab-dispatcher(8); the program is
//! [`collabd::dispatcher::main_with_args`].

use std::process::ExitCode;

fn main() -> ExitCode {
    collabd::dispatcher::main_with_args(std::env::args().skip(1).collect())
}
