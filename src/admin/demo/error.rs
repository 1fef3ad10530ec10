//! Why the demo could not start or had to stop, and the exit code each
//! reason maps to.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::configdb::DbError;
use crate::ops::scratch_pg::ScratchError;

/// The message when a program is not built next to collabctl.
pub const BUILD_HINT: &str = "build all programs first: cargo build --release";

/// Why the demo could not start or had to stop. Its `Display` is the line
/// collabctl prints.
#[derive(Debug)]
pub enum DemoError {
    /// Bad `collabctl demo` arguments (exit 64).
    Usage(String),
    /// A program is not built next to collabctl (exit 69).
    MissingProgram { program: PathBuf },
    /// A listen address is taken (exit 69).
    PortInUse {
        what: &'static str,
        addr: SocketAddr,
    },
    /// A listen address cannot be used for another reason (exit 69).
    CannotListen {
        what: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
    /// The state directory or a file in it cannot be made (exit 73).
    State { what: String, error: io::Error },
    /// The throwaway PostgreSQL could not be started (exit 69).
    Postgres(ScratchError),
    /// Setting up the Config DB failed (exit 70).
    Db(DbError),
    /// A child could not be started or did not come up (exit 70).
    Start {
        program: &'static str,
        why: String,
        log: PathBuf,
        tail: String,
    },
    /// A child ended while the demo ran (exit 70).
    Died {
        program: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    /// Signals could not be set up (exit 71).
    Signals(io::Error),
    /// Standard output cannot be written (exit 74).
    Output(io::Error),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Usage(why) => write!(f, "demo: {why}"),
            DemoError::MissingProgram { program } => {
                write!(f, "demo: {} not found; {BUILD_HINT}", program.display())
            }
            DemoError::PortInUse { what, addr } => write!(
                f,
                "demo: {addr} ({what}) is already in use, perhaps by a running {what} or \
                 another demo; choose free addresses, for example \
                 collabctl demo --listen-dispatcher 127.0.0.1:0 --listen-collabd 127.0.0.1:0"
            ),
            DemoError::CannotListen { what, addr, error } => {
                write!(f, "demo: cannot listen on {addr} ({what}): {error}")
            }
            DemoError::State { what, error } => write!(f, "demo: {what}: {error}"),
            DemoError::Postgres(e) => write!(f, "demo: {e}"),
            DemoError::Db(e) => write!(f, "demo: setting up the Config DB: {e}"),
            DemoError::Start {
                program,
                why,
                log,
                tail,
            } => write!(
                f,
                "demo: {program} {why}; last lines of its log {}:\n{tail}",
                log.display()
            ),
            DemoError::Died {
                program,
                status,
                log,
                tail,
            } => write!(
                f,
                "demo: {program} stopped unexpectedly ({status}); everything was stopped; \
                 last lines of its log {}:\n{tail}",
                log.display()
            ),
            DemoError::Signals(e) => write!(f, "demo: cannot set up signal handling: {e}"),
            DemoError::Output(e) => write!(f, "demo: cannot write output: {e}"),
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DemoError::CannotListen { error, .. }
            | DemoError::State { error, .. }
            | DemoError::Signals(error)
            | DemoError::Output(error) => Some(error),
            DemoError::Postgres(e) => Some(e),
            DemoError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl DemoError {
    /// The process exit code (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            DemoError::Usage(_) => 64,
            DemoError::MissingProgram { .. }
            | DemoError::PortInUse { .. }
            | DemoError::CannotListen { .. }
            | DemoError::Postgres(_) => 69,
            DemoError::Db(_) | DemoError::Start { .. } | DemoError::Died { .. } => 70,
            DemoError::Signals(_) => 71,
            DemoError::State { .. } => 73,
            DemoError::Output(_) => 74,
        }
    }
}

impl From<DbError> for DemoError {
    fn from(e: DbError) -> DemoError {
        DemoError::Db(e)
    }
}

pub(super) fn output(e: io::Error) -> DemoError {
    DemoError::Output(e)
}

pub(super) fn state_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DemoError {
    let what = what.into();
    move |error| DemoError::State { what, error }
}
