//! PostgreSQL for tests: a fresh, empty database per test.
//!
//! With `DATABASE_URL` set, the databases are created on that server (the
//! URL's user must be allowed to `CREATE DATABASE`). Without it, one
//! throwaway cluster ([`ScratchPostgres`]) is started per test binary, on
//! first use, in the system temporary directory.
//!
//! Clean-up of that shared cluster: it lives in a `static`, and statics are
//! never dropped, so it is not `Drop` that stops it. `ScratchPostgres` has a
//! reaper process that stops the server and deletes its directory as soon
//! as this test process ends, however it ends (normal exit, panic, Ctrl-C,
//! SIGKILL), because the reaper waits for a pipe that only this process
//! holds open. So `cargo test` leaves no cluster and no process behind.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use collabd::configdb::ConfigDb;
use collabd::ops::scratch_pg::ScratchPostgres;

static CLUSTER: OnceLock<ScratchPostgres> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The shared throwaway cluster of this test binary, started on first use.
pub fn cluster() -> &'static ScratchPostgres {
    CLUSTER.get_or_init(|| {
        ScratchPostgres::start(&std::env::temp_dir())
            .unwrap_or_else(|e| panic!("cannot start a throwaway PostgreSQL: {e}"))
    })
}

fn unique_db_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t_{}_{}_{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new empty database; returns its URL.
pub fn fresh_database() -> String {
    let name = unique_db_name();
    match std::env::var("DATABASE_URL") {
        Ok(server) if !server.is_empty() => {
            let mut client = postgres::Client::connect(&server, postgres::NoTls)
                .unwrap_or_else(|e| panic!("DATABASE_URL: cannot connect: {e}"));
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .unwrap_or_else(|e| panic!("DATABASE_URL: cannot create database: {e}"));
            with_dbname(&server, &name)
        }
        _ => cluster()
            .create_database(&name)
            .unwrap_or_else(|e| panic!("{e}")),
    }
}

/// `url` pointing at database `db` instead (URL or key=value form).
pub fn with_dbname(url: &str, db: &str) -> String {
    let scheme_end = ["postgresql://", "postgres://"]
        .iter()
        .find(|s| url.starts_with(*s))
        .map(|s| s.len());
    match scheme_end {
        Some(start) => {
            let rest = &url[start..];
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let after = &rest[authority_end..];
            let query = after.find('?').map(|i| &after[i..]).unwrap_or("");
            format!("{}{}/{db}{query}", &url[..start], &rest[..authority_end])
        }
        // Later keys win in libpq's key=value form.
        None => format!("{url} dbname={db}"),
    }
}

/// A fresh database with the schema applied, and a connection to it.
pub fn migrated_database() -> (String, ConfigDb) {
    let url = fresh_database();
    let mut db = ConfigDb::connect(&url).expect("connect to the fresh database");
    db.migrate().expect("migrate the fresh database");
    (url, db)
}

/// Every row of every table in the `public` schema as text, in a stable
/// order: compare two dumps to prove that a refused command changed nothing.
pub fn dump_tables(url: &str) -> String {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect for dump");
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = String::new();
    for table in tables {
        out.push_str(&format!("== {table}\n"));
        let rows = client
            .query(
                format!("SELECT t::text FROM \"{table}\" t ORDER BY 1").as_str(),
                &[],
            )
            .expect("dump table");
        for row in rows {
            out.push_str(&row.get::<_, String>(0));
            out.push('\n');
        }
    }
    out
}

/// The database at `url` made unavailable: new connections refused and the
/// open ones dropped, until [`Outage::end`] (or drop).
pub struct Outage {
    admin: postgres::Client,
    db_name: String,
    ended: bool,
}

impl Outage {
    /// Starts the outage.
    pub fn start(url: &str) -> Outage {
        let db_name = url.rsplit('/').next().unwrap().to_string();
        let mut admin =
            postgres::Client::connect(&with_dbname(url, "postgres"), postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{db_name}\" ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = '{db_name}' AND pid <> pg_backend_pid();"
            ))
            .unwrap();
        Outage {
            admin,
            db_name,
            ended: false,
        }
    }

    /// Lets connections in again.
    pub fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            let sql = format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", self.db_name);
            self.admin.batch_execute(&sql).unwrap();
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.ended && !std::thread::panicking() {
            self.end();
        }
    }
}
