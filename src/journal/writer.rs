//! The writer thread ([`JournalWriter`]) and the handle the pipeline records through
//! ([`JournalSender`]).
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
//! durable (see "Resume" in the journal's module doc) does not wait for a SQLite commit, nor for
//! the writer thread: it writes the buffer's unwritten records (its mark, and everything queued
//! before it) to the log file itself, with one write(2), before it returns. Same durability as a
//! WAL commit with `synchronous = NORMAL`: it survives kill -9, not a power loss. The log holds
//! *generations*, each in a file of its own, alternately `<journal>-log` ([`log_path`]) and
//! `<journal>-log2`: a header (magic, run id, generation number), then groups (u32 length + the
//! records, each a tag and the column values after `run_id`). When a batch is due, the writer
//! thread (under the lock) writes what is unwritten, takes the generation's bytes and starts the
//! next generation in the other file (emptied: its generation is committed), then builds the SQLite
//! transaction from those bytes, outside the lock, storing the generation in `meta`
//! (`log_generation`). A writer that did not close (crash, kill -9) leaves its logs behind:
//! [`Journal::open`] (under the campaign lock) folds the generations that `meta` does not have yet
//! into SQLite, in order, in one transaction, and removes the files; a torn last group (killed
//! inside a write) is ignored, as nobody was told it was durable. So `blast status` of a killed run
//! may miss up to two batches until the next `blast send`.
//!
//! Why: one SQLite commit per group of records (~7 records, each commit rewriting the outcomes,
//! index and attempts pages in the WAL) made ~320k commits for a 1.2M-row send and cost a large
//! share of the throughput; batching through the log makes ~2,400. The connections write their
//! own marks because a mark made durable by the writer thread costs two thread wake-ups and a
//! context switch, more than the SQLite inserts themselves. The writer thread's CPU per outcome
//! is printed in the send summary's `journal` line; `scripts/bench-journal` measures the
//! journal's cost (the 1.2M-row send with the journal on and off) and the README keeps the last
//! figures.
//! Outcomes are encoded from a reference (no copy of the outcome for the journal), their time
//! formatted once per millisecond. The writer's connection sets `ignore_check_constraints`
//! (the `status IN (…)` CHECK built an ephemeral b-tree per outcome insert, ~half the SQLite
//! instructions); the log holds only `Status::as_str()`, and `apply_log` checks it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;

use super::attempt_log::{Log, apply_log, log_generation, log_path, log_paths, set_log_generation};
use super::{Journal, JournalError, Result, RowSet, sql};
use crate::clock::rfc3339;
use crate::outcome::Outcome;

/// Records per transaction, at most.
pub const BATCH: usize = 1000;
/// A batch is committed at the latest this long after its first record.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

impl Journal {
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
}

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
/// write(2), before it returns. (Made durable by the writer thread, each mark would cost a
/// wake-up of the writer, a context switch and a wake-up of the waiting task.)
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
    pub fn node_event(&self, node: &str, event: &crate::outcome::HealthEvent) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RunState;
    use crate::journal::test_support::{dir, outcome};
    use crate::outcome::Status;

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
}
