/*!
A throwaway PostgreSQL cluster for tests and the demo: `initdb` into a fresh
directory, a postmaster listening only on a Unix socket in that directory,
and guaranteed clean-up.

Clean-up does not depend on `Drop` running. At start a small reaper process
(`sh`) is spawned with a pipe on its stdin; it blocks reading that pipe,
and when the pipe closes (because the `ScratchPostgres` was dropped, or
because this process ended in any way, even by SIGKILL) it stops the
cluster (`pg_ctl stop -m immediate`) and removes the directory. So a cluster
kept in a `static` (never dropped) still goes away at process exit, and no
cluster outlives a killed test run. The reaper has its own process group so
that a Ctrl-C aimed at the test run does not kill it before it has cleaned
up.

`initdb` refuses to run as root. When the effective user is root (as CI
is), the cluster directory is given to the `postgres` system user and
`initdb`/`pg_ctl` run through `runuser -u postgres --`.
*/

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The port number only names the socket file (`.s.PGSQL.<port>`); no TCP
/// port is opened.
const PORT: u16 = 5432;

/// Unix socket paths are limited to 108 bytes (`sun_path`).
const MAX_SOCKET_PATH: usize = 100;

/// How long to wait for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variable naming a directory holding `initdb` and `pg_ctl`,
/// searched before PATH.
pub const PG_BIN_ENV: &str = "COLLABD_PG_BIN";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Why a throwaway cluster could not be started or used.
#[derive(Debug)]
pub enum ScratchError {
    /// No `initdb`/`pg_ctl` found.
    NotInstalled { searched: String },
    /// Running as root but there is no `postgres` user to run the server.
    NoPostgresUser,
    /// A file-system step failed.
    Io { what: String, error: io::Error },
    /// A command (initdb, pg_ctl) failed; `output` is its output and the
    /// tail of the server log.
    Failed { what: String, output: String },
    /// Talking to the started server failed.
    Database(String),
}

impl fmt::Display for ScratchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScratchError::NotInstalled { searched } => write!(
                f,
                "PostgreSQL server binaries (initdb, pg_ctl) not found ({searched}): \
                 install the server package (Debian: apt-get install postgresql)"
            ),
            ScratchError::NoPostgresUser => write!(
                f,
                "running as root, but there is no 'postgres' user to run the server as \
                 (Debian's postgresql package creates it)"
            ),
            ScratchError::Io { what, error } => write!(f, "{what}: {error}"),
            ScratchError::Failed { what, output } => write!(f, "{what} failed:\n{output}"),
            ScratchError::Database(why) => write!(f, "throwaway PostgreSQL: {why}"),
        }
    }
}

impl std::error::Error for ScratchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScratchError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ScratchError {
    let what = what.into();
    move |error| ScratchError::Io { what, error }
}

/// A running throwaway cluster. Dropping it stops the server and removes
/// its directory.
pub struct ScratchPostgres {
    dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    /// uid/gid of `postgres` when running as root.
    run_as: Option<(u32, u32)>,
    reaper: Option<Child>,
}

impl fmt::Debug for ScratchPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScratchPostgres")
            .field("dir", &self.dir)
            .field("bin_dir", &self.bin_dir)
            .field("run_as_postgres", &self.run_as.is_some())
            .finish()
    }
}

impl ScratchPostgres {
    /// Creates a cluster in a new directory under `parent_dir` and starts
    /// it. When running as root and `parent_dir` is not traversable by the
    /// `postgres` user (or its path is too long for a socket), the system
    /// temporary directory is used instead.
    pub fn start(parent_dir: &Path) -> Result<ScratchPostgres, ScratchError> {
        let bin_dir = find_bin_dir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = if root {
            Some(postgres_user().ok_or(ScratchError::NoPostgresUser)?)
        } else {
            None
        };
        fs::create_dir_all(parent_dir)
            .map_err(io_err(format!("creating {}", parent_dir.display())))?;
        let parent = choose_parent(parent_dir, run_as.is_some())?;
        let dir = parent.join(unique_name());
        fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("setting the mode of {}", dir.display())))?;
        if let Some((uid, gid)) = run_as {
            chown(&dir, uid, gid)?;
        }
        let mut scratch = ScratchPostgres {
            data_dir: dir.join("data"),
            log_path: dir.join("postgres.log"),
            dir,
            bin_dir,
            run_as,
            reaper: None,
        };
        // From here on, dropping `scratch` (also on the error paths below)
        // stops whatever was started and removes the directory.
        scratch.reaper = Some(scratch.spawn_reaper()?);
        scratch.init()?;
        scratch.start_server()?;
        Ok(scratch)
    }

    /// The directory holding the socket, the data directory and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server log, for diagnosing a failed test.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The directory of the server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A URL for database `db` as user `postgres` over the Unix socket.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@{}:{PORT}/{}",
            percent_encode(self.dir.as_os_str().as_bytes()),
            percent_encode(db.as_bytes())
        )
    }

    /// The same in libpq key=value form.
    pub fn key_value(&self, db: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={db}",
            self.dir.display()
        )
    }

    /// Creates database `name` (letters, digits and `_`, starting with a
    /// letter) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, ScratchError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.as_bytes()[0].is_ascii_alphabetic()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(ScratchError::Database(format!(
                "database name {name:?} must be letters, digits and _"
            )));
        }
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| ScratchError::Database(format!("connecting: {e}")))?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .map_err(|e| ScratchError::Database(format!("creating database {name}: {e}")))?;
        Ok(self.url(name))
    }

    /// Stops the server (immediate shutdown) but keeps the cluster, so a
    /// test can see how a client copes with a database that went away.
    pub fn stop_server(&self) -> Result<(), ScratchError> {
        let output = self
            .pg_command(OsStr::new("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .map_err(io_err("running pg_ctl stop"))?;
        if !output.status.success() {
            return Err(ScratchError::Failed {
                what: "pg_ctl stop".into(),
                output: self.describe_failure(&output),
            });
        }
        Ok(())
    }

    /// Starts the server again after [`ScratchPostgres::stop_server`].
    pub fn start_server(&self) -> Result<(), ScratchError> {
        let options = format!(
            "-k '{}' -p {PORT} -c listen_addresses='' -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB",
            self.dir.display()
        );
        let output = self
            .pg_command(OsStr::new("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args([
                "-w",
                "-t",
                &START_TIMEOUT.as_secs().to_string(),
                "-o",
                &options,
                "start",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running pg_ctl start"))?;
        if !output.status.success() {
            return Err(ScratchError::Failed {
                what: "pg_ctl start".into(),
                output: self.describe_failure(&output),
            });
        }
        // pg_ctl -w waits for the server to accept connections; also wait
        // for the socket file itself, which is what clients look for.
        let socket = self.dir.join(format!(".s.PGSQL.{PORT}"));
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(ScratchError::Failed {
                    what: format!("waiting for {}", socket.display()),
                    output: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn init(&self) -> Result<(), ScratchError> {
        let output = self
            .pg_command(OsStr::new("initdb"))
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running initdb"))?;
        if !output.status.success() {
            return Err(ScratchError::Failed {
                what: "initdb".into(),
                output: self.describe_failure(&output),
            });
        }
        Ok(())
    }

    /// A command running `program` from the server's bin directory, as the
    /// `postgres` user when we are root.
    fn pg_command(&self, program: &OsStr) -> Command {
        let path = self.bin_dir.join(program);
        let mut command = if self.run_as.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The postgres user may not be able to enter our working directory.
        command.current_dir(&self.dir);
        command
    }

    fn spawn_reaper(&self) -> Result<Child, ScratchError> {
        // Runs when stdin reaches end of file: on drop, or when this
        // process ends however it ends.
        const SCRIPT: &str = r#"trap '' INT HUP TERM QUIT
read -r _ignored || true
if [ -f "$PG_DATA/postmaster.pid" ]; then
  if [ -n "$PG_RUNAS" ]; then
    runuser -u "$PG_RUNAS" -- "$PG_CTL" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1
  else
    "$PG_CTL" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1
  fi
fi
rm -rf -- "$PG_DIR"
"#;
        let mut command = Command::new("sh");
        command
            .args(["-c", SCRIPT])
            .env("PG_DATA", &self.data_dir)
            .env("PG_DIR", &self.dir)
            .env("PG_CTL", self.bin_dir.join("pg_ctl"))
            .env(
                "PG_RUNAS",
                if self.run_as.is_some() {
                    "postgres"
                } else {
                    ""
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        command
            .spawn()
            .map_err(io_err("starting the clean-up process"))
    }

    fn describe_failure(&self, output: &std::process::Output) -> String {
        format!(
            "{}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout).trim_end(),
            String::from_utf8_lossy(&output.stderr).trim_end(),
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        const TAIL: usize = 4000;
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log_path) {
            let mut bytes = Vec::new();
            if file.read_to_end(&mut bytes).is_ok() {
                let start = bytes.len().saturating_sub(TAIL);
                text = String::from_utf8_lossy(&bytes[start..]).into_owned();
            }
        }
        format!("--- server log ({}) ---\n{text}", self.log_path.display())
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if let Some(mut reaper) = self.reaper.take() {
            // Closing the pipe tells the reaper to stop the server and
            // remove the directory; wait so that it is gone on return.
            drop(reaper.stdin.take());
            let _ = reaper.wait();
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: `$COLLABD_PG_BIN`, then
/// PATH, then the highest version under `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Result<PathBuf, ScratchError> {
    let has_both =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if has_both(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if is_executable(&initdb) {
                // Follow a symlink into the real bin directory, where pg_ctl
                // and postgres live side by side.
                let real = fs::canonicalize(&initdb).ok();
                if let Some(real_dir) = real.as_deref().and_then(Path::parent) {
                    if has_both(real_dir) {
                        return Ok(real_dir.to_path_buf());
                    }
                }
                if has_both(&dir) {
                    return Ok(dir);
                }
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let bin = entry.path().join("bin");
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            if let Some(version) = version {
                if has_both(&bin) {
                    versions.push((version, bin));
                }
            }
        }
    }
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| ScratchError::NotInstalled {
            searched: format!("${PG_BIN_ENV}, PATH, /usr/lib/postgresql/*/bin"),
        })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// uid and gid of the `postgres` user (getpwnam_r: the reentrant lookup,
/// safe while other threads look users up).
fn postgres_user() -> Option<(u32, u32)> {
    let name = CString::new("postgres").ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids);
    // getpwnam_r only writes into it.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: a valid C string, an out-struct, a buffer with its true
    // length for the strings, and an out-pointer; all outlive the call.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), ScratchError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|error| ScratchError::Io {
        what: format!("giving {} to the postgres user", path.display()),
        error,
    })
}

/// `parent`, unless a socket path under it would be too long or (when the
/// server runs as another user) that user could not reach it; then the
/// system temporary directory.
fn choose_parent(parent: &Path, other_user: bool) -> Result<PathBuf, ScratchError> {
    let fits = |p: &Path| {
        // The directory name adds about 50 bytes, the socket name 15.
        p.as_os_str().len() + 50 + 15 < MAX_SOCKET_PATH
            && !p.as_os_str().as_bytes().contains(&b'\'')
    };
    let reachable = |p: &Path| !other_user || traversable_by_others(p);
    let canonical =
        fs::canonicalize(parent).map_err(io_err(format!("resolving {}", parent.display())))?;
    if fits(&canonical) && reachable(&canonical) {
        return Ok(canonical);
    }
    let tmp = fs::canonicalize(std::env::temp_dir())
        .map_err(io_err("resolving the temporary directory"))?;
    if fits(&tmp) && reachable(&tmp) {
        return Ok(tmp);
    }
    Err(ScratchError::Io {
        what: format!(
            "neither {} nor {} can hold a cluster for the postgres user",
            canonical.display(),
            tmp.display()
        ),
        error: io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not traversable or path too long",
        ),
    })
}

/// Whether every directory from `/` down to `dir` lets other users pass
/// (execute bit for others), so the postgres user can reach its cluster.
fn traversable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|p| {
        fs::metadata(p)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

fn unique_name() -> OsString {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    OsString::from(format!(
        "collabd-pg-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
