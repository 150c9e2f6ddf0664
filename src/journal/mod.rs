//! The journal: one SQLite file per campaign that records every run and every recipient's final
//! outcome, so that a killed, rebooted or interrupted `blast send` can be resumed without losing
//! a recipient and without sending twice by our own fault. This module is the one place that
//! knows the schema.
//!
//! # Schema (version 3)
//! - `meta(key, value)`: `schema_version`. [`MIGRATIONS`] are applied in order at open, each in
//!   its own transaction; a journal newer than this blast is refused.
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
//!
//! # Writer
//! Only one thread writes SQLite during a send ([`JournalWriter`]). Records reach it in
//! transactions of at most [`BATCH`] records, committed when the batch is full or
//! [`FLUSH_EVERY`] after its first record. WAL mode with `synchronous = NORMAL`: a commit
//! survives the process being killed (it is in the OS page cache); after a power loss the last
//! commits may be lost, which resume handles like a crash before them. On close: commit, then
//! `wal_checkpoint(TRUNCATE)`. `blast status` reads concurrently (WAL).
//!
//! Records (outcomes, attempt marks, node events) are encoded by the pipeline's threads into the
//! **log**'s buffer, under a lock ([`JournalSender`]). A connection that needs its attempt mark
//! durable (see below) does not wait for a SQLite commit, nor for the writer thread: it writes
//! the buffer's unwritten records (its mark, and everything queued before it) to the log file
//! itself, with one write(2), before it returns. Same durability as a WAL commit with
//! `synchronous = NORMAL`: it survives kill -9, not a power loss. The log holds *generations*,
//! each in a file of its own, alternately `<journal>-log` ([`log_path`]) and `<journal>-log2`: a
//! header (magic, run id, generation number), then groups (u32 length + the records, each a tag
//! and the column values after `run_id`). When a batch is due, the writer thread (under the
//! lock) writes what is unwritten, takes the generation's bytes and starts the next generation
//! in the other file (emptied: its generation is committed), then builds the SQLite transaction
//! from those bytes, outside the lock, storing the generation in `meta` (`log_generation`). A
//! writer that did not close (crash, kill -9) leaves its logs behind: [`Journal::open`] (under
//! the campaign lock) folds the generations that `meta` does not have yet into SQLite, in order,
//! in one transaction, and removes the files; a torn last group (killed inside a write) is
//! ignored, as nobody was told it was durable. So `blast status` of a killed run may miss up to
//! two batches until the next `blast send`.
//!
//! Why: with one SQLite commit per group, a 1.2M-row send into smtp-sink did 2.4M records in
//! ~320k commits (~7 records each, each rewriting the outcomes, index and attempts pages in the
//! WAL) and cost ~14 % of the throughput (issue 4); with the log, ~2,400 commits. With the marks
//! written by the writer thread (each waiting connection woke it, then was woken by it), a
//! send into the embedded receiver spent ~7 µs of writer CPU per outcome, ~5 µs of it in those
//! wake-ups and context switches (one per ~2 marks); with the connections writing their own
//! marks, ~2 µs (the SQLite inserts), plus one write(2) per mark on the connection's thread.
//! Outcomes are encoded from a reference (no copy of the outcome for the journal), their time
//! formatted once per millisecond. The writer's connection sets `ignore_check_constraints`
//! (the `status IN (…)` CHECK built an ephemeral b-tree per outcome insert, ~half the SQLite
//! instructions); the log holds only `Status::as_str()`, and `apply_log` checks it.
//!
//! # Resume and the at-least-once window
//! At resume the rows with a final outcome are loaded into a [`RowSet`] bitmap (one bit per row:
//! 10M rows = 1.25 MB) and skipped by the reader before rendering. Rows with an attempt mark but no
//! outcome are re-sent and counted as "possibly duplicated (resumed)"; deferred rows are simply
//! re-sent. A connection writes its attempt mark to the log (see "Writer") before it starts the
//! transaction, so every message a relay may have received has a durable mark. A connection queues
//! the outcome of its transaction before it writes its next mark (a retry, already marked, asks
//! for a [`JournalSender::barrier`]), and that write carries both (or an earlier one, by another
//! connection or a batch hand-over, the outcome): so each connection has at most **one** row with a mark and no durable
//! outcome at any moment — the one in flight, or the one it just finished. The window in which a
//! recipient can get a message twice is therefore at most the sum of `max_connections` of the nodes
//! per crash (plus jobs waiting to be re-sent after a connection was lost mid-transaction, which
//! are flagged possibly duplicated anyway), every one of them counted as possibly duplicated; the
//! deterministic Message-ID lets downstream systems de-duplicate. `tests/crash.rs` checks this
//! against Postfix's smtp-sink with 5 `kill -9`s. (Had the marks themselves been batched lazily,
//! uncommitted marks — up to 100 ms of sends — would widen the window silently.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::campaign::Campaign;
use crate::clock::{rfc3339, unix_now};
use crate::outcome::{Outcome, stage_name};

/// Records per transaction, at most.
pub const BATCH: usize = 1000;
/// A batch is committed at the latest this long after its first record.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The schema version this blast writes.
pub const SCHEMA_VERSION: i64 = 3;

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
];

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "journal {}: schema version {found} is newer than this blast understands ({SCHEMA_VERSION}); use a newer blast",
        path.display()
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("journal {}: no such file (nothing was sent yet)", path.display())]
    Missing { path: PathBuf },
    #[error("the journal writer thread panicked")]
    Panicked,
}

type Result<T> = std::result::Result<T, JournalError>;

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

/// A set of row numbers: one bit per row (10M rows = 1.25 MB).
#[derive(Debug, Clone, Default)]
pub struct RowSet {
    bits: Vec<u64>,
    len: u64,
}

impl RowSet {
    pub fn new() -> RowSet {
        RowSet::default()
    }

    pub fn insert(&mut self, row: u64) {
        let (w, b) = ((row / 64) as usize, row % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.len += 1;
        }
    }

    pub fn contains(&self, row: u64) -> bool {
        self.bits
            .get((row / 64) as usize)
            .is_some_and(|w| w & (1 << (row % 64)) != 0)
    }

    /// Rows in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes used.
    pub fn memory(&self) -> usize {
        self.bits.capacity() * 8
    }
}

/// SHA-256 (hex) of the recipient list's bytes: with the campaign id, the identity of a run.
pub fn list_fingerprint(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// SHA-256 (hex) over everything that shapes a message besides the row: the subject, To name,
/// text, HTML and unsubscribe templates, From, Reply-To and the fixed headers.
pub fn template_fingerprint(c: &Campaign) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut field = |name: &str, value: Option<&str>| {
        // Length-prefixed, so that moving text between fields changes the fingerprint.
        for part in [Some(name), value] {
            match part {
                Some(s) => {
                    ctx.update(&(s.len() as u64).to_le_bytes());
                    ctx.update(s.as_bytes());
                }
                None => ctx.update(&u64::MAX.to_le_bytes()),
            }
        }
    };
    let t = &c.templates;
    field("subject", Some(&t.subject.text));
    field("to_name", t.to_name.as_ref().map(|s| s.text.as_str()));
    field("text", t.text.as_ref().map(|s| s.text.as_str()));
    field("html", t.html.as_ref().map(|s| s.text.as_str()));
    let unsub = c.unsubscribe.as_ref();
    field(
        "unsubscribe.mailto",
        unsub
            .and_then(|u| u.mailto.as_ref())
            .map(|s| s.text.as_str()),
    );
    field(
        "unsubscribe.url",
        unsub.and_then(|u| u.url.as_ref()).map(|s| s.text.as_str()),
    );
    field(
        "unsubscribe.one_click",
        Some(if unsub.is_some_and(|u| u.one_click) {
            "1"
        } else {
            "0"
        }),
    );
    field("from.name", c.from.name.as_deref());
    field("from.address", Some(&c.from.address));
    field(
        "reply_to.name",
        c.reply_to.as_ref().and_then(|m| m.name.as_deref()),
    );
    field(
        "reply_to.address",
        c.reply_to.as_ref().map(|m| m.address.as_str()),
    );
    for (k, v) in &c.headers {
        field(&format!("header.{k}"), Some(v));
    }
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}


/// An open journal (management and reads; the writer thread has a connection of its own).
pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

impl Journal {
    /// Opens (creating it if need be) the journal for writing and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
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

    fn migrate(&mut self) -> Result<()> {
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

    /// The DNS counters of a run (summed over its sessions); `rows_failed` from the outcomes
    /// of node `dns`. None when no session recorded any and no row failed by DNS.
    fn dns_status(&self, run: i64, rows_failed: u64) -> Result<Option<DnsStatus>> {
        let e = sql(&self.path);
        // A journal written by an older blast (read-only: not migrated) has no such table.
        let has_table: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dns_counts')",
                [],
                |r| r.get(0),
            )
            .map_err(&e)?;
        let mut d = DnsStatus {
            rows_failed,
            ..DnsStatus::default()
        };
        if has_table {
            let (sessions, lookups, hits, negative, temporary, warned): (
                i64,
                i64,
                i64,
                i64,
                i64,
                i64,
            ) = self
                .conn
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(domain_lookups), 0), COALESCE(SUM(cache_hits), 0),
                     COALESCE(SUM(negative), 0), COALESCE(SUM(temporary), 0),
                     COALESCE(SUM(rows_warned), 0) FROM dns_counts WHERE run_id = ?1",
                    [run],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .map_err(&e)?;
            d.sessions = sessions as u64;
            d.domain_lookups = lookups as u64;
            d.cache_hits = hits as u64;
            d.negative = negative as u64;
            d.temporary = temporary as u64;
            d.rows_warned = warned as u64;
        }
        Ok((d.sessions > 0 || d.rows_failed > 0).then_some(d))
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

    /// Starts the writer thread for `run` on a connection of its own.
    /// Starts the writer thread for `run` on a connection of its own. `capacity` bounds the
    /// records waiting for a SQLite transaction (at least one batch): senders wait beyond it.
    pub fn writer(&self, run: i64, capacity: usize) -> Result<JournalWriter> {
        let w = Journal::open(&self.path)?;
        let generation = log_generation(&w.conn).map_err(sql(&self.path))? + 1;
        let log = Log::create(&self.path, run, generation).map_err(|source| JournalError::Io {
            path: log_path(&self.path),
            source,
        })?;
        let shared = Arc::new(WriterShared {
            state: std::sync::Mutex::new(LogState {
                log,
                max_pending: capacity.max(BATCH),
                closed: false,
                error: None,
                outcomes: 0,
                attempts: 0,
                log_writes: 0,
                time_ms: 0,
                time: String::new(),
            }),
            room: std::sync::Condvar::new(),
        });
        let (kick, kicks) = sync_channel(4);
        let path = self.path.clone();
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_loop(w.conn, &path, run, writer_shared, kicks))
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(JournalWriter {
            tx: JournalSender {
                shared,
                kick,
                waits: Arc::new(AtomicU64::new(0)),
                unconfirmed: None,
            },
            thread,
        })
    }

    /// Everything `blast status` shows about a run.
    pub fn status(&self, run: &RunInfo, running_pid: Option<u32>) -> Result<StatusReport> {
        let e = sql(&self.path);
        let c = &self.conn;
        let mut by_status = StatusCounts::default();
        {
            let mut s = c
                .prepare("SELECT status, COUNT(*) FROM outcomes WHERE run_id = ?1 GROUP BY status")
                .map_err(&e)?;
            let rows = s
                .query_map([run.id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(&e)?;
            for r in rows {
                let (status, n) = r.map_err(&e)?;
                by_status.add(&status, n as u64);
            }
        }
        let grouped = |query: &str| -> Result<Vec<GroupCounts>> {
            let mut s = c.prepare(query).map_err(&e)?;
            let rows = s
                .query_map([run.id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(&e)?;
            let mut out: Vec<GroupCounts> = Vec::new();
            for r in rows {
                let (name, status, n) = r.map_err(&e)?;
                match out.iter_mut().find(|g| g.name == name) {
                    Some(g) => g.counts.add(&status, n as u64),
                    None => {
                        let mut g = GroupCounts {
                            name,
                            counts: StatusCounts::default(),
                        };
                        g.counts.add(&status, n as u64);
                        out.push(g);
                    }
                }
            }
            out.sort_by(|a, b| {
                b.counts
                    .total()
                    .cmp(&a.counts.total())
                    .then(a.name.cmp(&b.name))
            });
            Ok(out)
        };
        let nodes = grouped(
            "SELECT node, status, COUNT(*) FROM outcomes WHERE run_id = ?1 GROUP BY node, status",
        )?;
        let mut domains = grouped(
            "SELECT substr(address, instr(address, '@') + 1) AS domain, status, COUNT(*)
             FROM outcomes WHERE run_id = ?1 GROUP BY domain, status",
        )?;
        domains.truncate(10);
        let mut failure_reasons = Vec::new();
        {
            let mut s = c
                .prepare(
                    "SELECT code, enhanced, text, COUNT(*) AS n FROM outcomes
                     WHERE run_id = ?1 AND status <> 'accepted'
                     GROUP BY code, enhanced, text ORDER BY n DESC LIMIT 10",
                )
                .map_err(&e)?;
            let rows = s
                .query_map([run.id], |r| {
                    Ok(FailureReason {
                        code: r.get(0)?,
                        enhanced: r.get(1)?,
                        text: r.get(2)?,
                        count: r.get::<_, i64>(3)? as u64,
                    })
                })
                .map_err(&e)?;
            for r in rows {
                failure_reasons.push(r.map_err(&e)?);
            }
        }
        let possibly_duplicated: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM outcomes WHERE run_id = ?1 AND possibly_duplicated <> 0",
                [run.id],
                |r| r.get(0),
            )
            .map_err(&e)?;
        let in_flight_marks: i64 = c
            .query_row(
                "SELECT COUNT(DISTINCT a.row) FROM attempts a WHERE a.run_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.run_id = a.run_id AND o.row = a.row)",
                [run.id],
                |r| r.get(0),
            )
            .map_err(&e)?;
        let mut node_events = Vec::new();
        {
            let mut s = c
                .prepare(
                    "SELECT node, event, reason, accepted, time FROM node_events
                     WHERE run_id = ?1 ORDER BY rowid",
                )
                .map_err(&e)?;
            let rows = s
                .query_map([run.id], |r| {
                    Ok(NodeEventRow {
                        node: r.get(0)?,
                        event: r.get(1)?,
                        reason: r.get(2)?,
                        accepted: r.get::<_, i64>(3)? as u64,
                        time: r.get(4)?,
                    })
                })
                .map_err(&e)?;
            for r in rows {
                node_events.push(r.map_err(&e)?);
            }
        }
        let dns_failed = nodes
            .iter()
            .find(|n| n.name == "dns")
            .map_or(0, |n| n.counts.failed);
        let dns = self.dns_status(run.id, dns_failed)?;
        let finals = by_status.total();
        let end = run.ended_unix.filter(|_| run.state != RunState::Running);
        let elapsed = (end.unwrap_or_else(unix_now) - run.started_unix).max(1);
        Ok(StatusReport {
            journal: self.path.display().to_string(),
            run: run.clone(),
            sender_pid: running_pid,
            rows_final: finals,
            rate_per_second: finals as f64 / elapsed as f64,
            elapsed_seconds: elapsed,
            by_status,
            possibly_duplicated: possibly_duplicated as u64,
            unconfirmed: in_flight_marks as u64,
            nodes,
            domains,
            failure_reasons,
            node_events,
            dns,
        })
    }
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sql {
        path: path.to_path_buf(),
        source,
    }
}

/// Final outcomes per status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatusCounts {
    pub accepted: u64,
    pub failed: u64,
    pub expired: u64,
}

impl StatusCounts {
    fn add(&mut self, status: &str, n: u64) {
        match status {
            "accepted" => self.accepted += n,
            "failed" => self.failed += n,
            _ => self.expired += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.accepted + self.failed + self.expired
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupCounts {
    pub name: String,
    #[serde(flatten)]
    pub counts: StatusCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureReason {
    pub code: Option<i64>,
    pub enhanced: Option<String>,
    pub text: Option<String>,
    pub count: u64,
}

/// One down/up event of a node (table `node_events`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeEventRow {
    pub node: String,
    /// "down" or "up".
    pub event: String,
    pub reason: String,
    /// The node's accepted count in its session at that moment.
    pub accepted: u64,
    pub time: String,
}

/// DNS counters of a run (table `dns_counts`, summed over sessions).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DnsStatus {
    /// Sessions that recorded counters.
    pub sessions: u64,
    /// Distinct recipient domains looked up.
    pub domain_lookups: u64,
    /// Rows whose domain was already known or being looked up.
    pub cache_hits: u64,
    /// Domains that do not accept mail (NXDOMAIN, null MX, neither MX nor address).
    pub negative: u64,
    /// Domain lookups that failed temporarily (SERVFAIL, timeout).
    pub temporary: u64,
    /// Rows final `failed` because their domain does not accept mail (outcomes of node `dns`).
    pub rows_failed: u64,
    /// Rows sent although their domain does not accept mail (`prevalidate = "warn"`).
    pub rows_warned: u64,
}

/// What `blast status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub journal: String,
    pub run: RunInfo,
    /// Pid of the `blast send` holding the campaign lock, if one does.
    pub sender_pid: Option<u32>,
    pub rows_final: u64,
    /// Final outcomes per second since the run started (to its end, or now).
    pub rate_per_second: f64,
    pub elapsed_seconds: i64,
    pub by_status: StatusCounts,
    pub possibly_duplicated: u64,
    /// Rows with an attempt mark and no final outcome (in flight now, deferred, or in flight
    /// when a sender died).
    pub unconfirmed: u64,
    pub nodes: Vec<GroupCounts>,
    /// Top 10 recipient domains.
    pub domains: Vec<GroupCounts>,
    /// Top 10 failure reasons (failed and expired).
    pub failure_reasons: Vec<FailureReason>,
    /// Node health history (down/up events), oldest first.
    pub node_events: Vec<NodeEventRow>,
    /// DNS counters (pre-validation, direct delivery); None without any.
    pub dns: Option<DnsStatus>,
}

impl StatusReport {
    /// The human-readable form.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let r = &self.run;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "run        {} of {} ({}{}), sessions {}",
            r.id,
            r.campaign,
            r.state.as_str(),
            match (r.state, self.sender_pid) {
                (RunState::Running, Some(pid)) => format!(", sending: pid {pid}"),
                (RunState::Running, None) =>
                    ", no sender: crashed or killed; resume with `blast send`".to_string(),
                _ => String::new(),
            },
            r.sessions
        );
        let _ = writeln!(
            s,
            "time       started {}, {}",
            r.started_at,
            match &r.ended_at {
                Some(e) if r.state != RunState::Running => format!("ended {e}"),
                _ => "not ended".to_string(),
            }
        );
        let _ = writeln!(
            s,
            "list       {} (sha256 {})",
            r.list_path,
            &r.list_fingerprint[..16.min(r.list_fingerprint.len())]
        );
        let b = &self.by_status;
        let _ = writeln!(
            s,
            "outcomes   {} final: {} accepted, {} failed, {} expired; {:.0}/s over {} s",
            self.rows_final,
            b.accepted,
            b.failed,
            b.expired,
            self.rate_per_second,
            self.elapsed_seconds
        );
        let _ = writeln!(
            s,
            "unsure     {} possibly duplicated, {} attempted without a final outcome yet",
            self.possibly_duplicated, self.unconfirmed
        );
        for n in &self.nodes {
            let c = &n.counts;
            let _ = writeln!(
                s,
                "node       {:<24} {} accepted, {} failed, {} expired",
                n.name, c.accepted, c.failed, c.expired
            );
        }
        for ev in &self.node_events {
            let _ = writeln!(
                s,
                "health     {:<24} {:<4} {}  {}",
                ev.node,
                ev.event,
                ev.time,
                if ev.event == "up" {
                    format!("(after {} accepted)", ev.accepted)
                } else {
                    ev.reason.clone()
                }
            );
        }
        if let Some(d) = &self.dns {
            let _ = writeln!(
                s,
                "dns        {} domain lookups, {} cache hits, {} negative (do not accept mail), {} temporary failures; {} rows failed by DNS, {} sent despite a warning",
                d.domain_lookups,
                d.cache_hits,
                d.negative,
                d.temporary,
                d.rows_failed,
                d.rows_warned
            );
        }
        for d in &self.domains {
            let c = &d.counts;
            let _ = writeln!(
                s,
                "domain     {:<24} {} accepted, {} failed, {} expired",
                d.name, c.accepted, c.failed, c.expired
            );
        }
        for f in &self.failure_reasons {
            let _ = writeln!(
                s,
                "failure    {:>7}  {} {} {}",
                f.count,
                f.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                f.enhanced.as_deref().unwrap_or("-"),
                f.text.as_deref().unwrap_or("(no reply)")
            );
        }
        s.pop();
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The writer thread
// ---------------------------------------------------------------------------------------------

/// Handle to the writer thread; see [`Journal::writer`].
pub struct JournalWriter {
    tx: JournalSender,
    thread: JoinHandle<Result<WriterStats>>,
}

/// What the writer wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterStats {
    pub outcomes: u64,
    pub attempts: u64,
    /// SQLite transactions.
    pub transactions: u64,
    /// Group writes to the log (`<journal>-log`, `-log2`) for attempt marks and barriers, and
    /// when a batch is handed to SQLite.
    pub log_writes: u64,
    /// CPU time of the writer thread (Linux: `/proc/thread-self/schedstat`), final commit and
    /// checkpoint included. The log writes of marks run on the connections' threads.
    pub cpu: Option<Duration>,
}

/// CPU time of the calling thread so far (Linux; None elsewhere).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Why the writer thread is woken.
enum Kick {
    /// A batch got its first record, or is full.
    Batch,
    Close,
}

/// The log and its counters, shared by the senders and the writer thread.
struct LogState {
    log: Log,
    /// Records waiting for a transaction, at most: a sender waits (counted) beyond that.
    max_pending: usize,
    /// The writer closed (or failed): records are refused.
    closed: bool,
    /// A log write of a sender failed: the writer stops with it.
    error: Option<std::io::Error>,
    outcomes: u64,
    attempts: u64,
    log_writes: u64,
    /// The outcomes' `time`, formatted once per millisecond.
    time_ms: u128,
    time: String,
}

impl LogState {
    /// `time` of the outcomes recorded now.
    fn refresh_time(&mut self) {
        let now = SystemTime::now();
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if ms != self.time_ms || self.time.is_empty() {
            self.time_ms = ms;
            self.time = rfc3339(now);
        }
    }
}

struct WriterShared {
    state: std::sync::Mutex<LogState>,
    /// Signalled when the writer took a batch (for senders waiting for room).
    room: std::sync::Condvar,
}

impl WriterShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the pipeline puts outcomes and attempt marks. Cloneable.
///
/// No round trip to the writer thread: a record is encoded into the log's buffer under a lock,
/// and a mark (or barrier) writes the buffer's unwritten records to the log itself, with one
/// write(2), before it returns. (With marks made durable by the writer thread, each mark cost a
/// wake-up of the writer, a context switch and a wake-up of the waiting task: ~5 µs of the
/// writer's ~7 µs per outcome, plus the senders' side.)
#[derive(Clone)]
pub struct JournalSender {
    shared: Arc<WriterShared>,
    kick: SyncSender<Kick>,
    waits: Arc<AtomicU64>,
    unconfirmed: Option<Arc<RowSet>>,
}

impl JournalSender {
    /// Queues a final outcome (encoded at once: nothing is kept of `outcome`). Returns false if
    /// the writer is gone (it failed, or was closed).
    pub fn record(&self, outcome: &Outcome) -> bool {
        self.push(false, |st| {
            st.refresh_time();
            st.log.push_outcome(outcome, &st.time);
            st.outcomes += 1;
        })
    }

    /// Writes an attempt mark for `row` and makes it durable (written to the log, with every
    /// record queued before it; see "Writer" in the module doc). Returns false if the writer is
    /// gone or the write failed: the caller must not send then.
    pub async fn mark_attempt(&self, row: u64) -> bool {
        self.push(true, |st| {
            st.log.push_attempt(row);
            st.attempts += 1;
        })
    }

    /// Makes everything queued so far (this connection's last outcome) durable, writing no
    /// mark: before re-sending a job that already has its mark (a retry), so that a connection
    /// never has more than one row in doubt. False if the writer is gone.
    pub async fn barrier(&self) -> bool {
        self.push(true, |_| {})
    }

    /// Records a node's down/up event.
    pub fn node_event(&self, node: &str, event: &crate::node::HealthEvent) -> bool {
        self.push(false, |st| st.log.push_node_event(node, event))
    }

    /// Was this row attempted, with no final outcome, by an earlier session of the run?
    pub fn was_unconfirmed(&self, row: u64) -> bool {
        self.unconfirmed.as_ref().is_some_and(|s| s.contains(row))
    }

    /// How many times a sender had to wait for the writer (too many records pending).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Adds records with `add` and, if `durable`, writes what is unwritten to the log.
    fn push(&self, durable: bool, add: impl FnOnce(&mut LogState)) -> bool {
        let mut st = self.shared.lock();
        if st.log.records >= st.max_pending && !st.closed {
            self.waits.fetch_add(1, Ordering::Relaxed);
            let wait = || {
                let mut st = self.shared.lock();
                while st.log.records >= st.max_pending && !st.closed {
                    st = self.shared.room.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            drop(st);
            // Inside a multi-threaded runtime, let tokio move other tasks off this thread.
            match tokio::runtime::Handle::try_current() {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(wait)
                }
                _ => wait(),
            }
            st = self.shared.lock();
        }
        if st.closed {
            return false;
        }
        let before = st.log.records;
        add(&mut st);
        let after = st.log.records;
        if durable {
            match st.log.write_group() {
                Ok(true) => st.log_writes += 1,
                Ok(false) => {}
                Err(e) => {
                    st.error = Some(e);
                    st.closed = true;
                    drop(st);
                    let _ = self.kick.try_send(Kick::Close);
                    return false;
                }
            }
        }
        drop(st);
        // Wake the writer when a batch starts (for its deadline) or is full; a full channel
        // means it has a wake-up coming anyway.
        if (before == 0 && after > 0) || (before < BATCH && after >= BATCH) {
            let _ = self.kick.try_send(Kick::Batch);
        }
        true
    }
}

impl JournalWriter {
    pub fn sender(&self) -> JournalSender {
        self.tx.clone()
    }

    /// Rows attempted without a final outcome by earlier sessions: their outcomes get
    /// `possibly_duplicated` (see [`JournalSender::was_unconfirmed`]). Set before taking senders.
    pub fn set_unconfirmed(&mut self, rows: RowSet) {
        self.tx.unconfirmed = Some(Arc::new(rows));
    }

    /// Commits everything queued before this call, checkpoints the WAL and ends the thread.
    /// Does not wait for the senders to be dropped: records sent afterwards are refused
    /// (`record` returns false), so a stop that cannot wait for its connections (second signal)
    /// still leaves a consistent journal.
    pub fn close(self) -> Result<WriterStats> {
        let _ = self.tx.kick.send(Kick::Close);
        drop(self.tx);
        self.thread.join().map_err(|_| JournalError::Panicked)?
    }
}

/// `<journal>-log`: the first of the writer's two log files, which hold the records not yet
/// committed to SQLite (see "Writer" in the module doc); the second is `<journal>-log2`.
/// Folded into SQLite by [`Journal::open`] after a crash.
pub fn log_path(journal: &Path) -> PathBuf {
    log_paths(journal)[0].clone()
}

/// The log files: generation `g` is written to `log_paths(journal)[log_index(g)]`.
fn log_paths(journal: &Path) -> [PathBuf; 2] {
    ["-log", "-log2"].map(|suffix| {
        let mut p = journal.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    })
}

/// Which of the two log files holds generation `g` (the first writer's first generation, 1,
/// is in `-log`).
fn log_index(generation: i64) -> usize {
    (generation - 1).rem_euclid(2) as usize
}

/// The log file's header: magic, run id (i64 LE), generation (i64 LE).
const LOG_MAGIC: &[u8; 8] = b"blastlg1";
const LOG_HEADER: usize = 24;
/// `meta` key: the last log generation whose records are in SQLite.
const LOG_GENERATION_KEY: &str = "log_generation";

// Log records: a tag, then a fixed number of values (a type byte, then i64 LE, or u32 LE
// length + UTF-8 bytes). The values are the table's columns after `run_id`, in order.
const TAG_OUTCOME: u8 = b'o';
const TAG_ATTEMPT: u8 = b'a';
const TAG_NODE_EVENT: u8 = b'n';
const V_NULL: u8 = 0;
const V_INT: u8 = 1;
const V_TEXT: u8 = 2;

fn put_int(b: &mut Vec<u8>, v: i64) {
    b.push(V_INT);
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_text(b: &mut Vec<u8>, s: &str) {
    b.push(V_TEXT);
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_opt_text(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_text(b, s),
        None => b.push(V_NULL),
    }
}

/// `class.subject.detail` as text, without an intermediate String.
fn put_enhanced(b: &mut Vec<u8>, e: Option<crate::smtp::EnhancedStatus>) {
    use std::io::Write;
    let Some(e) = e else {
        b.push(V_NULL);
        return;
    };
    b.push(V_TEXT);
    let len_at = b.len();
    b.extend_from_slice(&[0; 4]);
    let _ = write!(b, "{}.{}.{}", e.class, e.subject, e.detail);
    let n = (b.len() - len_at - 4) as u32;
    b[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
}

/// Appends an outcome record (`time`: when it was recorded).
fn encode_outcome(b: &mut Vec<u8>, o: &Outcome, time: &str) {
    b.push(TAG_OUTCOME);
    put_int(b, o.row as i64);
    put_text(b, o.status.as_str());
    put_text(b, &o.rcpt);
    put_text(b, &o.node);
    put_opt_text(b, o.stage.map(stage_name));
    match o.code() {
        Some(c) => put_int(b, i64::from(c)),
        None => b.push(V_NULL),
    }
    put_enhanced(b, o.enhanced());
    put_opt_text(b, o.text());
    put_opt_text(b, o.queue_id());
    put_text(b, &o.message_id);
    put_int(b, i64::from(o.attempts));
    put_int(b, i64::from(o.possibly_duplicated));
    put_text(b, time);
}

fn encode_node_event(b: &mut Vec<u8>, node: &str, event: &crate::node::HealthEvent) {
    b.push(TAG_NODE_EVENT);
    put_text(b, node);
    put_text(b, if event.up { "up" } else { "down" });
    put_text(b, &event.reason);
    put_int(b, event.accepted as i64);
    put_text(b, &rfc3339(event.time));
}

/// Reads log values back (borrowed from the buffer); None at a truncated or malformed value.
struct Decoder<'a> {
    b: &'a [u8],
}
impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }

    fn value(&mut self) -> Option<rusqlite::types::ValueRef<'a>> {
        use rusqlite::types::ValueRef;
        match self.take(1)?[0] {
            V_NULL => Some(ValueRef::Null),
            V_INT => Some(ValueRef::Integer(i64::from_le_bytes(
                self.take(8)?.try_into().ok()?,
            ))),
            V_TEXT => {
                let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
                let s = self.take(n)?;
                std::str::from_utf8(s).ok()?;
                Some(ValueRef::Text(s))
            }
            _ => None,
        }
    }
}

/// What [`apply_log`] inserted.
#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    outcomes: u64,
    attempts: u64,
    node_events: u64,
}

/// Inserts the records of the log groups in `groups` (each a u32 LE length + records) into
/// the tables, for `run`. A truncated last group (the process was killed in its write(2)) is
/// ignored: nobody was told it was durable. A malformed group ends the log, with a warning.
fn apply_log(tx: &rusqlite::Transaction<'_>, run: i64, groups: &[u8]) -> rusqlite::Result<Applied> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    let mut outcome = tx.prepare_cached(
        "INSERT INTO outcomes (run_id, row, status, address, node, stage, code, enhanced, text, queue_id, message_id, attempts, possibly_duplicated, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let mut attempt = tx.prepare_cached("INSERT INTO attempts (run_id, row) VALUES (?1, ?2)")?;
    let mut node_event = tx.prepare_cached(
        "INSERT INTO node_events (run_id, node, event, reason, accepted, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut applied = Applied::default();
    let mut vals: Vec<ValueRef<'_>> = Vec::with_capacity(14);
    let mut rest = groups;
    while rest.len() >= 4 {
        let n = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let Some(group) = rest.get(4..4 + n) else {
            break; // torn by a kill in the write
        };
        rest = &rest[4 + n..];
        let mut d = Decoder { b: group };
        while let Some(&tag) = d.b.first() {
            d.b = &d.b[1..];
            let arity = match tag {
                TAG_OUTCOME => 13,
                TAG_ATTEMPT => 1,
                TAG_NODE_EVENT => 5,
                _ => 0,
            };
            vals.clear();
            vals.push(ValueRef::Integer(run));
            for _ in 0..arity {
                match d.value() {
                    Some(v) => vals.push(v),
                    None => break,
                }
            }
            let valid = match tag {
                TAG_OUTCOME => matches!(
                    vals.get(2),
                    Some(ValueRef::Text(b"accepted" | b"failed" | b"expired"))
                ),
                TAG_NODE_EVENT => matches!(vals.get(2), Some(ValueRef::Text(b"up" | b"down"))),
                _ => true,
            };
            if arity == 0 || vals.len() != arity + 1 || !valid {
                tracing::warn!("journal log: malformed record, the rest of the log is ignored");
                return Ok(applied);
            }
            let p = rusqlite::params_from_iter(vals.iter().map(|v| ToSqlOutput::Borrowed(*v)));
            match tag {
                TAG_OUTCOME => {
                    outcome.execute(p)?;
                    applied.outcomes += 1;
                }
                TAG_ATTEMPT => {
                    attempt.execute(p)?;
                    applied.attempts += 1;
                }
                _ => {
                    node_event.execute(p)?;
                    applied.node_events += 1;
                }
            }
        }
    }
    Ok(applied)
}

fn log_generation(conn: &Connection) -> rusqlite::Result<i64> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [LOG_GENERATION_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn set_log_generation(tx: &rusqlite::Transaction<'_>, generation: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![LOG_GENERATION_KEY, generation.to_string()])?;
    Ok(())
}

/// Folds the logs left by a writer that did not close (crash, kill -9) into SQLite, in
/// generation order, and removes them. A generation already in SQLite (killed between a commit
/// and the reuse of its file) is skipped. Needs the campaign lock (no writer may be running).
fn fold_log(conn: &mut Connection, path: &Path) -> Result<()> {
    let mut logs = Vec::new();
    for lp in log_paths(path) {
        let io = |source| JournalError::Io {
            path: lp.clone(),
            source,
        };
        let bytes = match std::fs::read(&lp) {
            Ok(b) => b,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io(err)),
        };
        if bytes.len() >= LOG_HEADER {
            if &bytes[..8] != LOG_MAGIC {
                return Err(io(std::io::Error::other(
                    "not a blast journal log (remove it only if no blast wrote it)",
                )));
            }
            let run = i64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
            let generation = i64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
            logs.push((generation, run, bytes));
        }
        // Shorter: created, or killed before its header was written: nothing in it.
    }
    logs.sort_by_key(|l| l.0);
    let e = sql(path);
    let done = log_generation(conn).map_err(&e)?;
    let pending: Vec<_> = logs.iter().filter(|l| l.0 > done).collect();
    if let Some(last) = pending.last() {
        let tx = conn.transaction().map_err(&e)?;
        let mut applied = Applied::default();
        for (_, run, bytes) in &pending {
            let a = apply_log(&tx, *run, &bytes[LOG_HEADER..]).map_err(&e)?;
            applied.outcomes += a.outcomes;
            applied.attempts += a.attempts;
            applied.node_events += a.node_events;
        }
        set_log_generation(&tx, last.0).map_err(&e)?;
        tx.commit().map_err(&e)?;
        tracing::info!(
            generations = pending.len(),
            outcomes = applied.outcomes,
            attempts = applied.attempts,
            node_events = applied.node_events,
            "journal log folded in"
        );
    }
    for lp in log_paths(path) {
        match std::fs::remove_file(&lp) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(JournalError::Io { path: lp, source }),
        }
    }
    Ok(())
}

/// The log of the records not yet committed to SQLite: the current generation's groups in
/// `buf` (what is in its file after the header, plus the group being built from
/// `group_start`). Generation `g` lives in `files[log_index(g)]`.
struct Log {
    files: [std::fs::File; 2],
    run: i64,
    generation: i64,
    buf: Vec<u8>,
    /// Bytes of `buf` already in the file.
    written: usize,
    /// Where the open group's length prefix is.
    group_start: usize,
    records: usize,
    /// When the first record of the generation arrived.
    first_at: Instant,
}

impl Log {
    fn create(journal: &Path, run: i64, generation: i64) -> std::io::Result<Log> {
        let open = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        let [a, b] = log_paths(journal);
        let mut log = Log {
            files: [open(&a)?, open(&b)?],
            run,
            generation,
            buf: Vec::with_capacity(BATCH * 256),
            written: 0,
            group_start: 0,
            records: 0,
            first_at: Instant::now(),
        };
        log.start_generation(generation)?;
        Ok(log)
    }

    fn file(&mut self) -> &mut std::fs::File {
        &mut self.files[log_index(self.generation)]
    }

    /// Empties the file of `generation` and writes its header.
    fn start_generation(&mut self, generation: i64) -> std::io::Result<()> {
        use std::io::Write;
        self.generation = generation;
        let mut h = [0u8; LOG_HEADER];
        h[..8].copy_from_slice(LOG_MAGIC);
        h[8..16].copy_from_slice(&self.run.to_le_bytes());
        h[16..24].copy_from_slice(&generation.to_le_bytes());
        let file = self.file();
        file.set_len(0)?;
        file.write_all(&h)?;
        self.buf.clear();
        self.written = 0;
        self.group_start = 0;
        self.buf.extend_from_slice(&[0; 4]);
        self.records = 0;
        Ok(())
    }

    fn counted(&mut self) {
        if self.records == 0 {
            self.first_at = Instant::now();
        }
        self.records += 1;
    }

    fn push_attempt(&mut self, row: u64) {
        self.buf.push(TAG_ATTEMPT);
        put_int(&mut self.buf, row as i64);
        self.counted();
    }

    fn push_outcome(&mut self, o: &Outcome, time: &str) {
        encode_outcome(&mut self.buf, o, time);
        self.counted();
    }

    fn push_node_event(&mut self, node: &str, event: &crate::node::HealthEvent) {
        encode_node_event(&mut self.buf, node, event);
        self.counted();
    }

    /// Closes the open group (its length) and opens the next one.
    fn close_group(&mut self) {
        let n = self.buf.len() - self.group_start - 4;
        self.buf[self.group_start..self.group_start + 4].copy_from_slice(&(n as u32).to_le_bytes());
        self.group_start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
    }

    /// Writes the records pushed since the last write as one group, with one write(2). False
    /// if there was nothing new to write.
    fn write_group(&mut self) -> std::io::Result<bool> {
        use std::io::Write;
        if self.buf.len() == self.group_start + 4 {
            return Ok(false);
        }
        self.close_group();
        let (start, end) = (self.written, self.group_start);
        self.files[log_index(self.generation)].write_all(&self.buf[start..end])?;
        self.written = end;
        Ok(true)
    }

    /// Hands the generation's records over for a SQLite transaction: writes the unwritten ones
    /// first (so every record of this generation is durable before any of the next one), then
    /// starts the next generation in the other file (whose generation is committed). Returns
    /// the generation and its groups.
    /// Also whether it wrote.
    fn rotate(&mut self) -> std::io::Result<(bool, i64, Vec<u8>)> {
        let wrote = self.write_group()?;
        let (generation, groups) = self.take();
        self.start_generation(generation + 1)?;
        Ok((wrote, generation, groups))
    }

    /// The generation's groups, without writing them (at close: no record can follow).
    fn take(&mut self) -> (i64, Vec<u8>) {
        self.close_group();
        let mut groups = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH * 256));
        groups.truncate(self.group_start);
        self.buf.extend_from_slice(&[0; 4]);
        (self.written, self.group_start, self.records) = (0, 0, 0);
        (self.generation, groups)
    }
}

/// The writer thread: hands the log's batches to SQLite, one transaction each, when a batch is
/// full ([`BATCH`] records) or [`FLUSH_EVERY`] after its first record; at close, the rest.
fn write_loop(
    mut conn: Connection,
    path: &Path,
    run: i64,
    shared: Arc<WriterShared>,
    kicks: Receiver<Kick>,
) -> Result<WriterStats> {
    let mut transactions = 0;
    let result = write_batches(&mut conn, path, run, &shared, &kicks, &mut transactions);
    // Failed or closed: refuse records from now on, and wake senders waiting for room.
    let (outcomes, attempts, log_writes) = {
        let mut st = shared.lock();
        st.closed = true;
        (st.outcomes, st.attempts, st.log_writes)
    };
    shared.room.notify_all();
    result?;
    for lp in log_paths(path) {
        std::fs::remove_file(&lp).map_err(|source| JournalError::Io { path: lp, source })?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sql(path))?;
    Ok(WriterStats {
        outcomes,
        attempts,
        transactions,
        log_writes,
        cpu: thread_cpu(),
    })
}

fn write_batches(
    conn: &mut Connection,
    path: &Path,
    run: i64,
    shared: &WriterShared,
    kicks: &Receiver<Kick>,
    transactions: &mut u64,
) -> Result<()> {
    let e = sql(path);
    // `status IN ('accepted', 'failed', 'expired')` costs SQLite an ephemeral b-tree per row
    // (opened, filled, probed, closed: ~2/3 of an outcome insert's instructions). The writer
    // only writes `Status::as_str()`, and `apply_log` checks it for records read back.
    conn.pragma_update(None, "ignore_check_constraints", true)
        .map_err(&e)?;
    let io = |source| JournalError::Io {
        path: log_path(path),
        source,
    };
    let mut closing = false;
    loop {
        let deadline = {
            let st = shared.lock();
            (st.log.records > 0).then(|| st.log.first_at + FLUSH_EVERY)
        };
        let kick = match deadline {
            None => kicks.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => kicks.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        if matches!(kick, Ok(Kick::Close) | Err(RecvTimeoutError::Disconnected)) {
            closing = true;
        }
        let (taken, failed) = {
            let mut st = shared.lock();
            let failed = st.error.take();
            closing |= failed.is_some();
            if closing {
                st.closed = true;
            }
            let records = st.log.records;
            let due = closing
                || records >= BATCH
                || (records > 0 && st.log.first_at.elapsed() >= FLUSH_EVERY);
            let taken = if !due || records == 0 {
                None
            } else if closing {
                // No record can follow: SQLite gets them without a log write.
                Some(st.log.take())
            } else {
                let (wrote, generation, groups) = st.log.rotate().map_err(io)?;
                st.log_writes += u64::from(wrote);
                Some((generation, groups))
            };
            (taken, failed)
        };
        shared.room.notify_all();
        if let Some((generation, groups)) = taken {
            let tx = conn.transaction().map_err(&e)?;
            apply_log(&tx, run, &groups).map_err(&e)?;
            set_log_generation(&tx, generation).map_err(&e)?;
            tx.commit().map_err(&e)?;
            *transactions += 1;
        }
        if let Some(source) = failed {
            return Err(io(source));
        }
        if closing {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The campaign lock
// ---------------------------------------------------------------------------------------------

/// `<journal>.lock`, held (`File::try_lock`) for the whole send: one sender per campaign.
pub struct CampaignLock {
    _file: std::fs::File,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid if it wrote one.
    Held {
        pid: Option<u32>,
    },
    Io(std::io::Error),
}

pub fn lock_path(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl CampaignLock {
    /// Takes the lock of the campaign whose journal is `journal`, at once or not at all.
    pub fn acquire(journal: &Path) -> std::result::Result<CampaignLock, LockError> {
        use std::io::{Seek, Write};
        let path = lock_path(journal);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(LockError::Io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        // `blast status` takes a shared lock for an instant to see whether a sender runs: try a
        // few times over ~100 ms so that it never turns a starting sender away.
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        pid: read_pid(&path),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
            }
        }
        file.set_len(0).map_err(LockError::Io)?;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(LockError::Io)?;
        writeln!(file, "{}", std::process::id()).map_err(LockError::Io)?;
        Ok(CampaignLock { _file: file, path })
    }

    /// The pid of the process holding the lock of this journal, if one does.
    pub fn holder(journal: &Path) -> Option<u32> {
        let path = lock_path(journal);
        let file = std::fs::File::open(&path).ok()?;
        // A shared lock fails while an exclusive one is held; taken and released at once.
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(_) => read_pid(&path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Status;

    fn dir(name: &str) -> PathBuf {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-tmp")
            .join(format!("journal-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn outcome(row: u64, status: Status) -> Outcome {
        Outcome {
            row,
            rcpt: format!("u{row}@d{}.test", row % 3),
            message_id: format!("m{row}@x"),
            status,
            node: "n1".into(),
            stage: None,
            reply: None,
            attempts: 1,
            possibly_duplicated: false,
            reason: None,
        }
    }

    #[test]
    fn row_set() {
        let mut s = RowSet::new();
        assert!(s.is_empty());
        for r in [1, 63, 64, 65, 10_000_000, 64] {
            s.insert(r);
        }
        assert_eq!(s.len(), 5);
        assert!(
            s.contains(64) && s.contains(10_000_000) && !s.contains(2) && !s.contains(u64::MAX)
        );
        // One bit per row: 10M rows in 1.25 MB.
        assert!(s.memory() <= 10_000_064 / 8 + 64);
    }

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

    #[test]
    fn writer_records_everything_and_resume_sets() {
        let d = dir("writer");
        let p = d.join("j.sqlite");
        let j = Journal::open(&p).unwrap();
        let run = j.create_run("c", "l", "t", Path::new("x.csv")).unwrap();
        let w = j.writer(run, 16).unwrap();
        let tx = w.sender();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for row in 1..=2500 {
            assert!(rt.block_on(tx.mark_attempt(row)));
            if row <= 2400 {
                let status = if row % 100 == 0 {
                    Status::Failed
                } else {
                    Status::Accepted
                };
                assert!(tx.record(&outcome(row, status)));
            }
        }
        let stats = w.close().unwrap();
        assert_eq!((stats.outcomes, stats.attempts), (2400, 2500));
        // After close, the writer refuses records instead of losing them silently.
        assert!(!tx.record(&outcome(9999, Status::Accepted)));
        let finals = j.final_rows(run).unwrap();
        assert_eq!(finals.len(), 2400);
        let unconfirmed = j.unconfirmed_rows(run, &finals).unwrap();
        assert_eq!(unconfirmed.len(), 100);
        assert!(unconfirmed.contains(2401) && !unconfirmed.contains(2400));
        j.end_run(run, RunState::Stopped).unwrap();
        let info = j.latest_run("c", "l").unwrap().unwrap();
        assert_eq!(info.state, RunState::Stopped);
        let ro = Journal::open_read_only(&p).unwrap();
        let st = ro.status(&info, None).unwrap();
        assert_eq!(st.by_status.accepted, 2376);
        assert_eq!(st.by_status.failed, 24);
        assert_eq!(st.unconfirmed, 100);
        assert_eq!(st.domains.len(), 3);
        assert_eq!(st.failure_reasons[0].count, 24);
        let ok: String = ro
            .connection()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn log_of_a_killed_writer_is_folded_once() {
        use std::io::Write;
        let d = dir("log-fold");
        let p = d.join("j.sqlite");
        let j = Journal::open(&p).unwrap();
        let run = j.create_run("c", "l", "t", Path::new("x.csv")).unwrap();
        // A writer killed after two group writes, with no SQLite commit.
        let generation = log_generation(&j.conn).unwrap() + 1;
        let mut log = Log::create(&p, run, generation).unwrap();
        log.push_attempt(1);
        log.push_outcome(&outcome(1, Status::Accepted), "2026-01-01T00:00:00Z");
        log.push_attempt(2);
        log.write_group().unwrap();
        log.push_attempt(3);
        log.write_group().unwrap();
        // Pushed but never written (nobody was told): lost, like an uncommitted transaction.
        log.push_attempt(4);
        drop(log);
        // Killed in the middle of a write(2): a torn last group, ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log_path(&p))
            .unwrap();
        f.write_all(&[10, 0, 0, 0, TAG_ATTEMPT, V_INT]).unwrap();
        drop(f);
        let left = std::fs::read(log_path(&p)).unwrap();
        drop(j);
        let j = Journal::open(&p).unwrap();
        assert!(!log_path(&p).exists());
        let finals = j.final_rows(run).unwrap();
        assert_eq!(finals.len(), 1);
        let unconfirmed = j.unconfirmed_rows(run, &finals).unwrap();
        assert_eq!(unconfirmed.len(), 2);
        assert!(unconfirmed.contains(2) && unconfirmed.contains(3));
        // Killed after the commit, before the next generation started: not applied twice.
        std::fs::write(log_path(&p), &left).unwrap();
        drop(j);
        let j = Journal::open(&p).unwrap();
        assert!(!log_path(&p).exists());
        let n: i64 = j
            .conn
            .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        // The next writer continues with the next generation.
        let w = j.writer(run, 4).unwrap();
        let tx = w.sender();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(tx.mark_attempt(5)));
        assert!(tx.record(&outcome(5, Status::Accepted)));
        w.close().unwrap();
        assert!(!log_path(&p).exists());
        assert_eq!(j.final_rows(run).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rotated_logs_are_folded_in_generation_order() {
        let d = dir("log-rotate");
        let p = d.join("j.sqlite");
        let j = Journal::open(&p).unwrap();
        let run = j.create_run("c", "l", "t", Path::new("x.csv")).unwrap();
        let count = |j: &Journal, table: &str| -> i64 {
            j.conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        // Killed after handing generation 1 to SQLite (rotate), before its commit: both files.
        let mut log = Log::create(&p, run, log_generation(&j.conn).unwrap() + 1).unwrap();
        log.push_attempt(1);
        log.push_outcome(&outcome(1, Status::Accepted), "2026-01-01T00:00:00Z");
        log.push_attempt(2);
        // Not written by a mark: the rotation writes it before generation 2 gets anything.
        log.push_outcome(&outcome(2, Status::Failed), "2026-01-01T00:00:00Z");
        let (wrote, generation, _) = log.rotate().unwrap();
        assert!(wrote && generation == 1 && log.generation == 2);
        log.push_attempt(3);
        log.write_group().unwrap();
        drop(log);
        let [first, second] = log_paths(&p);
        assert!(first.exists() && second.exists());
        drop(j);
        let j = Journal::open(&p).unwrap();
        assert!(!first.exists() && !second.exists());
        assert_eq!((count(&j, "outcomes"), count(&j, "attempts")), (2, 3));
        assert_eq!(log_generation(&j.conn).unwrap(), 2);
        // Killed after generation 2 was committed, while 3 was being written: 2 is skipped.
        let mut log = Log::create(&p, run, 2).unwrap();
        log.push_attempt(3);
        log.write_group().unwrap();
        log.rotate().unwrap();
        log.push_attempt(4);
        log.write_group().unwrap();
        drop(log);
        drop(j);
        let j = Journal::open(&p).unwrap();
        assert_eq!((count(&j, "outcomes"), count(&j, "attempts")), (2, 4));
        assert_eq!(log_generation(&j.conn).unwrap(), 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn dns_counts_in_status() {
        let d = dir("dns-counts");
        let p = d.join("j.sqlite");
        let j = Journal::open(&p).unwrap();
        let run = j.create_run("c", "l", "t", Path::new("x.csv")).unwrap();
        let info = j.latest_run("c", "l").unwrap().unwrap();
        assert_eq!(j.status(&info, None).unwrap().dns, None);
        let w = j.writer(run, 16).unwrap();
        let tx = w.sender();
        for row in 1..=4 {
            let mut o = outcome(row, Status::Failed);
            o.node = "dns".into();
            assert!(tx.record(&o));
        }
        assert!(tx.record(&outcome(5, Status::Accepted)));
        w.close().unwrap();
        let counts = |lookups, hits| crate::dns::DnsReport {
            domain_lookups: lookups,
            cache_hits: hits,
            negative: 1,
            temporary: 2,
            rows_warned: 3,
            ..Default::default()
        };
        j.record_dns(run, &counts(10, 90)).unwrap();
        j.record_dns(run, &counts(5, 20)).unwrap(); // a resumed session
        let st = Journal::open_read_only(&p)
            .unwrap()
            .status(&info, None)
            .unwrap();
        let dns = st.dns.clone().unwrap();
        assert_eq!(
            dns,
            DnsStatus {
                sessions: 2,
                domain_lookups: 15,
                cache_hits: 110,
                negative: 2,
                temporary: 4,
                rows_failed: 4,
                rows_warned: 6,
            }
        );
        assert!(st.text().contains("dns        15 domain lookups, 110 cache hits, 2 negative (do not accept mail), 4 temporary failures; 4 rows failed by DNS, 6 sent despite a warning"), "{}", st.text());
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["dns"]["rows_failed"], 4);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn lock_is_exclusive() {
        let d = dir("lock");
        let p = d.join("j.sqlite");
        let l = CampaignLock::acquire(&p).unwrap();
        match CampaignLock::acquire(&p) {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            _ => panic!("second lock taken"),
        }
        assert_eq!(CampaignLock::holder(&p), Some(std::process::id()));
        drop(l);
        assert_eq!(CampaignLock::holder(&p), None);
        assert!(CampaignLock::acquire(&p).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
