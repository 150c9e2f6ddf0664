//! The threads before the network: the reader (CSV → validated recipients, skipping rows
//! final in an earlier session, suppressed addresses and other shards' rows) and the render
//! threads (recipient → message; a row that cannot be rendered is a final failure, recorded
//! through the outcome sink). Bounded channels between them: a slow pool slows the reader.

use std::sync::Arc;

use super::SendError;
use crate::campaign::Campaign;
use crate::journal::RowSet;
use crate::outcome::Unrendered;
use crate::send::SendOptions;
use crate::send::outcomes::OutcomeSink;
use crate::send::progress::{Counters, inc};
use crate::send::render::{Message, Renderer};
use crate::send::source::{Recipient, Source, SourceStats};
use crate::shutdown::Shutdown;

/// Recipients per hand-over from the reader to the render threads.
const BATCH: usize = 512;

/// Rendered messages per hand-over to the dispatcher: one thread wake-up per batch.
pub(super) const RENDER_BATCH: usize = 128;

/// The reader thread and the render threads, and the queue out of them.
pub(super) struct Stages {
    /// Rendered messages, in batches: `queue_depth` messages in all.
    pub(super) messages: async_channel::Receiver<Vec<Message>>,
    reader: std::thread::JoinHandle<Result<ReadEnd, crate::send::source::SourceError>>,
    renderers: Vec<std::thread::JoinHandle<()>>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn start_stages(
    campaign: &Campaign,
    mut source: Source,
    renderer: Renderer,
    opts: &SendOptions,
    skip: Option<Arc<RowSet>>,
    rows: u64,
    counters: &Arc<Counters>,
    shutdown: &Arc<Shutdown>,
    sink: Option<Arc<OutcomeSink>>,
) -> Result<Stages, SendError> {
    let (msg_tx, messages) = async_channel::bounded::<Vec<Message>>(
        campaign.limits.queue_depth.div_ceil(RENDER_BATCH).max(2),
    );
    let (batch_tx, batch_rx) =
        async_channel::bounded::<Vec<Recipient>>(campaign.limits.render_threads * 2);
    // The suppression list (a dry run only reads an existing one).
    let suppressions = if opts.dry_run && !campaign.suppression.path.exists() {
        None
    } else {
        Some(crate::bounce::suppression::Suppressions::open(
            &campaign.suppression.path,
        )?)
    };
    source.expect_rows(rows);
    if let Some(done) = skip {
        counters
            .earlier
            .store(done.len(), std::sync::atomic::Ordering::Relaxed);
        source.skip_done(done);
    }
    let reader = {
        let stop = shutdown.clone();
        let (limit, shard) = (opts.limit, opts.shard);
        std::thread::Builder::new()
            .name("blast-reader".into())
            .spawn({
                let counters = counters.clone();
                move || {
                    let read = Read {
                        stop,
                        limit,
                        suppressions: suppressions.as_ref(),
                        shard,
                        counters: &counters,
                    };
                    read_loop(source, batch_tx, read)
                }
            })
            .map_err(SendError::Runtime)?
    };
    let renderer = Arc::new(renderer);
    let renderers = (0..campaign.limits.render_threads)
        .map(|i| {
            let (r, rx, tx, failed, c) = (
                renderer.clone(),
                batch_rx.clone(),
                msg_tx.clone(),
                sink.clone(),
                counters.clone(),
            );
            std::thread::Builder::new()
                .name(format!("blast-render-{i}"))
                .spawn(move || render_loop(&r, rx, tx, failed, &c))
                .map_err(SendError::Runtime)
        })
        .collect::<Result<_, _>>()?;
    Ok(Stages {
        messages,
        reader,
        renderers,
    })
}

impl Stages {
    /// Waits for the render threads and the reader (off the runtime's workers).
    pub(super) async fn join(self) -> Result<ReadEnd, SendError> {
        let Stages {
            reader, renderers, ..
        } = self;
        let read = tokio::task::spawn_blocking(move || {
            for r in renderers {
                let _ = r.join();
            }
            reader.join()
        })
        .await
        .expect("join task")
        .expect("reader thread")?;
        tracing::debug!("reader and render threads joined");
        Ok(read)
    }
}

/// What the reader thread works with besides the list.
struct Read<'a> {
    stop: Arc<Shutdown>,
    limit: Option<u64>,
    suppressions: Option<&'a crate::bounce::suppression::Suppressions>,
    shard: Option<crate::send::shard::Shard>,
    counters: &'a Counters,
}

fn read_loop(
    mut source: Source,
    tx: async_channel::Sender<Vec<Recipient>>,
    read: Read<'_>,
) -> Result<ReadEnd, crate::send::source::SourceError> {
    let Read {
        stop,
        limit,
        suppressions,
        shard,
        counters,
    } = read;
    let handed = |n: usize| {
        counters
            .queued
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed)
    };
    let mut batch = Vec::with_capacity(BATCH);
    let (mut eof, mut suppressed) = (false, 0u64);
    let mut other_shards = 0u64;
    let is_suppressed = |address: &str| {
        suppressions.is_some_and(|s| {
            s.contains(address).unwrap_or_else(|e| {
                // Fail closed: an unreadable list must not let a dead address through.
                tracing::error!("{e}; skipping {address}");
                true
            })
        })
    };
    while !stop.is_stopping() {
        if limit.is_some_and(|l| source.stats().rows >= l) {
            break;
        }
        match source.next_recipient()? {
            // Another feeder's row (`--shard`): not rendered, not sent, not rejected.
            Some(r) if shard.is_some_and(|s| !s.contains(&r.address)) => other_shards += 1,
            // On the suppression list: never rendered, never sent.
            Some(r) if is_suppressed(&r.address) => suppressed += 1,
            Some(r) => {
                batch.push(r);
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    handed(full.len());
                    if tx.send_blocking(full).is_err() {
                        break;
                    }
                }
            }
            None => {
                eof = true;
                break;
            }
        }
    }
    let last = batch.len();
    if !batch.is_empty() && !stop.is_stopping() {
        handed(last);
        if tx.send_blocking(batch).is_err() {
            eof = false;
        }
    }
    if eof {
        use std::sync::atomic::Ordering::Relaxed;
        let expected = counters.earlier.load(Relaxed) + counters.queued.load(Relaxed);
        counters.expected.store(expected, Relaxed);
        counters.list_read.store(true, Relaxed);
    }
    let stats = source.finish()?;
    Ok(ReadEnd {
        // Final in an earlier session of the run: skipped by the source's fast path.
        skipped: stats.done,
        stats,
        eof,
        suppressed,
        other_shards,
    })
}

/// What the reader did.
pub(super) struct ReadEnd {
    pub(super) stats: SourceStats,
    /// Rows skipped as final in an earlier session.
    pub(super) skipped: u64,
    /// The whole list was read and handed on.
    pub(super) eof: bool,
    /// Rows skipped because their address is suppressed.
    pub(super) suppressed: u64,
    /// Rows skipped as belonging to another shard (`--shard`).
    pub(super) other_shards: u64,
}

/// Renders batches of recipients into batches of messages. A row that cannot be rendered is
/// counted (`render_errors`) and, when `failed` is given (not a dry run), handed on as an
/// [`Unrendered`] to the dispatcher, which records it as a final failure.
fn render_loop(
    renderer: &Renderer,
    rx: async_channel::Receiver<Vec<Recipient>>,
    tx: async_channel::Sender<Vec<Message>>,
    sink: Option<Arc<OutcomeSink>>,
    counters: &Counters,
) {
    let mut out = Vec::with_capacity(RENDER_BATCH);
    while let Ok(batch) = rx.recv_blocking() {
        let now = crate::clock::unix_now();
        for recipient in batch {
            match renderer.render(recipient, now) {
                Ok(m) => {
                    inc(&counters.rendered);
                    out.push(m);
                    if out.len() == RENDER_BATCH {
                        let full = std::mem::replace(&mut out, Vec::with_capacity(RENDER_BATCH));
                        if tx.send_blocking(full).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    inc(&counters.render_errors);
                    tracing::warn!("{e}");
                    if let (Some(sink), crate::send::render::RenderError::Row { row, rcpt, .. }) =
                        (&sink, &e)
                    {
                        // A final `failed` outcome, recorded here (this is not a tokio worker).
                        sink.fail_unrendered(Unrendered {
                            row: *row,
                            message_id: renderer.message_id(*row, rcpt),
                            rcpt: rcpt.clone(),
                            reason: e.reason(),
                        });
                    }
                }
            }
        }
        // Nothing more waiting: hand over what we have rather than sit on it.
        if !out.is_empty() && rx.is_empty() {
            let part = std::mem::replace(&mut out, Vec::with_capacity(RENDER_BATCH));
            if tx.send_blocking(part).is_err() {
                return;
            }
        }
    }
    if !out.is_empty() {
        let _ = tx.send_blocking(out);
    }
}

/// Rows in the list, estimated from its line count (for the progress bar only).
pub(super) fn estimate_rows(path: &std::path::Path, limit: Option<u64>) -> u64 {
    use std::io::Read;
    let mut n = 0u64;
    if let Ok(mut f) = std::fs::File::open(path) {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = f.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
    let rows = n.saturating_sub(1);
    limit.map_or(rows, |l| l.min(rows))
}
