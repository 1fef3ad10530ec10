//! Why a collabctl command failed, and the exit code (sysexits) each
//! failure maps to.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::configdb::DbError;

/// Why a collabctl command failed. Its `Display` is the one line printed on
/// stderr.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong (exit 64).
    Usage(String),
    /// A Config DB failure (exit 65, 69 or 70 by kind).
    Db(DbError),
    /// A key file to import cannot be read (exit 66).
    KeyInput { path: PathBuf, error: io::Error },
    /// The key file cannot be written (exit 73).
    KeyOutput { path: PathBuf, error: io::Error },
    /// Standard output cannot be written (exit 74).
    Output(io::Error),
    /// `collabctl demo` failed (its own exit codes).
    Demo(crate::admin::demo::DemoError),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(why) => write!(f, "{why} (see collabctl --help)"),
            CliError::Db(e) => write!(f, "{e}"),
            CliError::KeyInput { path, error } => {
                write!(f, "cannot read key file {}: {error}", path.display())
            }
            CliError::KeyOutput { path, error } => {
                write!(f, "cannot write key file {}: {error}", path.display())
            }
            CliError::Output(e) => write!(f, "cannot write output: {e}"),
            CliError::Demo(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Usage(_) => None,
            CliError::Db(e) => Some(e),
            CliError::KeyInput { error, .. }
            | CliError::KeyOutput { error, .. }
            | CliError::Output(error) => Some(error),
            CliError::Demo(e) => Some(e),
        }
    }
}

impl From<DbError> for CliError {
    fn from(e: DbError) -> CliError {
        CliError::Db(e)
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> CliError {
        CliError::Output(e)
    }
}

impl CliError {
    /// The process exit code for this failure (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 64,
            CliError::Db(DbError::BadData { .. })
            | CliError::Db(DbError::NotFound { .. })
            | CliError::Db(DbError::Duplicate { .. }) => 65,
            CliError::Db(DbError::Unreachable(_)) => 69,
            CliError::Db(DbError::Query(_)) => 70,
            CliError::KeyInput { .. } => 66,
            CliError::KeyOutput { .. } => 73,
            CliError::Output(_) => 74,
            CliError::Demo(e) => e.exit_code(),
        }
    }
}

pub(super) fn usage(why: impl Into<String>) -> CliError {
    CliError::Usage(why.into())
}

pub(super) fn bad(what: impl Into<String>) -> CliError {
    CliError::Db(DbError::BadData { what: what.into() })
}
