//! Logging to stderr through `env_logger`, shaped for systemd.
//!
//! When stderr is connected to the journal (the `dev:ino` in
//! `$JOURNAL_STREAM` matches `fstat(2)` of fd 2; systemd.exec(5) says that
//! the variable being set is not enough), every line starts with an
//! sd-daemon(3) priority prefix (`<3>` error, `<4>` warning, `<6>` info,
//! `<7>` debug and trace) and carries no timestamp, since journald adds its
//! own. Each line of a multi-line message gets the prefix, so journald never
//! files a continuation line at the wrong priority. Otherwise lines carry a
//! UTC timestamp and the level name.
//!
//! The filter uses env_logger's syntax (`info`, `collabd=debug,warn`); the
//! daemon's configuration decides which filter applies (see
//! `crate::service::config`). Passwords are never logged anywhere in collabd; this
//! module adds no redaction of its own.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use log::Level;

/// Why logging could not be set up.
#[derive(Debug)]
pub enum LoggingError {
    /// The filter is not valid env_logger syntax.
    BadFilter(String),
    /// A logger was already installed in this process.
    AlreadyInitialised(log::SetLoggerError),
}

impl fmt::Display for LoggingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoggingError::BadFilter(why) => write!(f, "invalid log filter: {why}"),
            LoggingError::AlreadyInitialised(_) => f.write_str("a logger is already installed"),
        }
    }
}

impl std::error::Error for LoggingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoggingError::AlreadyInitialised(e) => Some(e),
            LoggingError::BadFilter(_) => None,
        }
    }
}

/// The sd-daemon(3) priority of a log level.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Check a filter before using it: comma-separated directives, each a
/// level or `module::path=level`. Levels are `off`, `error`,
/// `warn`, `info`, `debug`, `trace` (any case).
pub fn validate_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s));
    let is_path = |s: &str| {
        !s.is_empty()
            && s.split("::").all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
    };
    if filter.trim().is_empty() {
        return Err("empty filter".into());
    }
    for directive in filter.split(',').map(str::trim) {
        let ok = match directive.split_once('=') {
            Some((path, level)) => is_path(path.trim()) && is_level(level.trim()),
            // A bare word must be a level: env_logger would read `loud` as
            // "module loud at trace", which is never what an operator meant.
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "{directive:?} is not a level (off, error, warn, info, debug, trace), \
                 or module=level"
            ));
        }
    }
    Ok(())
}

/// Whether `$JOURNAL_STREAM` (`device:inode`) names the file that fd 2 is.
pub fn journal_stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// Whether stderr is connected to the systemd journal.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(value) = value.to_str() else {
        return false;
    };
    let Ok(meta) = stderr_metadata() else {
        return false;
    };
    journal_stream_matches(value, meta.dev(), meta.ino())
}

/// What fstat(2) says of stderr (through a second descriptor of it).
fn stderr_metadata() -> std::io::Result<std::fs::Metadata> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr().as_fd().try_clone_to_owned()?;
    std::fs::File::from(fd).metadata()
}

/// Write one record: `<N>target: line` per line for the journal, or
/// `YYYY-MM-DDThh:mm:ss.mmmZ LEVEL target: message` otherwise.
pub fn format_record(
    out: &mut dyn Write,
    journal: bool,
    level: Level,
    target: &str,
    message: &fmt::Arguments<'_>,
    now: SystemTime,
) -> io::Result<()> {
    if journal {
        let text = message.to_string();
        let prefix = syslog_priority(level);
        for line in text.split('\n') {
            writeln!(out, "<{prefix}>{target}: {line}")?;
        }
        Ok(())
    } else {
        writeln!(out, "{} {level:<5} {target}: {message}", utc_timestamp(now))
    }
}

/// RFC 3339 UTC with milliseconds ([`super::utc`]).
pub fn utc_timestamp(now: SystemTime) -> String {
    let t = super::utc::Utc::from_system_time(now);
    format!("{}T{}.{:03}Z", t.date(), t.time(), t.millis)
}

/// Install the logger for the process with `filter`, detecting the journal.
pub fn init(filter: &str) -> Result<(), LoggingError> {
    validate_filter(filter).map_err(LoggingError::BadFilter)?;
    let journal = stderr_is_journal();
    env_logger::Builder::new()
        .parse_filters(filter)
        .format(move |buf, record| {
            format_record(
                buf,
                journal,
                record.level(),
                record.target(),
                record.args(),
                SystemTime::now(),
            )
        })
        .try_init()
        .map_err(LoggingError::AlreadyInitialised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn journal_lines_carry_priority_prefix_on_every_line_and_no_timestamp() {
        let mut out = Vec::new();
        format_record(
            &mut out,
            true,
            Level::Warn,
            "collabd::service",
            &format_args!("first\nsecond"),
            UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<4>collabd::service: first\n<4>collabd::service: second\n"
        );
        let mut out = Vec::new();
        format_record(
            &mut out,
            true,
            Level::Debug,
            "t",
            &format_args!("x"),
            UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(out, b"<7>t: x\n");
    }

    #[test]
    fn terminal_lines_carry_a_utc_timestamp() {
        let mut out = Vec::new();
        let when = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        format_record(
            &mut out,
            false,
            Level::Info,
            "collabd",
            &format_args!("up"),
            when,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-02-29T12:34:56.789Z INFO  collabd: up\n"
        );
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc_timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn journal_stream_is_compared_with_device_and_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("8", 8, 12345));
        assert!(!journal_stream_matches("x:y", 8, 12345));
    }

    #[test]
    fn journal_detection_uses_fstat_of_stderr() {
        // Whatever fd 2 is in the test harness, its own dev:ino must match
        // and a different one must not.
        // SAFETY: all-zero bytes are a valid `stat`; fstat only writes it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd 2 is open for the whole test; `st` is a valid out-pointer.
        assert_eq!(unsafe { libc::fstat(2, &mut st) }, 0);
        let meta = stderr_metadata().unwrap();
        assert_eq!((meta.dev(), meta.ino()), (st.st_dev, st.st_ino));
        let own = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(journal_stream_matches(&own, st.st_dev, st.st_ino));
        assert!(!journal_stream_matches(&own, st.st_dev, st.st_ino + 1));
    }

    #[test]
    fn filters_are_validated() {
        for good in [
            "info",
            "DEBUG",
            "collabd=debug,warn",
            "collabd::service=trace",
            "off",
        ] {
            assert_eq!(validate_filter(good), Ok(()), "{good}");
        }
        for bad in ["", "loud", "collabd=loud", "=info", "a b"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(syslog_priority(Level::Error), 3);
        assert_eq!(syslog_priority(Level::Trace), 7);
    }
}
