//! The registry and audit writes that could not reach the Config DB: kept,
//! in order, in a bounded file under the service's state directory, and
//! written when the database answers again, each with the time it
//! happened (collabd(8), "Audit and registry").
//!
//! While anything is spooled, every new write goes to the spool too, so
//! the database receives them in the order they happened. The heartbeat
//! thread drains the spool ([`Spool::drain`]); a write whose row is gone
//! (a late coverage update of a session that has ended meanwhile) is
//! dropped as done, a database that fails again leaves the rest for the
//! next round. Past [`MAX_SPOOLED`] records, or without a state directory,
//! writes are dropped, counted and logged: never silently.
//!
//! The file is text, one record a line, fields separated by tabs, free
//! text escaped (`\\`, `\t`, `\n`, `\r`); it never holds a password (no
//! write does).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::configdb::pool::Pool;
use crate::configdb::{AuditEvent, ConfigDb, Coverage, DbError};

/// Most records the spool keeps (at about 200 bytes each, 20 MiB).
pub const MAX_SPOOLED: usize = 100_000;

/// The spool file's name in the state directory.
pub const SPOOL_FILE: &str = "registry.spool";

/// One write for the Config DB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryWrite {
    /// An audit event.
    Audit(AuditEvent),
    /// A device's status message changed its session's coverage.
    Coverage { id: i64, coverage: Coverage },
    /// A session ended.
    Ended { id: i64, reason: String },
}

impl RegistryWrite {
    /// Applies the write, as of `at_ms`. `Ok(false)`: nothing to change
    /// (the row had ended already), which counts as done.
    fn apply(&self, db: &mut ConfigDb, at_ms: i64) -> Result<bool, DbError> {
        match self {
            RegistryWrite::Audit(event) => db.audit_at(event, at_ms).map(|()| true),
            RegistryWrite::Coverage { id, coverage } => {
                db.session_updated_at(*id, *coverage, at_ms)
            }
            RegistryWrite::Ended { id, reason } => db.session_ended_at(*id, reason, at_ms),
        }
    }

    fn encode(&self, at_ms: i64) -> String {
        let opt = |v: &Option<String>| match v {
            Some(text) => format!("={}", escape(text)),
            None => String::new(),
        };
        match self {
            RegistryWrite::Audit(e) => format!(
                "A\t{at_ms}\t{}\t{}\t{}\t{}\t{}",
                escape(&e.event),
                opt(&e.instance),
                opt(&e.login),
                e.pin.map_or(String::new(), |p| p.to_string()),
                opt(&e.reason)
            ),
            RegistryWrite::Coverage { id, coverage } => {
                format!("C\t{at_ms}\t{id}\t{}", coverage.as_str())
            }
            RegistryWrite::Ended { id, reason } => format!("E\t{at_ms}\t{id}\t{}", escape(reason)),
        }
    }

    fn decode(line: &str) -> Option<(RegistryWrite, i64)> {
        let fields: Vec<&str> = line.split('\t').collect();
        let at_ms: i64 = fields.get(1)?.parse().ok()?;
        let opt = |f: &str| -> Option<Option<String>> {
            if f.is_empty() {
                Some(None)
            } else {
                f.strip_prefix('=').map(unescape).map(Some)
            }
        };
        let write = match (fields[0], fields.len()) {
            ("A", 7) => RegistryWrite::Audit(AuditEvent {
                event: unescape(fields[2]),
                instance: opt(fields[3])?,
                login: opt(fields[4])?,
                pin: if fields[5].is_empty() {
                    None
                } else {
                    Some(fields[5].parse().ok()?)
                },
                reason: opt(fields[6])?,
            }),
            ("C", 4) => RegistryWrite::Coverage {
                id: fields[2].parse().ok()?,
                coverage: fields[3].parse().ok()?,
            },
            ("E", 4) => RegistryWrite::Ended {
                id: fields[2].parse().ok()?,
                reason: unescape(fields[3]),
            },
            _ => return None,
        };
        Some((write, at_ms))
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What one [`Spool::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Records written to the database (or found already done).
    pub written: usize,
    /// Records still spooled.
    pub left: usize,
}

struct Inner {
    /// `None`: no state directory, nothing can be kept.
    path: Option<PathBuf>,
    /// Records in the file.
    spooled: usize,
    /// Writes lost since start (no state directory, spool full, file
    /// errors).
    dropped: u64,
}

/// The spool of one collabd instance.
pub struct Spool {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner();
        f.debug_struct("Spool")
            .field("path", &inner.path)
            .field("spooled", &inner.spooled)
            .field("dropped", &inner.dropped)
            .finish()
    }
}

impl Spool {
    /// A spool in `state_directory` (created, mode 0700, if missing), picking
    /// up what a previous run left there; `None`: no spool, writes the
    /// database cannot take are dropped and counted.
    pub fn open(state_directory: Option<&Path>) -> io::Result<Spool> {
        let (path, spooled) = match state_directory {
            Some(dir) => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
                let path = dir.join(SPOOL_FILE);
                let spooled = match File::open(&path) {
                    Ok(f) => BufReader::new(f).lines().count(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(e),
                };
                (Some(path), spooled)
            }
            None => (None, 0),
        };
        Ok(Spool {
            inner: Mutex::new(Inner {
                path,
                spooled,
                dropped: 0,
            }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records waiting for the database.
    pub fn spooled(&self) -> usize {
        self.inner().spooled
    }

    /// Writes lost since start.
    pub fn dropped(&self) -> u64 {
        self.inner().dropped
    }

    /// Writes `write` now if nothing is spooled and `direct` (the database
    /// write) succeeds; otherwise keeps it, in order. `direct` gets the
    /// write and returns whether the database could not be used (an
    /// outage, as opposed to a refusal such as bad data).
    pub fn write(
        &self,
        write: RegistryWrite,
        direct: impl FnOnce(&RegistryWrite) -> Result<(), (bool, String)>,
    ) {
        let at_ms = now_ms();
        if self.spooled() == 0 {
            match direct(&write) {
                Ok(()) => return,
                Err((false, why)) => {
                    log::warn!("registry write refused, not kept: {why}");
                    return;
                }
                Err((true, why)) => log::warn!("Config DB unavailable ({why}); spooling"),
            }
        }
        self.keep(&write, at_ms);
    }

    fn keep(&self, write: &RegistryWrite, at_ms: i64) {
        let mut inner = self.inner();
        let why = match &inner.path {
            None => Some("no state directory".to_string()),
            Some(_) if inner.spooled >= MAX_SPOOLED => {
                Some(format!("spool full ({MAX_SPOOLED} records)"))
            }
            Some(path) => append(path, &write.encode(at_ms))
                .err()
                .map(|e| format!("{}: {e}", path.display())),
        };
        match why {
            None => inner.spooled += 1,
            Some(why) => {
                inner.dropped += 1;
                let dropped = inner.dropped;
                // The first loss, then every hundredth: counted, never silent.
                if dropped == 1 || dropped % 100 == 0 {
                    log::error!(
                        "registry write lost ({why}): {dropped} lost since start; \
                         the Config DB will not show them"
                    );
                }
            }
        }
    }

    /// Writes what is spooled to the database through `pool` (each write
    /// waiting at most `wait` for a connection), oldest first, until it is
    /// empty or the database is unavailable again. A record the database
    /// refuses (not an outage) is logged and dropped, so one bad record
    /// cannot hold the rest back.
    pub fn drain(&self, pool: &Pool<ConfigDb>, wait: Duration) -> Drained {
        let path = {
            let inner = self.inner();
            match (&inner.path, inner.spooled) {
                (Some(path), n) if n > 0 => path.clone(),
                _ => return Drained::default(),
            }
        };
        // A snapshot: writes arriving meanwhile are appended after it.
        let lines = match read_lines(&path) {
            Ok(lines) => lines,
            Err(e) => {
                log::error!("cannot read the spool {}: {e}", path.display());
                return Drained {
                    written: 0,
                    left: self.spooled(),
                };
            }
        };
        let mut done = 0;
        for line in &lines {
            let Some((write, at_ms)) = RegistryWrite::decode(line) else {
                log::error!("spool record not understood, dropped: {line:?}");
                done += 1;
                continue;
            };
            match pool.with(Instant::now() + wait, |db| write.apply(db, at_ms)) {
                Ok(_) => done += 1,
                Err(e) if e.is_unavailable() => {
                    log::info!("spool drain paused: {e}");
                    break;
                }
                Err(e) => {
                    log::error!("spooled write refused by the Config DB, dropped: {e}");
                    done += 1;
                }
            }
        }
        let mut inner = self.inner();
        let rest = match read_lines(&path) {
            Ok(all) => all.into_iter().skip(done).collect::<Vec<_>>(),
            Err(e) => {
                log::error!("cannot read the spool {}: {e}", path.display());
                return Drained {
                    written: done,
                    left: inner.spooled,
                };
            }
        };
        if let Err(e) = rewrite(&path, &rest) {
            // The file still holds the written records: they would be
            // written again after a restart, so say so.
            log::error!(
                "cannot shorten the spool {} after writing {done} records: {e}",
                path.display()
            );
        }
        inner.spooled = rest.len();
        Drained {
            written: done,
            left: rest.len(),
        }
    }
}

fn append(path: &Path, line: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    match File::open(path) {
        Ok(f) => BufReader::new(f).lines().collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the file's records with `lines` (a rename, so a crash leaves
/// the old file or the new, never half of one).
fn rewrite(path: &Path, lines: &[String]) -> io::Result<()> {
    if lines.is_empty() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("spool.new");
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        for line in lines {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_encoding_with_awkward_text() {
        let writes = [
            RegistryWrite::Audit(AuditEvent {
                event: "logout".into(),
                instance: Some("bcs\t1".into()),
                login: Some("CORP\\alice".into()),
                pin: Some(0x2100_000a),
                reason: Some("line\nbreak = and \\t".into()),
            }),
            RegistryWrite::Audit(AuditEvent::new("session_ended")),
            RegistryWrite::Coverage {
                id: 7,
                coverage: Coverage::Dormant,
            },
            RegistryWrite::Ended {
                id: 9,
                reason: "".into(),
            },
        ];
        for w in writes {
            let line = w.encode(1_700_000_000_123);
            assert!(!line.contains('\n'), "{line:?}");
            assert_eq!(
                RegistryWrite::decode(&line),
                Some((w.clone(), 1_700_000_000_123)),
                "{line:?}"
            );
        }
        for bad in ["", "X\t1", "C\tx\t1\tin", "C\t1\t2\tsideways", "A\t1\te"] {
            assert_eq!(RegistryWrite::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_a_state_directory_a_lost_write_is_counted() {
        let spool = Spool::open(None).unwrap();
        spool.write(RegistryWrite::Audit(AuditEvent::new("logout")), |_| {
            Err((true, "down".into()))
        });
        assert_eq!(spool.dropped(), 1);
        assert_eq!(spool.spooled(), 0);
        // A refusal (not an outage) is not kept either, and not counted.
        spool.write(RegistryWrite::Audit(AuditEvent::new("logout")), |_| {
            Err((false, "bad data".into()))
        });
        assert_eq!(spool.dropped(), 1);
    }

    #[test]
    fn while_anything_is_spooled_new_writes_queue_behind_it() {
        let dir =
            std::env::temp_dir().join(format!("collabd-spool-{}-{}", std::process::id(), now_ms()));
        let spool = Spool::open(Some(&dir)).unwrap();
        spool.write(
            RegistryWrite::Ended {
                id: 1,
                reason: "a".into(),
            },
            |_| Err((true, "down".into())),
        );
        let mut direct_called = false;
        spool.write(
            RegistryWrite::Ended {
                id: 2,
                reason: "b".into(),
            },
            |_| {
                direct_called = true;
                Ok(())
            },
        );
        assert!(!direct_called, "a write went around the spool");
        assert_eq!(spool.spooled(), 2);
        // A new Spool on the same directory (a restart) finds both.
        assert_eq!(Spool::open(Some(&dir)).unwrap().spooled(), 2);
        let lines = read_lines(&dir.join(SPOOL_FILE)).unwrap();
        assert!(lines[0].starts_with("E\t") && lines[0].ends_with("\t1\ta"));
        assert!(lines[1].ends_with("\t2\tb"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
