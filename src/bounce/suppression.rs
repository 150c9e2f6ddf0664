//! The suppression list: addresses blast never mails again, in SQLite (a file of its own,
//! `[suppression] path`, default `<campaign>.suppression.sqlite`; `blast sink --db`).
//!
//! Entries come from hard bounces and complaints (the bounce sink), synchronous 5xx
//! user-unknown replies during `blast send`, soft bounces that repeat `soft_bounce_limit` times,
//! and manual entries (`blast suppress add|import`). Addresses are stored lowercased; lookups
//! are case-insensitive. `blast send` checks every row before rendering it, one indexed query
//! per row, so memory does not grow with the list.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("suppression list {path}: {cause}")]
    Sql {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("suppression list {path}: cannot create it: {cause}")]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Csv(String),
}

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A hard bounce received by the sink.
    Bounce,
    /// A feedback-loop complaint.
    Complaint,
    /// A 5xx user-unknown reply at RCPT during `blast send`.
    Smtp,
    /// Soft bounces that repeated `soft_bounce_limit` times.
    SoftBounces,
    /// Added by hand (`blast suppress add|import`).
    Manual,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Bounce => "bounce",
            Source::Complaint => "complaint",
            Source::Smtp => "smtp",
            Source::SoftBounces => "soft_bounces",
            Source::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "bounce" => Source::Bounce,
            "complaint" => Source::Complaint,
            "smtp" => Source::Smtp,
            "soft_bounces" => Source::SoftBounces,
            "manual" => Source::Manual,
            _ => return None,
        })
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub address: String,
    pub source: Source,
    /// A [`crate::bounce::dsn::Reason`] name, or free text for manual entries.
    pub reason: String,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
    pub campaign: Option<String>,
    pub row: Option<u64>,
    /// Unix seconds.
    pub created_at: i64,
}

impl Entry {
    pub fn new(address: &str, source: Source, reason: &str) -> Entry {
        Entry {
            address: normalize(address),
            source,
            reason: reason.to_string(),
            status: None,
            diagnostic: None,
            campaign: None,
            row: None,
            created_at: crate::clock::unix_now(),
        }
    }
}

pub fn normalize(address: &str) -> String {
    address.trim().trim_matches(['<', '>']).to_ascii_lowercase()
}

/// The default path beside a campaign file.
pub fn default_path(campaign_file: &Path) -> PathBuf {
    let stem = campaign_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "campaign".into());
    campaign_file.with_file_name(format!("{stem}.suppression.sqlite"))
}

/// An open suppression list.
pub struct Suppressions {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Suppressions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Suppressions({})", self.path.display())
    }
}

/// WAL mode (only if not yet: that needs an exclusive lock) and the schema.
fn set_up(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS suppression (
    address    TEXT PRIMARY KEY NOT NULL,
    source     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    status     TEXT,
    diagnostic TEXT,
    campaign   TEXT,
    row        INTEGER,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS soft_bounce (
    address    TEXT PRIMARY KEY NOT NULL,
    count      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    last_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bounce_event (
    at         INTEGER NOT NULL,
    campaign   TEXT NOT NULL,
    row        INTEGER,
    address    TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    status     TEXT,
    hard       INTEGER NOT NULL,
    suppressed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bounce_event_campaign ON bounce_event (campaign, outcome, reason);
";

/// One report the sink acted on (a row of `bounce_event`), for `blast status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BounceEvent {
    pub campaign: String,
    pub row: Option<u64>,
    pub address: String,
    /// `bounced` (hard), `soft_bounced`, `delayed` (a delay warning), `complained`.
    pub outcome: String,
    pub reason: String,
    pub status: Option<String>,
    pub hard: bool,
    pub suppressed: bool,
}

/// Bounces of one campaign, per reason: what `blast status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BounceReport {
    /// Addresses on the list because of this campaign (entries naming it).
    pub suppressed: u64,
    /// reason → outcome (`hard`, `soft`, `delayed`, `complaint`) → count of reports.
    pub by_reason: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

impl BounceReport {
    /// Text lines for `blast status`; empty if there is nothing to say.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        if self.by_reason.is_empty() && self.suppressed == 0 {
            return String::new();
        }
        let mut s = format!("bounces    {} addresses suppressed\n", self.suppressed);
        for (reason, counts) in &self.by_reason {
            let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(s, "  {reason:<16} {}", parts.join(", "));
        }
        s
    }
}

impl Suppressions {
    /// Opens (creating if needed) the list at `path`.
    pub fn open(path: &Path) -> Result<Suppressions, SuppressionError> {
        let err = |cause| SuppressionError::Sql {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        // Addresses: created private (0600); SQLite's -wal and -shm files follow its mode.
        crate::private::create_db_file(path).map_err(|cause| SuppressionError::Create {
            path: path.to_path_buf(),
            cause,
        })?;
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // Several processes may open the list at the same moment (the shards of a campaign on
        // one box, `blast sink` beside a send). Making a new file WAL takes a lock SQLite does
        // not wait for with the busy timeout, so the set-up is retried for as long instead.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match set_up(&conn) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(Suppressions {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, cause: rusqlite::Error) -> SuppressionError {
        SuppressionError::Sql {
            path: self.path.clone(),
            cause,
        }
    }

    /// Adds or replaces an entry. Returns true if the address was not suppressed before.
    pub fn add(&self, e: &Entry) -> Result<bool, SuppressionError> {
        let existed = self.contains(&e.address)?;
        self.conn
            .prepare_cached(
                "INSERT INTO suppression (address, source, reason, status, diagnostic, campaign, row, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(address) DO UPDATE SET source = excluded.source, reason = excluded.reason,
                   status = excluded.status, diagnostic = excluded.diagnostic,
                   campaign = excluded.campaign, row = excluded.row",
            )
            .and_then(|mut s| {
                s.execute(params![
                    normalize(&e.address),
                    e.source.as_str(),
                    e.reason,
                    e.status,
                    e.diagnostic,
                    e.campaign,
                    e.row.map(|r| r as i64),
                    e.created_at
                ])
            })
            .map_err(|x| self.err(x))?;
        Ok(!existed)
    }

    /// Removes an address (from the list and its soft-bounce count). True if it was there.
    pub fn remove(&self, address: &str) -> Result<bool, SuppressionError> {
        let a = normalize(address);
        let n = self
            .conn
            .execute("DELETE FROM suppression WHERE address = ?1", [&a])
            .map_err(|x| self.err(x))?;
        self.conn
            .execute("DELETE FROM soft_bounce WHERE address = ?1", [&a])
            .map_err(|x| self.err(x))?;
        Ok(n > 0)
    }

    pub fn contains(&self, address: &str) -> Result<bool, SuppressionError> {
        self.conn
            .prepare_cached("SELECT 1 FROM suppression WHERE address = ?1")
            .and_then(|mut s| s.query_row([normalize(address)], |_| Ok(())).optional())
            .map(|r| r.is_some())
            .map_err(|x| self.err(x))
    }

    pub fn get(&self, address: &str) -> Result<Option<Entry>, SuppressionError> {
        self.conn
            .prepare_cached(
                "SELECT address, source, reason, status, diagnostic, campaign, row, created_at
                 FROM suppression WHERE address = ?1",
            )
            .and_then(|mut s| s.query_row([normalize(address)], row_to_entry).optional())
            .map_err(|x| self.err(x))
    }

    /// Counts a soft bounce; when the address reaches `limit` soft bounces it is suppressed
    /// (source `soft_bounces`). A `limit` of 0 never suppresses. Returns true if it was
    /// suppressed now.
    pub fn record_soft(
        &self,
        address: &str,
        reason: &str,
        limit: u32,
    ) -> Result<bool, SuppressionError> {
        let a = normalize(address);
        let now = crate::clock::unix_now();
        // One transaction: a reader never sees the count at the limit without the entry.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(|x| self.err(x))?;
        let count: i64 = tx
            .query_row(
                "INSERT INTO soft_bounce (address, count, reason, last_at) VALUES (?1, 1, ?2, ?3)
                 ON CONFLICT(address) DO UPDATE SET count = count + 1, reason = excluded.reason,
                   last_at = excluded.last_at
                 RETURNING count",
                params![a, reason, now],
                |r| r.get(0),
            )
            .map_err(|x| self.err(x))?;
        let suppress = limit > 0 && count >= limit as i64 && !self.contains(&a)?;
        if suppress {
            let mut e = Entry::new(&a, Source::SoftBounces, reason);
            e.diagnostic = Some(format!("{count} soft bounces"));
            self.add(&e)?;
        }
        tx.commit().map_err(|x| self.err(x))?;
        Ok(suppress)
    }

    /// Records a report the sink acted on (see [`BounceEvent`]).
    pub fn record_event(&self, e: &BounceEvent) -> Result<(), SuppressionError> {
        self.conn
            .prepare_cached(
                "INSERT INTO bounce_event (at, campaign, row, address, outcome, reason, status, hard, suppressed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    crate::clock::unix_now(),
                    e.campaign,
                    e.row.map(|r| r as i64),
                    normalize(&e.address),
                    e.outcome,
                    e.reason,
                    e.status,
                    e.hard,
                    e.suppressed
                ])
            })
            .map(|_| ())
            .map_err(|x| self.err(x))
    }

    /// The bounces of `campaign`, per reason and outcome.
    pub fn bounce_report(&self, campaign: &str) -> Result<BounceReport, SuppressionError> {
        let mut report = BounceReport {
            suppressed: self
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM suppression WHERE campaign = ?1",
                    [campaign],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|x| self.err(x))? as u64,
            ..BounceReport::default()
        };
        let mut s = self
            .conn
            .prepare(
                "SELECT reason, outcome, COUNT(*) FROM bounce_event WHERE campaign = ?1
                 GROUP BY reason, outcome ORDER BY reason, outcome",
            )
            .map_err(|x| self.err(x))?;
        let rows = s
            .query_map([campaign], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|x| self.err(x))?;
        for r in rows {
            let (reason, outcome, n) = r.map_err(|x| self.err(x))?;
            let key = match outcome.as_str() {
                "bounced" => "hard",
                "soft_bounced" => "soft",
                "complained" => "complaint",
                other => other,
            };
            *report
                .by_reason
                .entry(reason)
                .or_default()
                .entry(key.to_string())
                .or_default() += n as u64;
        }
        Ok(report)
    }

    pub fn soft_count(&self, address: &str) -> Result<u32, SuppressionError> {
        self.conn
            .query_row(
                "SELECT count FROM soft_bounce WHERE address = ?1",
                [normalize(address)],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|c| c.unwrap_or(0) as u32)
            .map_err(|x| self.err(x))
    }

    pub fn len(&self) -> Result<u64, SuppressionError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM suppression", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|x| self.err(x))
    }

    pub fn is_empty(&self) -> Result<bool, SuppressionError> {
        self.len().map(|n| n == 0)
    }

    /// Calls `f` for every entry, in address order.
    pub fn for_each(
        &self,
        mut f: impl FnMut(Entry) -> Result<(), SuppressionError>,
    ) -> Result<(), SuppressionError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT address, source, reason, status, diagnostic, campaign, row, created_at
                 FROM suppression ORDER BY address",
            )
            .map_err(|x| self.err(x))?;
        let rows = s.query_map([], row_to_entry).map_err(|x| self.err(x))?;
        for r in rows {
            f(r.map_err(|x| self.err(x))?)?;
        }
        Ok(())
    }

    /// Writes the list as CSV with a header:
    /// `address,source,reason,status,diagnostic,campaign,row,created_at`.
    ///
    /// `for_terminal`: the CSV goes to a terminal, so every field is made [`printable`]
    /// (diagnostics are DSN text, from anyone): control characters, line breaks included,
    /// become visible escapes. Off for files and pipes, which get the data as it is.
    ///
    /// [`printable`]: crate::terminal::printable
    pub fn export(
        &self,
        out: impl std::io::Write,
        for_terminal: bool,
    ) -> Result<u64, SuppressionError> {
        let mut w = csv::Writer::from_writer(out);
        let csv_err = |e: csv::Error| SuppressionError::Csv(e.to_string());
        w.write_record(CSV_HEADER).map_err(csv_err)?;
        let mut n = 0;
        self.for_each(|e| {
            n += 1;
            let row = e.row.map(|r| r.to_string()).unwrap_or_default();
            let created_at = e.created_at.to_string();
            let fields = [
                e.address.as_str(),
                e.source.as_str(),
                &e.reason,
                e.status.as_deref().unwrap_or(""),
                e.diagnostic.as_deref().unwrap_or(""),
                e.campaign.as_deref().unwrap_or(""),
                &row,
                &created_at,
            ];
            if for_terminal {
                w.write_record(fields.map(|f| crate::terminal::printable(f).into_owned()))
            } else {
                w.write_record(fields)
            }
            .map_err(csv_err)
        })?;
        w.flush()
            .map_err(|e| SuppressionError::Csv(e.to_string()))?;
        Ok(n)
    }

    /// Reads CSV: either the export format (with its header) or one address per line (no
    /// header, or a header whose first column is `address`/`email`). Rows without an `@` are
    /// reported as errors. Returns (added, already present). One transaction.
    pub fn import(
        &mut self,
        input: impl std::io::Read,
        default_reason: &str,
    ) -> Result<(u64, u64), SuppressionError> {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(input);
        let tx = self
            .conn
            .transaction()
            .map_err(|cause| SuppressionError::Sql {
                path: self.path.clone(),
                cause,
            })?;
        let (mut added, mut present) = (0, 0);
        let mut columns: Option<Vec<String>> = None;
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| SuppressionError::Csv(e.to_string()))?;
            let first = rec.get(0).unwrap_or("").trim();
            if i == 0 && !first.contains('@') {
                columns = Some(rec.iter().map(|c| c.trim().to_ascii_lowercase()).collect());
                continue;
            }
            if first.is_empty() {
                continue;
            }
            if !first.contains('@') {
                return Err(SuppressionError::Csv(format!(
                    "line {}: {first:?} is not an address",
                    i + 1
                )));
            }
            let col = |name: &str| -> Option<&str> {
                let idx = columns.as_ref()?.iter().position(|c| c == name)?;
                rec.get(idx).map(str::trim).filter(|v| !v.is_empty())
            };
            let mut e = Entry::new(first, Source::Manual, default_reason);
            if let Some(s) = col("source").and_then(Source::parse) {
                e.source = s;
            }
            if let Some(v) = col("reason") {
                e.reason = v.to_string();
            }
            e.status = col("status").map(str::to_string);
            e.diagnostic = col("diagnostic").map(str::to_string);
            e.campaign = col("campaign").map(str::to_string);
            e.row = col("row").and_then(|v| v.parse().ok());
            if let Some(t) = col("created_at").and_then(|v| v.parse().ok()) {
                e.created_at = t;
            }
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM suppression WHERE address = ?1",
                    [&e.address],
                    |_| Ok(()),
                )
                .optional()
                .map_err(|cause| SuppressionError::Sql {
                    path: self.path.clone(),
                    cause,
                })?
                .is_some();
            if exists {
                present += 1;
                continue;
            }
            tx.execute(
                "INSERT INTO suppression (address, source, reason, status, diagnostic, campaign, row, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    e.address,
                    e.source.as_str(),
                    e.reason,
                    e.status,
                    e.diagnostic,
                    e.campaign,
                    e.row.map(|r| r as i64),
                    e.created_at
                ],
            )
            .map_err(|cause| SuppressionError::Sql {
                path: self.path.clone(),
                cause,
            })?;
            added += 1;
        }
        tx.commit().map_err(|cause| SuppressionError::Sql {
            path: self.path.clone(),
            cause,
        })?;
        Ok((added, present))
    }
}

const CSV_HEADER: [&str; 8] = [
    "address",
    "source",
    "reason",
    "status",
    "diagnostic",
    "campaign",
    "row",
    "created_at",
];

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let source: String = r.get(1)?;
    Ok(Entry {
        address: r.get(0)?,
        source: Source::parse(&source).unwrap_or(Source::Manual),
        reason: r.get(2)?,
        status: r.get(3)?,
        diagnostic: r.get(4)?,
        campaign: r.get(5)?,
        row: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
        created_at: r.get(7)?,
    })
}

/// Whether a synchronous SMTP failure says the mailbox does not exist: 5.1.1 (bad mailbox),
/// 5.1.10 (null MX / recipient not found), 5.1.6 (moved), 5.1.2 (bad domain) — or, without an
/// enhanced code, a 550/551/553 whose text says so.
pub fn is_dead_address_reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> bool {
    if code / 100 != 5 {
        return false;
    }
    match enhanced {
        Some((5, 1, 1 | 2 | 6 | 10)) => true,
        Some(_) => false,
        None => {
            matches!(code, 550 | 551 | 553)
                && crate::bounce::dsn::reason_from_text(text).is_some_and(|r| {
                    matches!(
                        r,
                        crate::bounce::dsn::Reason::UserUnknown
                            | crate::bounce::dsn::Reason::HostUnknown
                    )
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shards of one campaign on one box, or `blast sink` beside a send, open the same new list
    /// at the same moment: every open must succeed.
    #[test]
    fn concurrent_opens_of_a_new_list() {
        let dir = std::env::temp_dir().join(format!("blast-supp-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for round in 0..30 {
            let path = dir.join(format!("list-{round}.sqlite"));
            let barrier = std::sync::Barrier::new(6);
            std::thread::scope(|s| {
                for _ in 0..6 {
                    s.spawn(|| {
                        barrier.wait();
                        Suppressions::open(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
                    });
                }
            });
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 13, item 8: a DSN's diagnostic is anyone's text; `suppress list` to a terminal
    /// shows it escaped, to a file or pipe exactly.
    #[test]
    fn export_for_a_terminal_escapes_controls() {
        let dir = std::env::temp_dir().join(format!("blast-supp-tty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let list = Suppressions::open(&dir.join("s.sqlite")).unwrap();
        let mut e = Entry::new("a@x.test", Source::Bounce, "user_unknown");
        e.diagnostic = Some("550 \x1b]0;t\x07 gone\x1b[2J".into());
        list.add(&e).unwrap();
        let export = |terminal| {
            let mut out = Vec::new();
            list.export(&mut out, terminal).unwrap();
            String::from_utf8(out).unwrap()
        };
        let raw = export(false);
        assert!(raw.contains("550 \x1b]0;t\x07 gone"), "{raw:?}");
        let shown = export(true);
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "{shown:?}"
        );
        assert!(shown.contains(r"550 \x1b]0;t\x07 gone\x1b[2J"), "{shown:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
