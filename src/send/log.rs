//! The delivery log: one JSON line per final outcome, written by a thread of its own.
//!
//! Synchronous logging once ate 70 % of a feeder's CPU; here senders only hand an [`Outcome`]
//! to a bounded channel and go on. The writer thread batches lines into a 1 MiB buffer and
//! flushes when the buffer fills or 100 ms after the last flush, so the file can be tailed
//! during a run. When the channel is full (a very slow disk) the sender waits, and every such
//! wait is counted and shown in the summary instead of being hidden. The file is opened for
//! appending, so a resumed run adds to it.
//!
//! The journal is the truth; the log follows it. A session killed with kill -9 loses the lines
//! still in the buffer (up to 100 ms of outcomes) although their outcomes are in the journal,
//! so a resume first [`repair`]s the log: the run's lines missing from it are appended from the
//! journal, once.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::clock::rfc3339;
use crate::journal::{Journal, OutcomeRecord, RowSet};
use crate::outcome::{Outcome, stage_name};

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open delivery log {}: {cause}", path.display())]
    Open { path: PathBuf, cause: io::Error },
    #[error("cannot write delivery log {}: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },
    #[error("the delivery log writer thread panicked")]
    Panicked,
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

/// Handle to the writer thread. Cloneable senders come from [`DeliveryLog::sender`].
pub struct DeliveryLog {
    tx: LogSender,
    thread: JoinHandle<Result<u64, LogError>>,
}

/// Where senders put outcomes.
#[derive(Clone)]
pub struct LogSender {
    tx: SyncSender<Outcome>,
    waits: Arc<AtomicU64>,
}

impl LogSender {
    /// Queues an outcome. Never blocks while the channel has room; when it is full, waits
    /// (counted in [`LogSender::waits`]) without stalling the async runtime's other tasks.
    pub fn record(&self, outcome: Outcome) {
        match self.tx.try_send(outcome) {
            Ok(()) => {}
            Err(TrySendError::Full(outcome)) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                // (Nothing to do if the writer is gone: its error is reported at close.)
                let send = || {
                    let _ = self.tx.send(outcome);
                };
                // Inside a multi-threaded runtime, let tokio move other tasks off this thread.
                match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(send)
                    }
                    _ => send(),
                };
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// How many times a sender had to wait for the writer.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

impl DeliveryLog {
    /// Opens (appending) `path` and starts the writer thread. `capacity` bounds the outcomes
    /// waiting to be written.
    pub fn open(path: &Path, capacity: usize) -> Result<DeliveryLog, LogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| LogError::Open {
                path: path.to_path_buf(),
                cause,
            })?;
        }
        // Recipients' addresses: private (0600).
        let file = crate::private::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|cause| LogError::Open {
                path: path.to_path_buf(),
                cause,
            })?;
        let (tx, rx) = sync_channel(capacity.max(1));
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("delivery-log".into())
            .spawn(move || write_loop(rx, file, &path))
            .map_err(|cause| LogError::Open {
                path: PathBuf::new(),
                cause,
            })?;
        Ok(DeliveryLog {
            tx: LogSender {
                tx,
                waits: Arc::new(AtomicU64::new(0)),
            },
            thread,
        })
    }

    pub fn sender(&self) -> LogSender {
        self.tx.clone()
    }

    /// Closes the channel, waits for everything queued to be written and flushed, and returns
    /// the number of lines written. Every [`LogSender`] clone must be dropped first.
    pub fn close(self) -> Result<u64, LogError> {
        drop(self.tx);
        self.thread.join().map_err(|_| LogError::Panicked)?
    }
}

fn write_loop(rx: Receiver<Outcome>, file: File, path: &Path) -> Result<u64, LogError> {
    let mut out = BufWriter::with_capacity(BUFFER, file);
    let mut written = 0u64;
    let mut last_flush = Instant::now();
    let mut dirty = false;
    let err = |cause| LogError::Write {
        path: path.to_path_buf(),
        cause,
    };
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(o) => {
                write_line(&mut out, &o).map_err(err)?;
                written += 1;
                dirty = true;
                // Drain what is already queued before considering a flush.
                while let Ok(o) = rx.try_recv() {
                    write_line(&mut out, &o).map_err(err)?;
                    written += 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if dirty && last_flush.elapsed() >= FLUSH_EVERY {
            out.flush().map_err(err)?;
            last_flush = Instant::now();
            dirty = false;
        }
    }
    out.flush().map_err(err)?;
    out.get_ref().sync_data().map_err(err)?;
    Ok(written)
}

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    row: u64,
    address: &'a str,
    outcome: &'a str,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enhanced: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_id: Option<&'a str>,
    message_id: &'a str,
    attempts: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    possibly_duplicated: bool,
}

fn write_line(out: &mut impl Write, o: &Outcome) -> io::Result<()> {
    let time = rfc3339(SystemTime::now());
    let line = Line {
        time: &time,
        row: o.row,
        address: &o.rcpt,
        outcome: o.status.as_str(),
        node: &o.node,
        stage: o.stage.map(stage_name),
        code: o.code(),
        enhanced: o.enhanced().map(|e| e.to_string()),
        text: o.text(),
        queue_id: o.queue_id(),
        message_id: &o.message_id,
        attempts: o.attempts,
        possibly_duplicated: o.possibly_duplicated,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Completes the delivery log of a resumed run from the journal: every final outcome of `run`
/// without a line (a killed session's buffer) gets one, with the journal's time. `from` is
/// where the run's lines start (`Journal::log_offset`; None or past the end: the whole file).
/// A torn last line (killed inside a write) is cut off first; its outcome, if the journal has
/// it, is written again. Returns how many lines were appended.
pub fn repair(
    path: &Path,
    from: Option<u64>,
    journal: &Journal,
    run: i64,
) -> Result<u64, LogError> {
    use std::io::{BufRead, BufReader, Seek, SeekFrom};
    let open_err = |cause| LogError::Open {
        path: path.to_path_buf(),
        cause,
    };
    let write_err = |cause| LogError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let mut present = RowSet::new();
    if path.exists() {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        let start = from.filter(|&o| o <= len).unwrap_or(0);
        file.seek(SeekFrom::Start(start)).map_err(open_err)?;
        let mut reader = BufReader::with_capacity(BUFFER, &file);
        let (mut pos, mut line) = (start, Vec::new());
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(open_err)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // Torn by a kill: cut it off, so the next line starts on a line of its own.
                drop(reader);
                file.set_len(pos).map_err(write_err)?;
                break;
            }
            pos += n as u64;
            #[derive(serde::Deserialize)]
            struct Row {
                row: u64,
            }
            if let Ok(r) = serde_json::from_slice::<Row>(&line) {
                present.insert(r.row);
            }
        }
    }
    let file = crate::private::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(open_err)?;
    let mut out = BufWriter::with_capacity(BUFFER, file);
    let appended = journal.outcomes_except(run, &present, |rec| write_record(&mut out, rec))?;
    out.flush().map_err(write_err)?;
    Ok(appended)
}

/// A line from the journal's record of an outcome (see [`repair`]).
fn write_record(out: &mut impl Write, r: &OutcomeRecord) -> io::Result<()> {
    let line = Line {
        time: &r.time,
        row: r.row,
        address: &r.address,
        outcome: &r.status,
        node: &r.node,
        stage: r.stage.as_deref(),
        code: r.code,
        enhanced: r.enhanced.clone(),
        text: r.text.as_deref(),
        queue_id: r.queue_id.as_deref(),
        message_id: &r.message_id,
        attempts: r.attempts,
        possibly_duplicated: r.possibly_duplicated,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Status;

    #[test]
    fn writes_every_line_and_flushes_on_close() {
        let dir = std::env::temp_dir().join(format!("blast-log-{}", std::process::id()));
        let path = dir.join("d.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = DeliveryLog::open(&path, 4).unwrap();
        let tx = log.sender();
        for row in 1..=100 {
            tx.record(Outcome {
                row,
                rcpt: format!("u{row}@x.test"),
                message_id: format!("m{row}@x"),
                status: Status::Failed,
                node: "n1".into(),
                stage: None,
                reply: None,
                attempts: 1,
                possibly_duplicated: false,
                reason: None,
            });
        }
        drop(tx);
        assert_eq!(log.close().unwrap(), 100);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[99]["row"], 100);
        assert_eq!(lines[0]["outcome"], "failed");
        assert_eq!(lines[0]["address"], "u1@x.test");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
