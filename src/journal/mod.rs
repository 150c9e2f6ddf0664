//! The journal: one SQLite file per campaign that records every run and every recipient's final
//! outcome, so that a killed, rebooted or interrupted `blast send` can be resumed without losing
//! a recipient and without sending twice by our own fault.
//!
//! # What it owns, what it may use
//! The journal owns the durable record of runs, attempts and outcomes (with the nodes' health
//! events and the DNS counters of a run), and the schema of that record: this module is the one
//! place that knows the schema (`schema.rs`). It may use the types of `campaign` (for the
//! fingerprints), `clock` (timestamps), `outcome` (what is recorded) and `smtp` (enhanced status
//! codes); and, for now, those of `node` (`HealthEvent`) and `dns` (`DnsReport`).
//!
//! # Where things are
//! - `schema.rs`: the tables, [`SCHEMA_VERSION`] and the migrations.
//! - `store.rs`: [`Journal`] (open, runs, the resume sets, the DNS counters), [`RunInfo`],
//!   [`RunState`].
//! - `rowset.rs`: [`RowSet`], the rows already done (skipped by the reader at resume).
//! - `fingerprint.rs`: [`list_fingerprint`] and [`template_fingerprint`], a run's identity.
//! - `status.rs`: [`StatusReport`], what `blast status` shows.
//! - `writer.rs`: the writer thread ([`JournalWriter`], [`JournalSender`]): how records reach
//!   SQLite, and why that way.
//! - `attempt_log.rs`: the binary append-only log of the records not yet in SQLite (group
//!   writes), its files ([`log_path`]) and its replay after a crash.
//! - `lock.rs`: [`CampaignLock`], one sender per campaign.
//!
//! # Resume and the at-least-once window
//! At resume the rows with a final outcome are loaded into a [`RowSet`] bitmap (one bit per row:
//! 10M rows = 1.25 MB) and skipped by the reader before rendering. Rows with an attempt mark but no
//! outcome are re-sent and counted as "possibly duplicated (resumed)"; deferred rows are simply
//! re-sent. A connection writes its attempt mark to the log (see "Writer" in `writer.rs`) before it
//! starts the transaction, so every message a relay may have received has a durable mark. A
//! connection queues the outcome of its transaction before it writes its next mark (a retry,
//! already marked, asks for a [`JournalSender::barrier`]), and that write carries both (or an
//! earlier one, by another connection or a batch hand-over, the outcome): so each connection has at
//! most **one** row with a mark and no durable outcome at any moment — the one in flight, or the
//! one it just finished. The window in which a recipient can get a message twice is therefore at
//! most the sum of `max_connections` of the nodes per crash (plus jobs waiting to be re-sent after
//! a connection was lost mid-transaction, which are flagged possibly duplicated anyway), every one
//! of them counted as possibly duplicated; the deterministic Message-ID lets downstream systems
//! de-duplicate. `tests/crash.rs` checks this against Postfix's smtp-sink with 5 `kill -9`s. (Had
//! the marks themselves been batched lazily, uncommitted marks — up to 100 ms of sends — would
//! widen the window silently.)

mod attempt_log;
mod fingerprint;
mod lock;
mod rowset;
mod schema;
mod status;
mod store;
mod writer;

use std::path::{Path, PathBuf};

pub use attempt_log::log_path;
pub use fingerprint::{list_fingerprint, template_fingerprint};
pub use lock::{CampaignLock, LockError, lock_path};
pub use rowset::RowSet;
pub use schema::SCHEMA_VERSION;
pub use status::{DnsStatus, FailureReason, GroupCounts, NodeEventRow, StatusCounts, StatusReport};
pub use store::{Journal, OutcomeRecord, RunInfo, RunState};
pub use writer::{BATCH, FLUSH_EVERY, JournalSender, JournalWriter, WriterStats};

/// Deletes a journal and the files beside it (`-wal`, `-shm`, `-log`, `-log2`): for a campaign
/// that starts over (the demo's `--new-run`). A file that is not there is fine. Returns the
/// bytes freed.
pub fn remove_files(path: &Path) -> Result<u64> {
    let mut freed = 0;
    for suffix in ["", "-wal", "-shm", "-log", "-log2"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        match std::fs::metadata(&p) {
            Ok(m) => freed += m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(cause) => return Err(JournalError::Io { path: p, cause }),
        }
        std::fs::remove_file(&p).map_err(|cause| JournalError::Io { path: p, cause })?;
    }
    Ok(freed)
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {cause}", path.display())]
    Sql {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("journal {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
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

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |cause| JournalError::Sql {
        path: path.to_path_buf(),
        cause,
    }
}

/// What the tests of the journal's files share.
#[cfg(test)]
mod test_support {
    use std::path::PathBuf;

    use crate::outcome::{Outcome, Status};

    pub(super) fn dir(name: &str) -> PathBuf {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-tmp")
            .join(format!("journal-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub(super) fn outcome(row: u64, status: Status) -> Outcome {
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
}
