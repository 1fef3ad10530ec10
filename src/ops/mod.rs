//! Running the programs on a real system: their command lines ([`args`]),
//! readiness and watchdog
//! notifications ([`notify`]), the futex hash of a process with a thread
//! per connection ([`futex`]), signals and the shutdown flag ([`signals`]),
//! logging to stderr or the journal ([`logging`]), panics in long-lived
//! threads caught and logged ([`panics`]), resident memory kept
//! proportional to what is held ([`memory`]), a per-thread cache of small
//! freed heap blocks given back before long waits ([`thread_cache`]), a throwaway
//! PostgreSQL cluster for tests and the demo ([`scratch_pg`]), and UTC
//! calendar time without a date crate ([`utc`]). It imports only [`crate::hex`].

pub mod args;
pub mod futex;
pub mod logging;
pub mod memory;
pub mod notify;
pub mod panics;
pub mod scratch_pg;
pub mod shutdown;
pub mod signals;
pub mod thread_cache;
pub mod utc;
