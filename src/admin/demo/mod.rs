/*!
`collabctl demo`: the whole system on one machine with one command, for a
first look and for rehearsals. This module owns the demo's life cycle: a
state directory, a throwaway PostgreSQL ([`ScratchPostgres`]) with the
schema, one instance, three users (alice, bob, carol) and one device each,
then `cwa-sim`, `collabd` and `collab-dispatcher` as child processes; it
prints the exact `collab-device` commands that sign each user in through
the dispatcher, and on SIGINT, SIGTERM or SIGHUP stops everything and
removes the state.

Signals are blocked before anything else and taken by a `sigwait` thread
(see [`crate::ops::signals`]), so Ctrl-C is an ordinary request to shut
down, never a death that leaves children behind. The children run in
process groups of their own, so the terminal's Ctrl-C reaches only the
demo, which then stops them in order: collabd first (it tells its devices,
through the dispatcher's open relays, that the service is stopping, and
signs their sessions out of CWA while the simulator still runs), then the
dispatcher, then the simulator. If the demo itself is killed, each child gets SIGTERM from the kernel
(`PR_SET_PDEATHSIG`) and the database's reaper process removes the
cluster; only the state directory is left then.

The programs are the ones built next to the running `collabctl`
(`target/release` or `target/debug`). Passwords are random, written only
to mode-0600 files in the state directory and to the simulator's users
file there, and never printed.

The parts: the command line ([`options`]), the cast ([`users`]), the
children's life cycle ([`supervise`]), the banner ([`banner`]) and the
errors with their exit codes ([`error`]). It imports the Config DB,
`ops` (signals, the throwaway PostgreSQL, the command-line reader), `net`
and `hex`; the programs it runs are child processes, not imports.
*/

mod banner;
mod error;
mod options;
mod supervise;
mod users;

pub use banner::{shell_quote, READY_LINE};
pub use error::{DemoError, BUILD_HINT};
pub use options::{DemoOptions, DEFAULT_COLLABD_LISTEN, DEFAULT_DISPATCHER_LISTEN, HELP};
pub use supervise::{run, INSTANCE, STOPPED_LINE};
