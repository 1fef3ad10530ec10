//! Running under systemd: readiness and watchdog notifications
//! ([`notify`]), signals and the shutdown flag ([`signals`]), and logging to
//! stderr or the journal ([`logging`]).

pub mod logging;
pub mod notify;
pub mod signals;
