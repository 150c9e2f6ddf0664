//! `blast send`: the pipeline, one file per stage, and the wiring that runs it to the end.
//!
//! ```text
//! stages (threads)                     network (tokio)
//! reader ──batches──► render ──queue_depth──► [prevalidate] ──► dispatch ──► node queues ──► node (SMTP)
//!  source.rs           render/                 prevalidate.rs    dispatch.rs  (direct.rs)      node.rs
//!                        │ unrenderable rows                                                    │ outcomes, marks
//!                        └──────────────────────────────► outcomes.rs (OutcomeSink) ◄───────────┘
//!                                                           ├─► journal (writer + log threads)
//!                                                           ├─► delivery log (log.rs, its thread)
//!                                                           ├─► suppression list (its thread)
//!                                                           └─► counters → progress.rs, the Report
//! ```
//! Every arrow is a bounded channel, so a slow pool slows the reader instead of growing memory;
//! data flows one way (a connection hands jobs back to the dispatcher only through its queue of
//! retries). Rendering runs on OS threads and the network side on tokio, which puts both
//! cores to work. One [`Shutdown`] stops it all: stop reading, let running transactions finish
//! within the grace period, cut the rest off, close the journal and the log, report.
//! Around a run: `plan.rs` (which run: new, resume, finished; its guards), `pool.rs` (the
//! nodes), `stages.rs` (reader and render threads), `retry.rs` (the retry policy), `shard.rs`.
//!
//! Uses: campaign, journal, bounce (the suppression list), dns, smtp, dkim (through render),
//! outcome, shutdown, clock, address, verp, generate. Nothing above it (report, cli).

pub mod direct;
pub mod dispatch;
pub mod log;
pub mod node;
pub mod outcomes;
pub mod plan;
mod pool;
pub mod prevalidate;
pub mod progress;
pub mod render;
pub mod retry;
pub mod shard;
pub mod source;
mod stages;

use std::sync::Arc;

pub use pool::{client_settings, send_one, shared_resolver};
use pool::{direct_settings, start_pool};
use stages::{RENDER_BATCH, ReadEnd, Stages, estimate_rows, start_stages};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::bounce::suppression::Suppressions;
use crate::campaign::Campaign;
use crate::journal::{JournalWriter, RowSet, WriterStats};
use crate::send::dispatch::{Dispatcher, End};
use crate::send::log::DeliveryLog;
use crate::send::node::Node;
use crate::send::outcomes::{OutcomeSink, SuppressionWriter};
use crate::send::progress::{Counters, Mode, Progress, get};
use crate::send::render::{Message, Renderer};
use crate::send::source::{Source, SourceStats};
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("node {node:?}: cannot resolve {host}:{port}: {cause}")]
    Resolve {
        node: String,
        host: String,
        port: u16,
        cause: std::io::Error,
    },
    #[error("node {node:?}: environment variable {var} (AUTH password) is not set")]
    MissingPassword { node: String, var: String },
    #[error("node {node:?}: {cause}")]
    Client {
        node: String,
        cause: crate::smtp::SmtpError,
    },
    #[error("cannot start the embedded receiver: {0}")]
    Receiver(std::io::Error),
    #[error(transparent)]
    Log(#[from] crate::send::log::LogError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Source(#[from] crate::send::source::SourceError),
    #[error(transparent)]
    Suppression(#[from] crate::bounce::suppression::SuppressionError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for SIGINT/SIGTERM: {0}")]
    Signals(std::io::Error),
    #[error("--to: {0}")]
    To(String),
    #[error("DNS: {0}")]
    Dns(String),
}

/// Options of one `blast send`.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Render everything, send nothing.
    pub dry_run: bool,
    /// Read at most this many rows.
    pub limit: Option<u64>,
    pub mode: Mode,
    /// How long running transactions may take to finish after a stop request.
    pub grace: Duration,
    /// `--shard K/N`: only the rows of this shard (see [`crate::send::shard`]).
    pub shard: Option<crate::send::shard::Shard>,
}

/// The journal side of a send (see [`crate::journal`]).
pub struct Journaling {
    /// The writer thread of the run; closed (committed, checkpointed) on every way out.
    pub writer: JournalWriter,
    /// Rows with a final outcome from earlier sessions of the run: skipped before rendering.
    pub skip: RowSet,
}

pub use crate::shutdown::Signal;

#[derive(Debug, Clone)]
pub struct NodeReport {
    pub name: String,
    pub accepted: u64,
    pub deferred: u64,
    pub failed: u64,
    pub errors: u64,
    /// Connections still counted as open when the run ended (0 unless tasks were cut off).
    pub connections: u64,
    /// Down/up events (see [`crate::outcome::HealthEvent`]).
    pub health: crate::outcome::HealthHistory,
}

/// What a run did, for the summary and the exit code.
#[derive(Debug, Clone)]
pub struct Report {
    pub end: End,
    pub signal: Option<Signal>,
    pub dry_run: bool,
    pub source: SourceStats,
    pub rendered: u64,
    /// Rows whose message could not be rendered. Outside a dry run each is also a final
    /// `failed` outcome (counted in `failed`, recorded in the journal and the delivery log).
    pub render_errors: u64,
    pub accepted: u64,
    pub failed: u64,
    pub expired: u64,
    pub deferrals: u64,
    pub requeues: u64,
    pub possibly_duplicated: u64,
    /// Rendered but not final when the run ended (stopped, or no node reachable).
    pub unfinished: u64,
    pub nodes: Vec<NodeReport>,
    pub duration: Duration,
    /// When the run started (wall clock), for the health events' offsets.
    pub started_at: std::time::SystemTime,
    pub peak_rate: f64,
    pub log_lines: u64,
    pub log_waits: u64,
    /// Messages the embedded receiver accepted (demo campaigns).
    pub embedded_received: Option<u64>,
    /// The reader got to the end of the list (no stop, no `--limit` cut it short).
    pub list_complete: bool,
    /// Rows skipped because an earlier session of the run recorded their final outcome.
    pub skipped: u64,
    /// Of `possibly_duplicated`: rows attempted by an earlier session that died before
    /// recording their outcome, sent again.
    pub resumed_duplicates: u64,
    /// What the journal writer wrote in this session (None without a journal).
    pub journal: Option<WriterStats>,
    /// Rows skipped because their address is on the suppression list.
    pub suppressed: u64,
    /// Domain lookups and pre-validation (None when neither ran).
    pub dns: Option<crate::dns::DnsReport>,
    /// `--shard K/N`, and the rows skipped as belonging to another shard.
    pub shard: Option<(crate::send::shard::Shard, u64)>,
}

/// Runs a campaign to the end (or to a stop) and reports.
pub fn run(
    campaign: &Campaign,
    source: Source,
    renderer: Renderer,
    opts: &SendOptions,
) -> Result<Report, SendError> {
    run_with(campaign, source, renderer, opts, None)
}

/// [`run`], recording outcomes and attempt marks in the journal and skipping the rows an
/// earlier session of the run finished.
pub fn run_with(
    campaign: &Campaign,
    source: Source,
    renderer: Renderer,
    opts: &SendOptions,
    journal: Option<Journaling>,
) -> Result<Report, SendError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 4),
        )
        .enable_all()
        .thread_name("blast-net")
        .build()
        .map_err(SendError::Runtime)?;
    runtime.block_on(run_async(campaign, source, renderer, opts, journal))
}

async fn run_async(
    campaign: &Campaign,
    source: Source,
    renderer: Renderer,
    opts: &SendOptions,
    journal: Option<Journaling>,
) -> Result<Report, SendError> {
    let (journal_writer, skip) = match journal {
        Some(j) if !opts.dry_run => (Some(j.writer), Some(Arc::new(j.skip))),
        _ => (None, None),
    };
    let started = Instant::now();
    let shutdown = Shutdown::new();
    // Before anything starts (see crate::shutdown). A dry run keeps the default actions: it
    // has nothing to stop cleanly.
    let signals = if opts.dry_run {
        None
    } else {
        Some(crate::shutdown::Signals::listen().map_err(SendError::Signals)?)
    };
    let counters = Arc::new(Counters::default());
    let rows = estimate_rows(&campaign.recipients.path, opts.limit);
    let total = rows / opts.shard.map_or(1, |s| u64::from(s.count()));

    // The one resolver of the run (node host names, pre-validation, direct delivery).
    let dns = shared_resolver(campaign, opts.dry_run)?;
    let (mut nodes, receivers) = if opts.dry_run {
        (Vec::new(), Vec::new())
    } else {
        start_pool(campaign, dns.as_deref()).await?
    };
    let outputs = if opts.dry_run {
        None
    } else {
        Some(Outputs::open(
            campaign,
            &counters,
            journal_writer,
            &shutdown,
        )?)
    };
    let sink = outputs.as_ref().map(|o| o.sink.clone());
    let stages = start_stages(
        campaign,
        source,
        renderer,
        opts,
        skip,
        rows,
        &counters,
        &shutdown,
        sink.clone(),
    )?;
    let node_counters = nodes
        .iter()
        .map(|n| (n.name.to_string(), n.counters.clone()))
        .collect();
    let progress = Progress::start(
        opts.mode,
        counters.clone(),
        node_counters,
        total,
        shutdown.clone(),
        opts.grace,
    );

    let delivered = match (sink, signals) {
        (Some(sink), Some(signals)) => {
            let net = Network {
                campaign,
                opts,
                counters: &counters,
                dns: dns.clone(),
                shutdown: shutdown.clone(),
                sink,
            };
            net.deliver(&mut nodes, signals, &stages).await?
        }
        _ => {
            // Dry run: drain the queue.
            while stages.messages.recv().await.is_ok() {}
            Delivered::dry_run()
        }
    };
    // The reader stops (if it has not reached the end of the list), the render threads find
    // the queue closed; once they are gone, nothing records any more.
    shutdown.request_stop();
    stages.messages.close();
    let peak_rate = progress.finish().await;
    let read = stages.join().await?;
    let closed = match outputs {
        Some(o) => Some(
            tokio::task::spawn_blocking(move || o.close())
                .await
                .expect("join task")?,
        ),
        None => None,
    };
    let mut embedded_received = None;
    for r in receivers {
        *embedded_received.get_or_insert(0) += r.stats().accepted;
        r.shutdown().await;
    }
    let dns = dns
        .as_ref()
        .filter(|_| prevalidating(campaign))
        .map(|d| d.stats.report());
    Ok(report(
        &counters,
        opts,
        started,
        &nodes,
        read,
        delivered,
        Ended {
            peak_rate,
            embedded_received,
            dns,
            closed,
            signal: shutdown.signal(),
        },
    ))
}

/// Where a sending run's outcomes go: the outcome sink and what it records into.
struct Outputs {
    sink: Arc<OutcomeSink>,
    log: DeliveryLog,
    journal: Option<JournalWriter>,
    suppression: Option<SuppressionWriter>,
}

/// What closing the outputs reported.
struct Closed {
    log_lines: u64,
    log_waits: u64,
    journal: Option<WriterStats>,
    resumed_duplicates: u64,
}

impl Outputs {
    fn open(
        campaign: &Campaign,
        counters: &Arc<Counters>,
        journal: Option<JournalWriter>,
        shutdown: &Arc<Shutdown>,
    ) -> Result<Outputs, SendError> {
        let log = DeliveryLog::open(&campaign.output.delivery_log, 65_536)?;
        let list = match Suppressions::open(&campaign.suppression.path) {
            Ok(list) => Some(list),
            Err(e) => {
                tracing::error!("{e}: 5xx user-unknown replies will not be suppressed");
                None
            }
        };
        let (sink, suppression) = OutcomeSink::new(
            counters.clone(),
            log.sender(),
            journal.as_ref().map(|w| w.sender()),
            list,
            &campaign.id,
            shutdown.clone(),
        )
        .map_err(SendError::Runtime)?;
        Ok(Outputs {
            sink: Arc::new(sink),
            log,
            journal,
            suppression,
        })
    }

    /// Closes the journal (first: it must be committed on every way out, even if the log
    /// fails), the delivery log and the suppression writer. Every other holder of the sink
    /// (connections, render threads) must be gone.
    fn close(self) -> Result<Closed, SendError> {
        let resumed_duplicates = self.sink.resumed_duplicates();
        let log_waits = self.log.sender().waits();
        drop(self.sink);
        let journal = self.journal.map(|w| w.close());
        if let Some(s) = self.suppression {
            s.close();
        }
        let log_lines = self.log.close()?;
        tracing::debug!("journal and delivery log closed");
        Ok(Closed {
            log_lines,
            log_waits,
            journal: journal.transpose()?,
            resumed_duplicates,
        })
    }
}

/// The network side of a run that sends: dispatcher, pre-validation, direct delivery and the
/// connections.
struct Network<'a> {
    campaign: &'a Campaign,
    opts: &'a SendOptions,
    counters: &'a Arc<Counters>,
    dns: Option<Arc<crate::dns::Dns>>,
    shutdown: Arc<Shutdown>,
    sink: Arc<OutcomeSink>,
}

/// How the network side ended.
struct Delivered {
    end: End,
}

impl Delivered {
    fn dry_run() -> Delivered {
        Delivered { end: End::Done }
    }
}

impl Network<'_> {
    /// Runs the dispatcher and the connections to the end (or to a stop, within the grace
    /// period). `nodes` gets the MX hosts of direct delivery added.
    async fn deliver(
        self,
        nodes: &mut Vec<Arc<Node>>,
        signals: crate::shutdown::Signals,
        stages: &Stages,
    ) -> Result<Delivered, SendError> {
        let (campaign, counters) = (self.campaign, self.counters);
        let (mut dispatcher, shared) = Dispatcher::new(
            nodes.clone(),
            campaign.nodes.iter().map(|n| n.rate).collect(),
            campaign.limits.rate,
            campaign.retry.clone(),
            counters.clone(),
            self.sink.clone(),
            self.shutdown.clone(),
            campaign.limits.queue_depth,
        );
        // What is known about recipient domains (pre-validation fills it, direct delivery
        // reads it).
        let domains = Arc::new(crate::dns::Domains::default());
        // Direct delivery: MX hosts become nodes as domains route to them.
        let direct_nodes = match (&campaign.direct, &self.dns) {
            (Some(cfg), Some(dns)) => {
                let router = crate::send::direct::Router::new(
                    cfg.clone(),
                    dns.clone(),
                    domains.clone(),
                    direct_settings(campaign, cfg)?,
                );
                let created = router.created.clone();
                dispatcher.set_direct(router);
                Some(created)
            }
            _ => None,
        };
        let (dispatch_rx, stage) = self.prevalidation(&stages.messages, &domains, &shared);
        let mut tasks: Vec<_> = nodes.iter().flat_map(|n| n.spawn(&shared)).collect();
        let watcher = self.shutdown.on_signals(signals);
        let end = dispatcher.run(dispatch_rx).await;
        tracing::debug!("dispatcher ended: {end:?}");
        if let Some(stage) = stage {
            stage.abort();
            let _ = stage.await;
        }
        // Direct delivery: the MX hosts' connection tasks finish like the pool's.
        if let Some(d) = &direct_nodes {
            tasks.extend(d.tasks.lock().expect("not poisoned").drain(..));
            nodes.extend(d.nodes.lock().expect("not poisoned").iter().cloned());
        }
        if end != End::Done {
            // No node reachable: the run stops like after a signal (within the grace period).
            self.shutdown.request_stop();
        }
        self.shutdown.wind_down(tasks, self.opts.grace).await;
        tracing::debug!("connections closed");
        watcher.abort();
        let _ = watcher.await;
        counters.waiting_retry.store(0, Ordering::Relaxed);
        Ok(Delivered { end })
    }

    /// Pre-validation: a stage between the render threads and the dispatcher, if the
    /// campaign asks for it. Returns the dispatcher's input and the stage's task.
    fn prevalidation(
        &self,
        messages: &async_channel::Receiver<Vec<Message>>,
        domains: &Arc<crate::dns::Domains>,
        shared: &Arc<crate::send::dispatch::Shared>,
    ) -> (
        async_channel::Receiver<Vec<Message>>,
        Option<tokio::task::JoinHandle<()>>,
    ) {
        let campaign = self.campaign;
        match (&self.dns, prevalidating(campaign)) {
            (Some(dns), true) => {
                let (tx, rx) = async_channel::bounded::<Vec<Message>>(
                    campaign.limits.queue_depth.div_ceil(RENDER_BATCH).max(2),
                );
                let p = crate::send::prevalidate::Prevalidator {
                    dns: dns.clone(),
                    domains: domains.clone(),
                    enforce: campaign.direct.is_some()
                        || campaign.dns.prevalidate == crate::dns::Prevalidate::Enforce,
                    addresses: campaign.direct.is_some(),
                    parallelism: campaign.dns.parallelism,
                    hold_limit: campaign.limits.queue_depth.max(1000),
                };
                let stage = tokio::spawn(p.run(messages.clone(), tx, shared.clone()));
                (rx, Some(stage))
            }
            _ => (messages.clone(), None),
        }
    }
}

/// What the end of a run adds to the report.
struct Ended {
    peak_rate: f64,
    embedded_received: Option<u64>,
    dns: Option<crate::dns::DnsReport>,
    /// What closing the outputs reported (none in a dry run).
    closed: Option<Closed>,
    signal: Option<Signal>,
}

fn report(
    counters: &Counters,
    opts: &SendOptions,
    started: Instant,
    nodes: &[Arc<Node>],
    read: ReadEnd,
    d: Delivered,
    e: Ended,
) -> Report {
    let (rendered, render_errors, accepted, failed, expired) = (
        get(&counters.rendered),
        get(&counters.render_errors),
        get(&counters.accepted),
        get(&counters.failed),
        get(&counters.expired),
    );
    // Everything rendered (or failed to render) that did not reach a final outcome: held by
    // the dispatcher or a connection, and also still waiting in the render queue when the run
    // stopped. Render errors are final `failed` outcomes once the dispatcher recorded them.
    let unfinished = if opts.dry_run {
        0
    } else {
        (rendered + render_errors).saturating_sub(accepted + failed + expired)
    };
    Report {
        end: d.end,
        signal: e.signal,
        dry_run: opts.dry_run,
        source: read.stats,
        rendered,
        render_errors,
        accepted,
        failed,
        expired,
        deferrals: get(&counters.deferrals),
        requeues: get(&counters.requeues),
        possibly_duplicated: get(&counters.possibly_duplicated),
        unfinished,
        nodes: nodes
            .iter()
            .map(|n| NodeReport {
                name: n.name.to_string(),
                accepted: get(&n.counters.accepted),
                deferred: get(&n.counters.deferred),
                failed: get(&n.counters.failed),
                errors: get(&n.counters.errors),
                connections: get(&n.counters.connections),
                health: n.health(),
            })
            .collect(),
        duration: started.elapsed(),
        started_at: std::time::SystemTime::now() - started.elapsed(),
        peak_rate: e.peak_rate,
        log_lines: e.closed.as_ref().map_or(0, |c| c.log_lines),
        log_waits: e.closed.as_ref().map_or(0, |c| c.log_waits),
        embedded_received: e.embedded_received,
        list_complete: read.eof,
        skipped: read.skipped,
        resumed_duplicates: e.closed.as_ref().map_or(0, |c| c.resumed_duplicates),
        journal: e.closed.and_then(|c| c.journal),
        suppressed: read.suppressed,
        dns: e.dns,
        shard: opts.shard.map(|s| (s, read.other_shards)),
    }
}

/// Pre-validation runs (`[dns] prevalidate` warn/enforce, or direct delivery).
pub(super) fn prevalidating(campaign: &Campaign) -> bool {
    campaign.direct.is_some() || campaign.dns.prevalidate != crate::dns::Prevalidate::Off
}
