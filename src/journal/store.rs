//! [`Journal`]: opening a journal file (for writing, or read-only for `blast status`), its runs,
//! and the sets a resume needs (rows with a final outcome, rows attempted without one).
//!
//! Other methods of [`Journal`] live with their concept: `schema_version` and `migrate` in
//! `schema.rs`, `status` in `status.rs`, `writer` in `writer.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use super::attempt_log::fold_log;
use super::{JournalError, Result, RowSet, SCHEMA_VERSION, sql};
use crate::clock::{rfc3339, unix_now};

/// State of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Being sent, or the sender died (crash, kill -9, reboot).
    Running,
    /// Every non-rejected row has a final outcome.
    Finished,
    /// Stopped before the end (signal, no node reachable, `--limit`, render errors).
    Stopped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
            "finished" => RunState::Finished,
            "stopped" => RunState::Stopped,
            _ => RunState::Running,
        }
    }
}

/// One row of `runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub id: i64,
    pub campaign: String,
    pub list_fingerprint: String,
    pub template_fingerprint: String,
    pub list_path: String,
    pub started_at: String,
    pub started_unix: i64,
    pub ended_at: Option<String>,
    pub ended_unix: Option<i64>,
    pub state: RunState,
    /// `blast send` invocations that worked on this run (1 + resumes).
    pub sessions: i64,
    pub pid: Option<i64>,
}

/// A final outcome as the journal holds it (table `outcomes`).
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub row: u64,
    pub status: String,
    pub address: String,
    pub node: String,
    pub stage: Option<String>,
    pub code: Option<u16>,
    pub enhanced: Option<String>,
    pub text: Option<String>,
    pub queue_id: Option<String>,
    pub message_id: String,
    pub attempts: u32,
    pub possibly_duplicated: bool,
    pub time: String,
}

/// An open journal (management and reads; the writer thread has a connection of its own).
pub struct Journal {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
}

impl Journal {
    /// Opens (creating it if need be) the journal for writing and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| JournalError::Io {
                path: path.to_path_buf(),
                cause,
            })?;
        }
        // It holds recipients' addresses: created private (0600), and SQLite gives its -wal
        // and -shm files the database file's mode.
        crate::private::create_db_file(path).map_err(|cause| JournalError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let conn = Connection::open(path).map_err(sql(path))?;
        let mut j = Journal {
            conn,
            path: path.to_path_buf(),
        };
        j.configure()?;
        j.migrate()?;
        fold_log(&mut j.conn, path)?;
        Ok(j)
    }

    /// Opens an existing journal read-only (for `blast status`; works while a send runs).
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(JournalError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql(path))?;
        let j = Journal {
            conn,
            path: path.to_path_buf(),
        };
        let v = j.schema_version()?;
        if v > SCHEMA_VERSION {
            return Err(JournalError::TooNew {
                path: j.path.clone(),
                found: v,
            });
        }
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying connection (for checks such as `PRAGMA integrity_check`).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn configure(&self) -> Result<()> {
        let e = sql(&self.path);
        self.conn.busy_timeout(Duration::from_secs(5)).map_err(&e)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(&e)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal = %self.path.display(), mode, "WAL mode not available");
        }
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(&e)
    }

    fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunInfo> {
        Ok(RunInfo {
            id: r.get(0)?,
            campaign: r.get(1)?,
            list_fingerprint: r.get(2)?,
            template_fingerprint: r.get(3)?,
            list_path: r.get(4)?,
            started_at: r.get(5)?,
            started_unix: r.get(6)?,
            ended_at: r.get(7)?,
            ended_unix: r.get(8)?,
            state: RunState::parse(&r.get::<_, String>(9)?),
            sessions: r.get(10)?,
            pid: r.get(11)?,
        })
    }

    const RUN_COLUMNS: &'static str = "id, campaign, list_fingerprint, template_fingerprint, list_path, started_at, started_unix, ended_at, ended_unix, state, sessions, pid";

    /// The latest run of `campaign` over the list with this fingerprint.
    pub fn latest_run(&self, campaign: &str, list_fingerprint: &str) -> Result<Option<RunInfo>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {} FROM runs WHERE campaign = ?1 AND list_fingerprint = ?2 ORDER BY id DESC LIMIT 1",
                    Self::RUN_COLUMNS
                ),
                params![campaign, list_fingerprint],
                Self::run_from_row,
            )
            .optional()
            .map_err(sql(&self.path))
    }

    /// Every run of `campaign` over the list with this fingerprint, oldest first, each with its
    /// number of rows with a final outcome (for the resharding guard: runs of the list in the
    /// journal of another sharding). Empty for a journal with no schema yet.
    pub fn runs_of_list(
        &self,
        campaign: &str,
        list_fingerprint: &str,
    ) -> Result<Vec<(RunInfo, u64)>> {
        if self.schema_version()? == 0 {
            return Ok(Vec::new());
        }
        let e = sql(&self.path);
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {}, (SELECT COUNT(*) FROM outcomes o WHERE o.run_id = runs.id)
                 FROM runs WHERE campaign = ?1 AND list_fingerprint = ?2 ORDER BY id",
                Self::RUN_COLUMNS
            ))
            .map_err(&e)?;
        let rows = st
            .query_map(params![campaign, list_fingerprint], |r| {
                Ok((Self::run_from_row(r)?, r.get::<_, i64>(12)? as u64))
            })
            .map_err(&e)?;
        rows.collect::<rusqlite::Result<_>>().map_err(&e)
    }

    /// The latest run of `campaign`, whatever its list.
    pub fn last_run(&self, campaign: &str) -> Result<Option<RunInfo>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {} FROM runs WHERE campaign = ?1 ORDER BY id DESC LIMIT 1",
                    Self::RUN_COLUMNS
                ),
                params![campaign],
                Self::run_from_row,
            )
            .optional()
            .map_err(sql(&self.path))
    }

    pub fn run(&self, id: i64) -> Result<Option<RunInfo>> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM runs WHERE id = ?1", Self::RUN_COLUMNS),
                params![id],
                Self::run_from_row,
            )
            .optional()
            .map_err(sql(&self.path))
    }

    /// Starts a new run (state `running`) and returns its id.
    pub fn create_run(
        &self,
        campaign: &str,
        list_fingerprint: &str,
        template_fingerprint: &str,
        list_path: &Path,
    ) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO runs (campaign, list_fingerprint, template_fingerprint, list_path, started_at, started_unix, state, pid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7)",
                params![
                    campaign,
                    list_fingerprint,
                    template_fingerprint,
                    list_path.display().to_string(),
                    rfc3339(SystemTime::now()),
                    unix_now(),
                    i64::from(std::process::id()),
                ],
            )
            .map_err(sql(&self.path))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Marks an unfinished run as running again (a resume). `template_fingerprint` replaces the
    /// recorded one (the caller checked it, or the operator forced the change).
    pub fn resume_run(&self, id: i64, template_fingerprint: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET state = 'running', ended_at = NULL, ended_unix = NULL,
                 sessions = sessions + 1, pid = ?2, template_fingerprint = ?3 WHERE id = ?1",
                params![id, i64::from(std::process::id()), template_fingerprint],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Records the end of a session of a run.
    pub fn end_run(&self, id: i64, state: RunState) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET state = ?2, ended_at = ?3, ended_unix = ?4 WHERE id = ?1",
                params![id, state.as_str(), rfc3339(SystemTime::now()), unix_now()],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Records the DNS counters of a session (at its end).
    pub fn record_dns(&self, id: i64, d: &crate::dns::DnsReport) -> Result<()> {
        let n = |v: u64| v as i64;
        self.conn
            .execute(
                "INSERT INTO dns_counts (run_id, domain_lookups, cache_hits, negative, temporary,
                 rows_warned, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    n(d.domain_lookups),
                    n(d.cache_hits),
                    n(d.negative),
                    n(d.temporary),
                    n(d.rows_warned),
                    rfc3339(SystemTime::now())
                ],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// The address that row `row` of `campaign` was sent to, from its latest final outcome in
    /// any run of that campaign (read-only; for the bounce sink, which knows campaign and row
    /// from a VERP token). None if no run of `campaign` has an outcome for that row (yet:
    /// outcomes still in the writer's log are not seen).
    pub fn row_address(&self, campaign: &str, row: u64) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT o.address FROM outcomes o JOIN runs r ON r.id = o.run_id
                 WHERE r.campaign = ?1 AND o.row = ?2 ORDER BY o.run_id DESC LIMIT 1",
                params![campaign, row as i64],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(sql(&self.path))
    }

    /// Records where the run's lines start in the delivery log (its size when the run began).
    pub fn set_log_offset(&self, run: i64, offset: u64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET log_offset = ?2 WHERE id = ?1",
                params![run, offset as i64],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Where the run's lines start in the delivery log (None: not recorded, read it all).
    pub fn log_offset(&self, run: i64) -> Result<Option<u64>> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT log_offset FROM runs WHERE id = ?1", [run], |r| {
                r.get(0)
            })
            .map_err(sql(&self.path))?;
        Ok(v.map(|v| v as u64))
    }

    /// Calls `f` with every final outcome of a run whose row is not in `except`, in row order.
    pub fn outcomes_except(
        &self,
        run: i64,
        except: &RowSet,
        mut f: impl FnMut(&OutcomeRecord) -> std::io::Result<()>,
    ) -> Result<u64> {
        let e = sql(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT row, status, address, node, stage, code, enhanced, text, queue_id,
                        message_id, attempts, possibly_duplicated, time
                 FROM outcomes WHERE run_id = ?1 ORDER BY row",
            )
            .map_err(&e)?;
        let mut rows = stmt.query([run]).map_err(&e)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(&e)? {
            let row = r.get::<_, i64>(0).map_err(&e)? as u64;
            if except.contains(row) {
                continue;
            }
            let rec = OutcomeRecord {
                row,
                status: r.get(1).map_err(&e)?,
                address: r.get(2).map_err(&e)?,
                node: r.get(3).map_err(&e)?,
                stage: r.get(4).map_err(&e)?,
                code: r.get::<_, Option<i64>>(5).map_err(&e)?.map(|c| c as u16),
                enhanced: r.get(6).map_err(&e)?,
                text: r.get(7).map_err(&e)?,
                queue_id: r.get(8).map_err(&e)?,
                message_id: r.get(9).map_err(&e)?,
                attempts: r.get::<_, i64>(10).map_err(&e)? as u32,
                possibly_duplicated: r.get::<_, i64>(11).map_err(&e)? != 0,
                time: r.get(12).map_err(&e)?,
            };
            f(&rec).map_err(|cause| JournalError::Io {
                path: self.path.clone(),
                cause,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// Rows of a run that have a final outcome.
    pub fn final_rows(&self, run: i64) -> Result<RowSet> {
        self.row_set("SELECT row FROM outcomes WHERE run_id = ?1", run, None)
    }

    /// Rows of a run with an attempt mark and no final outcome (`finals`): possibly in flight
    /// when the previous session died.
    pub fn unconfirmed_rows(&self, run: i64, finals: &RowSet) -> Result<RowSet> {
        self.row_set(
            "SELECT row FROM attempts WHERE run_id = ?1",
            run,
            Some(finals),
        )
    }

    fn row_set(&self, query: &str, run: i64, except: Option<&RowSet>) -> Result<RowSet> {
        let e = sql(&self.path);
        let mut set = RowSet::new();
        let mut stmt = self.conn.prepare(query).map_err(&e)?;
        let mut rows = stmt.query([run]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let row: i64 = r.get(0).map_err(&e)?;
            let row = row as u64;
            if !except.is_some_and(|x| x.contains(row)) {
                set.insert(row);
            }
        }
        Ok(set)
    }
}
