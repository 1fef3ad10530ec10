/*!
Schema migrations: the numbered files under `sql/`, embedded in the binary
with `include_str!` so that `collabctl migrate` needs no files at run time.

Each migration runs in its own transaction together with its
`schema_migrations` row, so a failing migration leaves the schema as it was
and a migration is never recorded without its effects. A session-level
advisory lock serialises concurrent migrators; applying twice is a no-op.
*/

use super::registry::audit_in;
use super::{classify, epoch_ms, AuditEvent, ConfigDb, DbError};

/// One numbered migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number in the file name; applied in increasing order.
    pub version: i32,
    /// The rest of the file name, without `.sql`.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

/// Every migration, in order. Add new files here; never edit an applied one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../sql/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "session_end_requests",
        sql: include_str!("../../sql/0002_session_end_requests.sql"),
    },
    Migration {
        version: 3,
        name: "away_after",
        sql: include_str!("../../sql/0003_away_after.sql"),
    },
];

/// A migration that this run applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
}

/// Key of the advisory lock held while migrating ("collabdmg" in ASCII,
/// truncated): any constant shared by all migrators would do.
const MIGRATE_LOCK_KEY: i64 = 0x636f_6c6c_6162_646d;

const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

impl ConfigDb {
    /// Applies the embedded [`MIGRATIONS`] that are not applied yet and
    /// returns those it applied (empty when the schema is current).
    pub fn migrate(&mut self) -> Result<Vec<AppliedMigration>, DbError> {
        self.migrate_with(MIGRATIONS)
    }

    /// Applies `migrations` (in the order given, skipping those recorded in
    /// `schema_migrations`). [`ConfigDb::migrate`] is this with the embedded
    /// list; tests use it to prove that a failing migration changes nothing.
    pub fn migrate_with(
        &mut self,
        migrations: &[Migration],
    ) -> Result<Vec<AppliedMigration>, DbError> {
        self.client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
            .map_err(|e| classify(e, "taking the migration lock"))?;
        let result = self.migrate_locked(migrations);
        // The lock also ends with the session; unlocking here lets a
        // long-lived connection go on to other work.
        let unlocked = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
            .map_err(|e| classify(e, "releasing the migration lock"));
        let applied = result?;
        unlocked?;
        Ok(applied)
    }

    fn migrate_locked(
        &mut self,
        migrations: &[Migration],
    ) -> Result<Vec<AppliedMigration>, DbError> {
        self.client
            .batch_execute(CREATE_SCHEMA_MIGRATIONS)
            .map_err(|e| classify(e, "creating schema_migrations"))?;
        let mut applied = Vec::new();
        for migration in migrations {
            let context = format!("migration {:04}_{}", migration.version, migration.name);
            let mut tx = self
                .client
                .transaction()
                .map_err(|e| classify(e, &context))?;
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[&migration.version],
                )
                .map_err(|e| classify(e, &context))?;
            if done.is_some() {
                continue;
            }
            tx.batch_execute(migration.sql)
                .map_err(|e| classify(e, &context))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .map_err(|e| classify(e, &context))?;
            // Audited like every other change, once the audit table exists.
            let audit_exists: bool = tx
                .query_one("SELECT to_regclass('audit_event') IS NOT NULL", &[])
                .map_err(|e| classify(e, &context))?
                .get(0);
            if audit_exists {
                let mut event = AuditEvent::new("schema_migrated");
                event.reason = Some(format!("{:04}_{}", migration.version, migration.name));
                audit_in(&mut tx, &event)?;
            }
            tx.commit().map_err(|e| classify(e, &context))?;
            applied.push(AppliedMigration {
                version: migration.version,
                name: migration.name.to_string(),
            });
        }
        Ok(applied)
    }

    /// The migrations recorded in the database: (version, name, applied at
    /// in epoch ms), oldest first. Empty before the first `migrate`.
    pub fn applied_migrations(&mut self) -> Result<Vec<(i32, String, i64)>, DbError> {
        let exists = self
            .client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .map_err(|e| classify(e, "reading schema_migrations"))?;
        if !exists.get::<_, bool>(0) {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT version, name, {} FROM schema_migrations ORDER BY version",
            epoch_ms("applied_at")
        );
        let rows = self
            .client
            .query(sql.as_str(), &[])
            .map_err(|e| classify(e, "reading schema_migrations"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Whether every embedded migration is applied: the service checks this
    /// at start-up and refuses to run against an older schema.
    pub fn schema_is_current(&mut self) -> Result<bool, DbError> {
        let applied = self.applied_migrations()?;
        Ok(MIGRATIONS
            .iter()
            .all(|m| applied.iter().any(|(v, _, _)| *v == m.version)))
    }
}
