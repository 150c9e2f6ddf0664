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
//! durable (see "Resume" in the journal's module doc) does not wait for a SQLite commit: the
//! **log thread** ([`log_loop`]) writes the buffer's unwritten records (the mark, and everything
//! queued before it) to the log file with one write(2) and publishes the durable position; the
//! connection awaits it without blocking its tokio worker. Marks that arrive while the log
//! thread writes go out together in its next write (group commit); it writes under the buffer's
//! lock, like the rotation, so a sender encoding a record waits for at most one write(2). Same
//! durability as a WAL commit with `synchronous = NORMAL`: it survives kill -9, not a power
//! loss. The log holds
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
//! Why a log: with one SQLite commit per group, a 1.2M-row send into smtp-sink did 2.4M records in
//! ~320k commits (~7 records each, each rewriting the outcomes, index and attempts pages in the
//! WAL) and cost ~14 % of the throughput; with the log, ~2,400 commits. Why a thread of its
//! own for the log writes: a write(2) to a file can block (a slow or full disk), and on a tokio
//! worker it would stall every connection scheduled there.
//! The writer thread's CPU per outcome is printed in the send summary's `journal` line;
//! `scripts/bench-journal` measures the journal's cost (the 1.2M-row send with the journal on
//! and off) and the README keeps the last figures.
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
use tokio::sync::watch;

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
        let log = Log::create(&self.path, run, generation).map_err(|cause| JournalError::Io {
            path: log_path(&self.path),
            cause,
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
                seq: 0,
                durable: 0,
                wanted: 0,
                log_thread_waiting: false,
            }),
            room: std::sync::Condvar::new(),
            durable_cv: std::sync::Condvar::new(),
            durable_tx: watch::channel(Durable::default()).0,
        });
        let (kick, kicks) = sync_channel(4);
        let path = self.path.clone();
        let spawn_error = |cause| JournalError::Io {
            path: self.path.clone(),
            cause,
        };
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_loop(w.conn, &path, run, writer_shared, kicks))
            .map_err(spawn_error)?;
        let (log_shared, log_kick) = (shared.clone(), kick.clone());
        let log_thread = std::thread::Builder::new()
            .name("journal-log".into())
            .spawn(move || log_loop(&log_shared, &log_kick))
            .map_err(spawn_error)?;
        Ok(JournalWriter {
            tx: JournalSender {
                shared,
                kick,
                waits: Arc::new(AtomicU64::new(0)),
                unconfirmed: None,
            },
            thread,
            log_thread,
        })
    }
}

/// Handle to the writer thread; see [`Journal::writer`].
pub struct JournalWriter {
    tx: JournalSender,
    thread: JoinHandle<Result<WriterStats>>,
    /// Makes attempt marks durable (group writes to the log); see [`log_loop`].
    log_thread: JoinHandle<()>,
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
    /// checkpoint included. The log writes of marks run on the log thread.
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
    /// Records added so far (all generations): a record's position.
    seq: u64,
    /// Records durable (written to the log file) so far.
    durable: u64,
    /// The highest position a sender waits to see durable.
    wanted: u64,
    /// The log thread sleeps on `durable_cv` (wake it for a new request).
    log_thread_waiting: bool,
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
    /// Wakes the log thread: a sender wants its records durable, or the writer closed.
    durable_cv: std::sync::Condvar,
    /// What is durable, for the senders awaiting it (async: a connection does not block its
    /// tokio worker while the log thread writes).
    durable_tx: watch::Sender<Durable>,
}

/// The durable position, as the log thread publishes it.
#[derive(Debug, Clone, Copy, Default)]
struct Durable {
    seq: u64,
    /// No record will be made durable any more (closed, or a log write failed).
    closed: bool,
}

impl WriterShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything added so far was just written to the log: tell the waiting senders.
    fn made_durable(&self, st: &mut LogState) {
        st.durable = st.seq;
        self.publish(st);
    }

    fn publish(&self, st: &LogState) {
        self.durable_tx.send_replace(Durable {
            seq: st.durable,
            closed: st.closed,
        });
    }

    /// The writer closed or failed: refuse records, wake the log thread and every waiter.
    fn close(&self, st: &mut LogState) {
        st.closed = true;
        self.publish(st);
        self.durable_cv.notify_all();
    }
}

/// The log thread: whenever a sender waits for durability, writes every unwritten record to
/// the log with one write(2) (a group: all the marks and outcomes queued since the last one),
/// then tells the waiters. Runs until the writer closes.
fn log_loop(shared: &WriterShared, kick: &SyncSender<Kick>) {
    let mut st = shared.lock();
    loop {
        while st.wanted <= st.durable && !st.closed {
            st.log_thread_waiting = true;
            st = shared
                .durable_cv
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.log_thread_waiting = false;
        }
        if st.closed {
            return;
        }
        match st.log.write_group() {
            Ok(wrote) => {
                st.log_writes += u64::from(wrote);
                shared.made_durable(&mut st);
            }
            Err(e) => {
                st.error = Some(e);
                shared.close(&mut st);
                drop(st);
                let _ = kick.try_send(Kick::Close);
                return;
            }
        }
    }
}

/// Where the pipeline puts outcomes and attempt marks. Cloneable.
///
/// A record is encoded into the log's buffer under a lock; a mark (or barrier) then awaits the
/// log thread's write of everything queued up to it.
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
        .is_some()
    }

    /// Writes an attempt mark for `row` and waits until it is durable (written to the log, with
    /// every record queued before it, by the log thread; see "Writer" in the module doc).
    /// Returns false if the writer is gone or the write failed: the caller must not send then.
    pub async fn mark_attempt(&self, row: u64) -> bool {
        let target = self.push(true, |st| {
            st.log.push_attempt(row);
            st.attempts += 1;
        });
        self.durable(target).await
    }

    /// Makes everything queued so far (this connection's last outcome) durable, writing no
    /// mark: before re-sending a job that already has its mark (a retry), so that a connection
    /// never has more than one row in doubt. False if the writer is gone.
    pub async fn barrier(&self) -> bool {
        let target = self.push(true, |_| {});
        self.durable(target).await
    }

    /// Waits (asynchronously) until the records up to `target` are durable.
    async fn durable(&self, target: Option<u64>) -> bool {
        let Some(target) = target else {
            return false;
        };
        let mut rx = self.shared.durable_tx.subscribe();
        match rx.wait_for(|d| d.seq >= target || d.closed).await {
            Ok(d) => d.seq >= target,
            Err(_) => false,
        }
    }

    /// Records a node's down/up event.
    pub fn node_event(&self, node: &str, event: &crate::outcome::HealthEvent) -> bool {
        self.push(false, |st| st.log.push_node_event(node, event))
            .is_some()
    }

    /// Was this row attempted, with no final outcome, by an earlier session of the run?
    pub fn was_unconfirmed(&self, row: u64) -> bool {
        self.unconfirmed.as_ref().is_some_and(|s| s.contains(row))
    }

    /// How many times a sender had to wait for the writer (too many records pending).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Adds records with `add`; returns their end position, or None if the writer is gone. If
    /// `durable`, asks the log thread to write them (see [`log_loop`]).
    fn push(&self, durable: bool, add: impl FnOnce(&mut LogState)) -> Option<u64> {
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
            return None;
        }
        let before = st.log.records;
        add(&mut st);
        let after = st.log.records;
        st.seq += (after - before) as u64;
        let target = st.seq;
        let mut wake_log_thread = false;
        if durable && target > st.durable {
            st.wanted = st.wanted.max(target);
            wake_log_thread = st.log_thread_waiting;
        }
        drop(st);
        // Wake the writer when a batch starts (for its deadline) or is full; a full channel
        // means it has a wake-up coming anyway.
        if wake_log_thread {
            self.shared.durable_cv.notify_one();
        }
        if (before == 0 && after > 0) || (before < BATCH && after >= BATCH) {
            let _ = self.kick.try_send(Kick::Batch);
        }
        Some(target)
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
        let stats = self.thread.join().map_err(|_| JournalError::Panicked)?;
        self.log_thread.join().map_err(|_| JournalError::Panicked)?;
        stats
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
        shared.close(&mut st);
        (st.outcomes, st.attempts, st.log_writes)
    };
    shared.room.notify_all();
    result?;
    for lp in log_paths(path) {
        std::fs::remove_file(&lp).map_err(|cause| JournalError::Io { path: lp, cause })?;
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
    let io = |cause| JournalError::Io {
        path: log_path(path),
        cause,
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
                shared.close(&mut st);
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
                shared.made_durable(&mut st);
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
