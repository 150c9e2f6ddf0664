//! The writer's log: the records not yet committed to SQLite, appended in groups (one write(2)
//! each) to generations that alternate between two files, `<journal>-log` ([`log_path`]) and
//! `<journal>-log2`; their binary encoding; and [`fold_log`], which replays the log of a writer
//! that did not close into SQLite. How and why the log is written: "Writer" in `writer.rs`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};

use super::{BATCH, JournalError, Result, sql};
use crate::clock::rfc3339;
use crate::outcome::{Outcome, stage_name};

/// `<journal>-log`: the first of the writer's two log files, which hold the records not yet
/// committed to SQLite (see "Writer" in `writer.rs`); the second is `<journal>-log2`.
/// Folded into SQLite by [`Journal::open`](super::Journal::open) after a crash.
pub fn log_path(journal: &Path) -> PathBuf {
    log_paths(journal)[0].clone()
}

/// The log files: generation `g` is written to `log_paths(journal)[log_index(g)]`.
pub(super) fn log_paths(journal: &Path) -> [PathBuf; 2] {
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

fn encode_node_event(b: &mut Vec<u8>, node: &str, event: &crate::outcome::HealthEvent) {
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
pub(super) struct Applied {
    outcomes: u64,
    attempts: u64,
    node_events: u64,
}

/// Inserts the records of the log groups in `groups` (each a u32 LE length + records) into
/// the tables, for `run`. A truncated last group (the process was killed in its write(2)) is
/// ignored: nobody was told it was durable. A malformed group ends the log, with a warning.
pub(super) fn apply_log(
    tx: &rusqlite::Transaction<'_>,
    run: i64,
    groups: &[u8],
) -> rusqlite::Result<Applied> {
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

pub(super) fn log_generation(conn: &Connection) -> rusqlite::Result<i64> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [LOG_GENERATION_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

pub(super) fn set_log_generation(
    tx: &rusqlite::Transaction<'_>,
    generation: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![LOG_GENERATION_KEY, generation.to_string()])?;
    Ok(())
}

/// Folds the logs left by a writer that did not close (crash, kill -9) into SQLite, in
/// generation order, and removes them. A generation already in SQLite (killed between a commit
/// and the reuse of its file) is skipped. Needs the campaign lock (no writer may be running).
pub(super) fn fold_log(conn: &mut Connection, path: &Path) -> Result<()> {
    let mut logs = Vec::new();
    for lp in log_paths(path) {
        let io = |cause| JournalError::Io {
            path: lp.clone(),
            cause,
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
            Err(cause) => return Err(JournalError::Io { path: lp, cause }),
        }
    }
    Ok(())
}

/// The log of the records not yet committed to SQLite: the current generation's groups in
/// `buf` (what is in its file after the header, plus the group being built from
/// `group_start`). Generation `g` lives in `files[log_index(g)]`.
pub(super) struct Log {
    files: [std::fs::File; 2],
    run: i64,
    generation: i64,
    buf: Vec<u8>,
    /// Bytes of `buf` already in the file.
    written: usize,
    /// Where the open group's length prefix is.
    group_start: usize,
    pub(super) records: usize,
    /// When the first record of the generation arrived.
    pub(super) first_at: Instant,
}

impl Log {
    pub(super) fn create(journal: &Path, run: i64, generation: i64) -> std::io::Result<Log> {
        // Attempt marks name recipients: private (0600).
        let open = |p: &PathBuf| crate::private::options().create(true).append(true).open(p);
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

    pub(super) fn push_attempt(&mut self, row: u64) {
        self.buf.push(TAG_ATTEMPT);
        put_int(&mut self.buf, row as i64);
        self.counted();
    }

    pub(super) fn push_outcome(&mut self, o: &Outcome, time: &str) {
        encode_outcome(&mut self.buf, o, time);
        self.counted();
    }

    pub(super) fn push_node_event(&mut self, node: &str, event: &crate::outcome::HealthEvent) {
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
    pub(super) fn write_group(&mut self) -> std::io::Result<bool> {
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
    pub(super) fn rotate(&mut self) -> std::io::Result<(bool, i64, Vec<u8>)> {
        let wrote = self.write_group()?;
        let (generation, groups) = self.take();
        self.start_generation(generation + 1)?;
        Ok((wrote, generation, groups))
    }

    /// The generation's groups, without writing them (at close: no record can follow).
    pub(super) fn take(&mut self) -> (i64, Vec<u8>) {
        self.close_group();
        let mut groups = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH * 256));
        groups.truncate(self.group_start);
        self.buf.extend_from_slice(&[0; 4]);
        (self.written, self.group_start, self.records) = (0, 0, 0);
        (self.generation, groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use crate::journal::test_support::{dir, outcome};
    use crate::outcome::Status;

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
}
