//! The journal's schema, in one place: the tables, the version this blast writes
//! ([`SCHEMA_VERSION`]) and the [`MIGRATIONS`] that bring a journal file to it. Nothing else
//! creates or alters a table; the queries are in `store.rs`, `status.rs` and `attempt_log.rs`.
//!
//! # Schema (version 4)
//! - `meta(key, value)`: `schema_version`; `log_generation`, the last generation of the
//!   writer's log whose records are in SQLite (`attempt_log.rs`). [`MIGRATIONS`] are applied in
//!   order at open, each in its own transaction; a journal newer than this blast is refused.
//! - `runs`: one row per run, identified by the campaign id plus the SHA-256 of the recipient
//!   list's bytes (`list_fingerprint`); `template_fingerprint` is the SHA-256 of the templates,
//!   From and fixed headers; `state` is `running`, `finished` or `stopped`.
//! - `outcomes(run_id, row, status, …)`: append-only, one row per **final** outcome
//!   (`accepted` only after the relay's 2xx to the end of DATA, `failed`, `expired`).
//! - `attempts(run_id, row)`: append-only marks written when a connection takes a job for the
//!   first time. A row with a mark and no outcome was possibly in flight at a crash.
//! - `node_events(run_id, node, event, reason, accepted, time)` (v2): a node's health history,
//!   one row when a node goes `down` (with the reason) or comes back `up`; `accepted` is the
//!   node's accepted count in that session at that moment. Shown by `blast status`.
//! - `dns_counts(run_id, domain_lookups, cache_hits, negative, temporary, rows_warned, time)`
//!   (v3): the resolver's counters of one session, written once at its end (not by the writer
//!   thread); `blast status` sums them over the sessions of a run. Rows failed by DNS come from
//!   `outcomes` (node `dns`), so they are right even for a session that crashed.
//! - `runs.log_offset` (v4): the delivery log's size when the run was created, so a resume can
//!   tell this run's lines from earlier runs' and append the lines a killed session did not
//!   write (NULL for runs created before v4: the whole log is read).

use rusqlite::OptionalExtension;

use super::{Journal, JournalError, Result, sql};

/// The schema version this blast writes.
pub const SCHEMA_VERSION: i64 = 4;

/// Migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        campaign TEXT NOT NULL,
        list_fingerprint TEXT NOT NULL,
        template_fingerprint TEXT NOT NULL,
        list_path TEXT NOT NULL,
        started_at TEXT NOT NULL,
        started_unix INTEGER NOT NULL,
        ended_at TEXT,
        ended_unix INTEGER,
        state TEXT NOT NULL CHECK (state IN ('running', 'finished', 'stopped')),
        sessions INTEGER NOT NULL DEFAULT 1,
        pid INTEGER
     );
     CREATE INDEX runs_by_list ON runs (campaign, list_fingerprint);
     CREATE TABLE outcomes (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        row INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'failed', 'expired')),
        address TEXT NOT NULL,
        node TEXT NOT NULL,
        stage TEXT,
        code INTEGER,
        enhanced TEXT,
        text TEXT,
        queue_id TEXT,
        message_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        possibly_duplicated INTEGER NOT NULL,
        time TEXT NOT NULL
     );
     CREATE INDEX outcomes_by_row ON outcomes (run_id, row);
     CREATE TABLE attempts (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        row INTEGER NOT NULL
     );",
    // v2: node health history
    "CREATE TABLE node_events (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        node TEXT NOT NULL,
        event TEXT NOT NULL CHECK (event IN ('down', 'up')),
        reason TEXT NOT NULL,
        accepted INTEGER NOT NULL,
        time TEXT NOT NULL
     );",
    // v3: DNS counters, one row per session (pre-validation / direct delivery)
    "CREATE TABLE dns_counts (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        domain_lookups INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL,
        negative INTEGER NOT NULL,
        temporary INTEGER NOT NULL,
        rows_warned INTEGER NOT NULL,
        time TEXT NOT NULL
     );",
    // v4: where the run's lines start in the delivery log (to repair it on resume)
    "ALTER TABLE runs ADD COLUMN log_offset INTEGER;",
];

impl Journal {
    /// The schema version (0 for an empty file).
    pub fn schema_version(&self) -> Result<i64> {
        let has_meta: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
                [],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))?;
        if !has_meta {
            return Ok(0);
        }
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(&self.path))?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Brings the schema up to date: applies the migrations this file lacks, each in its own
    /// transaction. Refuses a journal newer than this blast.
    pub(super) fn migrate(&mut self) -> Result<()> {
        let e = sql(&self.path);
        let from = self.schema_version()?;
        if from > SCHEMA_VERSION {
            return Err(JournalError::TooNew {
                path: self.path.clone(),
                found: from,
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let tx = self.conn.transaction().map_err(&e)?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            )
            .map_err(&e)?;
            tx.execute_batch(step).map_err(&e)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
                [(i as i64 + 1).to_string()],
            )
            .map_err(&e)?;
            tx.commit().map_err(&e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_support::dir;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let d = dir("migrate");
        let p = d.join("j.sqlite");
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.schema_version().unwrap(), SCHEMA_VERSION);
        drop(j);
        let j = Journal::open(&p).unwrap(); // re-open: no migration re-applied
        assert_eq!(j.schema_version().unwrap(), SCHEMA_VERSION);
        j.connection()
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        drop(j);
        assert!(matches!(
            Journal::open(&p),
            Err(JournalError::TooNew { found: 99, .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
