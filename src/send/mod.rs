//! `blast send`: wires the stages together and runs them to the end.
//!
//! ```text
//! reader thread ──batches──► render threads ──queue_depth──► dispatcher ──► node queues ──► connections
//!  (CSV, rejects)            (templates+MIME)                 (retry heap)                  (SMTP)
//!                                                                                  outcomes ──► delivery log thread
//! ```
//! Every arrow is a bounded channel, so a slow pool slows the reader instead of growing memory.
//! Rendering runs on OS threads of its own and the network side on tokio, which puts both
//! cores to work. A stop (SIGINT/SIGTERM) stops the reader, lets running transactions finish
//! within the grace period, flushes the log and reports.

pub mod direct;
pub mod dispatch;
pub mod log;
pub mod node;
pub mod plan;
pub mod prevalidate;
pub mod progress;
pub mod render;
pub mod retry;
pub mod shard;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::campaign::{Campaign, NodeAddress, TlsSetting};
use crate::journal::{JournalWriter, RowSet, WriterStats};
use crate::outcome::Unrendered;
use crate::send::dispatch::{Dispatcher, End};
use crate::send::log::DeliveryLog;
use crate::send::node::Node;
use crate::send::progress::{Counters, Mode, Progress, get, inc};
use crate::send::render::{Message, Renderer};
use crate::send::source::{Recipient, Source, SourceStats};
use crate::smtp::receiver::{Receiver, ReceiverHandle, ReceiverOptions, Script};
use crate::smtp::{ClientSettings, Connection, Credentials, TlsMode};

/// Recipients per hand-over from the reader to the render threads.
const BATCH: usize = 512;
/// Rendered messages per hand-over to the dispatcher: one thread wake-up per batch.
const RENDER_BATCH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("node {node:?}: cannot resolve {host}:{port}: {source}")]
    Resolve {
        node: String,
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("node {node:?}: environment variable {var} (AUTH password) is not set")]
    MissingPassword { node: String, var: String },
    #[error("node {node:?}: {source}")]
    Client {
        node: String,
        source: crate::smtp::SmtpError,
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
    let log = if opts.dry_run {
        None
    } else {
        Some(DeliveryLog::open(&campaign.output.delivery_log, 65_536)?)
    };
    let stages = start_stages(campaign, source, renderer, opts, skip, rows, &counters)?;
    let node_counters = nodes
        .iter()
        .map(|n| (n.name.to_string(), n.counters.clone()))
        .collect();
    let progress = Progress::start(opts.mode, counters.clone(), node_counters, total);

    let delivered = match (log, signals) {
        (Some(log), Some(signals)) => {
            let net = Network {
                campaign,
                opts,
                counters: &counters,
                dns: dns.clone(),
                journal: journal_writer,
                stop_reading: stages.stop_reading.clone(),
            };
            net.deliver(&mut nodes, log, signals, &stages).await?
        }
        _ => {
            // Dry run: drain the queue.
            while stages.messages.recv().await.is_ok() {}
            Delivered::dry_run()
        }
    };
    stages.messages.close();

    let peak_rate = progress.finish().await;
    let read = stages.join().await?;
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
        },
    ))
}

/// Resolves and starts the node pool (and the embedded receivers of a demo campaign).
async fn start_pool(
    campaign: &Campaign,
    dns: Option<&crate::dns::Dns>,
) -> Result<(Vec<Arc<Node>>, Vec<ReceiverHandle>), SendError> {
    let mut receivers: Vec<ReceiverHandle> = Vec::new();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    for n in &campaign.nodes {
        let addr = match &n.address {
            NodeAddress::Embedded => {
                let r = start_embedded().await?;
                let addr = r.addr();
                receivers.push(r);
                addr
            }
            NodeAddress::Remote { host, port } => resolve(dns, &n.name, host, *port).await?,
        };
        let settings = client_settings(campaign, n)?;
        nodes.push(Arc::new(Node::new(
            &n.name,
            addr,
            n.weight,
            n.fallback,
            n.max_connections,
            n.messages_per_connection,
            settings,
        )));
    }
    Ok((nodes, receivers))
}

/// The reader thread and the render threads, and the queues out of them.
struct Stages {
    /// Set to stop the reader (a stop was requested, or the run is over).
    stop_reading: Arc<AtomicBool>,
    /// Rendered messages, in batches: `queue_depth` messages in all.
    messages: async_channel::Receiver<Vec<Message>>,
    /// Rows that cannot be rendered (none in a dry run, which only counts them).
    unrendered: Option<async_channel::Receiver<Unrendered>>,
    reader: std::thread::JoinHandle<Result<ReadEnd, crate::send::source::SourceError>>,
    renderers: Vec<std::thread::JoinHandle<()>>,
}

fn start_stages(
    campaign: &Campaign,
    mut source: Source,
    renderer: Renderer,
    opts: &SendOptions,
    skip: Option<Arc<RowSet>>,
    rows: u64,
    counters: &Arc<Counters>,
) -> Result<Stages, SendError> {
    let stop_reading = Arc::new(AtomicBool::new(false));
    let (msg_tx, messages) = async_channel::bounded::<Vec<Message>>(
        campaign.limits.queue_depth.div_ceil(RENDER_BATCH).max(2),
    );
    let (batch_tx, batch_rx) =
        async_channel::bounded::<Vec<Recipient>>(campaign.limits.render_threads * 2);
    let (failed_tx, unrendered) = if opts.dry_run {
        (None, None)
    } else {
        let (tx, rx) = async_channel::bounded::<Unrendered>(RENDER_BATCH);
        (Some(tx), Some(rx))
    };
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
        source.skip_done(done);
    }
    let reader = {
        let stop = stop_reading.clone();
        let (limit, shard) = (opts.limit, opts.shard);
        std::thread::Builder::new()
            .name("blast-reader".into())
            .spawn(move || read_loop(source, batch_tx, stop, limit, suppressions.as_ref(), shard))
            .map_err(SendError::Runtime)?
    };
    let renderer = Arc::new(renderer);
    let renderers = (0..campaign.limits.render_threads)
        .map(|i| {
            let (r, rx, tx, failed, c) = (
                renderer.clone(),
                batch_rx.clone(),
                msg_tx.clone(),
                failed_tx.clone(),
                counters.clone(),
            );
            std::thread::Builder::new()
                .name(format!("blast-render-{i}"))
                .spawn(move || render_loop(&r, rx, tx, failed, &c))
                .map_err(SendError::Runtime)
        })
        .collect::<Result<_, _>>()?;
    Ok(Stages {
        stop_reading,
        messages,
        unrendered,
        reader,
        renderers,
    })
}

impl Stages {
    /// Waits for the render threads and the reader (off the runtime's workers).
    async fn join(self) -> Result<ReadEnd, SendError> {
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

/// The network side of a run that sends: dispatcher, connections, journal and delivery log.
struct Network<'a> {
    campaign: &'a Campaign,
    opts: &'a SendOptions,
    counters: &'a Arc<Counters>,
    dns: Option<Arc<crate::dns::Dns>>,
    journal: Option<JournalWriter>,
    stop_reading: Arc<AtomicBool>,
}

/// What the network side ended with.
struct Delivered {
    end: End,
    signal: Option<Signal>,
    log_lines: u64,
    log_waits: u64,
    journal: Option<WriterStats>,
    resumed_duplicates: u64,
}

impl Delivered {
    fn dry_run() -> Delivered {
        Delivered {
            end: End::Done,
            signal: None,
            log_lines: 0,
            log_waits: 0,
            journal: None,
            resumed_duplicates: 0,
        }
    }
}

impl Network<'_> {
    /// Runs the dispatcher and the connections to the end (or to a stop), then closes the
    /// journal and the delivery log. `nodes` gets the MX hosts of direct delivery added.
    async fn deliver(
        self,
        nodes: &mut Vec<Arc<Node>>,
        log: DeliveryLog,
        mut signals: crate::shutdown::Signals,
        stages: &Stages,
    ) -> Result<Delivered, SendError> {
        let (campaign, counters) = (self.campaign, self.counters);
        let (dispatcher, shared) = Dispatcher::new(
            nodes.clone(),
            campaign.nodes.iter().map(|n| n.rate).collect(),
            campaign.limits.rate,
            campaign.retry.clone(),
            counters.clone(),
            log.sender(),
            self.journal.as_ref().map(|w| w.sender()),
            campaign.limits.queue_depth,
        );
        match crate::bounce::suppression::Suppressions::open(&campaign.suppression.path) {
            Ok(list) => shared.set_suppression(crate::send::dispatch::SyncSuppression {
                campaign: campaign.id.clone(),
                list: std::sync::Mutex::new(list),
            }),
            Err(e) => tracing::error!("{e}: 5xx user-unknown replies will not be suppressed"),
        }
        let mut dispatcher = dispatcher;
        if let Some(rx) = stages.unrendered.clone() {
            dispatcher.set_unrendered(rx);
        }
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
        // Signals: the first asks for a clean stop, the second cuts the grace period short.
        let signal = Arc::new(std::sync::Mutex::new(None::<Signal>));
        let hurry = Arc::new(tokio::sync::Notify::new());
        let watcher = {
            let (shared, stop, signal, hurry) = (
                shared.clone(),
                self.stop_reading.clone(),
                signal.clone(),
                hurry.clone(),
            );
            tokio::spawn(async move {
                let first = signals.next().await;
                *signal.lock().expect("not poisoned") = Some(first);
                tracing::warn!("{first:?}: stopping; running transactions may finish");
                stop.store(true, Ordering::Relaxed);
                shared.request_stop();
                let _ = signals.next().await;
                hurry.notify_one();
            })
        };
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
        wind_down(tasks, end, self.opts.grace, &hurry).await;
        watcher.abort();
        let _ = watcher.await;
        counters.waiting_retry.store(0, Ordering::Relaxed);
        let resumed_duplicates = shared.resumed_duplicates();
        drop(shared);
        self.stop_reading.store(true, Ordering::Relaxed);
        let log_waits = log.sender().waits();
        // The journal first: it must be committed on every way out, even if the log fails.
        let journal = self.journal.map(|w| w.close());
        let log_lines = log.close()?;
        tracing::debug!("journal and delivery log closed");
        let signal = *signal.lock().expect("not poisoned");
        Ok(Delivered {
            end,
            signal,
            log_lines,
            log_waits,
            journal: journal.transpose()?,
            resumed_duplicates,
        })
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

/// Lets running transactions finish: all of them when the run is done; after a stop, within
/// the grace period or until a second signal, then cuts the rest off (their recipients stay
/// unfinished) and waits for the tasks to be gone (they hold the log's sender).
async fn wind_down(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    end: End,
    grace: Duration,
    hurry: &tokio::sync::Notify,
) {
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let mut all = std::pin::pin!(futures_join(tasks));
    if end == End::Done {
        all.await;
    } else {
        let finished = tokio::select! {
            _ = all.as_mut() => true,
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; closing connections");
                false
            }
            _ = hurry.notified() => {
                tracing::warn!("second signal; closing connections now");
                false
            }
        };
        if !finished {
            for a in &aborts {
                a.abort();
            }
            all.await;
        }
    }
    tracing::debug!("connections closed");
}

/// What the end of a run adds to the report.
struct Ended {
    peak_rate: f64,
    embedded_received: Option<u64>,
    dns: Option<crate::dns::DnsReport>,
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
        signal: d.signal,
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
        log_lines: d.log_lines,
        log_waits: d.log_waits,
        embedded_received: e.embedded_received,
        list_complete: read.eof,
        skipped: read.skipped,
        resumed_duplicates: d.resumed_duplicates,
        journal: d.journal,
        suppressed: read.suppressed,
        dns: e.dns,
        shard: opts.shard.map(|s| (s, read.other_shards)),
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

fn read_loop(
    mut source: Source,
    tx: async_channel::Sender<Vec<Recipient>>,
    stop: Arc<AtomicBool>,
    limit: Option<u64>,
    suppressions: Option<&crate::bounce::suppression::Suppressions>,
    shard: Option<crate::send::shard::Shard>,
) -> Result<ReadEnd, crate::send::source::SourceError> {
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
    while !stop.load(Ordering::Relaxed) {
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
    if !batch.is_empty() && !stop.load(Ordering::Relaxed) && tx.send_blocking(batch).is_err() {
        eof = false;
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
struct ReadEnd {
    stats: SourceStats,
    /// Rows skipped as final in an earlier session.
    skipped: u64,
    /// The whole list was read and handed on.
    eof: bool,
    /// Rows skipped because their address is suppressed.
    suppressed: u64,
    /// Rows skipped as belonging to another shard (`--shard`).
    other_shards: u64,
}

/// Renders batches of recipients into batches of messages. A row that cannot be rendered is
/// counted (`render_errors`) and, when `failed` is given (not a dry run), handed on as an
/// [`Unrendered`] to the dispatcher, which records it as a final failure.
fn render_loop(
    renderer: &Renderer,
    rx: async_channel::Receiver<Vec<Recipient>>,
    tx: async_channel::Sender<Vec<Message>>,
    failed: Option<async_channel::Sender<Unrendered>>,
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
                    if let (Some(failed), crate::send::render::RenderError::Row { row, rcpt, .. }) =
                        (&failed, &e)
                    {
                        let u = Unrendered {
                            row: *row,
                            message_id: renderer.message_id(*row, rcpt),
                            rcpt: rcpt.clone(),
                            reason: e.reason(),
                        };
                        if failed.send_blocking(u).is_err() {
                            return;
                        }
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
fn estimate_rows(path: &std::path::Path, limit: Option<u64>) -> u64 {
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

/// A node's host name through the shared resolver (an IP literal as is).
async fn resolve(
    dns: Option<&crate::dns::Dns>,
    node: &str,
    host: &str,
    port: u16,
) -> Result<SocketAddr, SendError> {
    let err = |source| SendError::Resolve {
        node: node.to_string(),
        host: host.to_string(),
        port,
        source,
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let dns = dns.ok_or_else(|| err(std::io::Error::other("no resolver")))?;
    dns.socket_addr(host, port)
        .await
        .map_err(|e| err(std::io::Error::other(e.to_string())))
}

/// Pre-validation runs (`[dns] prevalidate` warn/enforce, or direct delivery).
fn prevalidating(campaign: &Campaign) -> bool {
    campaign.direct.is_some() || campaign.dns.prevalidate != crate::dns::Prevalidate::Off
}

/// The run's one resolver, when anything needs it: a node given by host name, pre-validation
/// or direct delivery (not for a dry run, which sends nothing).
pub fn shared_resolver(
    campaign: &Campaign,
    dry_run: bool,
) -> Result<Option<Arc<crate::dns::Dns>>, SendError> {
    let named_node = campaign.nodes.iter().any(|n| {
        matches!(&n.address, NodeAddress::Remote { host, .. } if host.parse::<std::net::IpAddr>().is_err())
    });
    if dry_run || !(named_node || prevalidating(campaign)) {
        return Ok(None);
    }
    crate::dns::Dns::new(&campaign.dns)
        .map(|d| Some(Arc::new(d)))
        .map_err(SendError::Dns)
}

/// Client settings for MX hosts (direct delivery): no AUTH, TLS per `[direct] tls`.
fn direct_settings(
    campaign: &Campaign,
    cfg: &crate::send::direct::DirectConfig,
) -> Result<Arc<ClientSettings>, SendError> {
    let s = &campaign.smtp;
    let mode = match cfg.tls {
        crate::send::direct::DirectTls::Opportunistic => TlsMode::Opportunistic,
        crate::send::direct::DirectTls::Required => TlsMode::StartTls,
        crate::send::direct::DirectTls::None => TlsMode::None,
    };
    let mut b = ClientSettings::builder(s.helo.clone())
        .tls(mode, "localhost")
        .connect_timeout(s.connect_timeout)
        .command_timeout(s.command_timeout)
        .data_timeout(s.data_timeout)
        .pipelining(s.pipelining);
    if let Some(ca) = &s.ca_file {
        b = b.ca_file(ca.clone());
    }
    b.build().map_err(|source| SendError::Client {
        node: "direct".into(),
        source,
    })
}

async fn start_embedded() -> Result<ReceiverHandle, SendError> {
    Receiver::start(ReceiverOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        pipelining: true,
        // The demo's node answers scripted recipients (`tempfail+`, …) as it always has.
        script: Some(Script::default()),
        ..ReceiverOptions::default()
    })
    .await
    .map_err(SendError::Receiver)
}

/// SMTP client settings of one node; the password comes from the environment here and only here.
pub fn client_settings(
    campaign: &Campaign,
    n: &crate::campaign::Node,
) -> Result<Arc<ClientSettings>, SendError> {
    let s = &campaign.smtp;
    let mode = match n.tls {
        TlsSetting::None => TlsMode::None,
        TlsSetting::Starttls => TlsMode::StartTls,
        TlsSetting::Tls => TlsMode::Tls,
    };
    let mut b = ClientSettings::builder(s.helo.clone())
        .tls(mode, n.tls_server_name.clone())
        .connect_timeout(s.connect_timeout)
        .command_timeout(s.command_timeout)
        .data_timeout(s.data_timeout)
        .pipelining(s.pipelining);
    if let Some(ca) = &s.ca_file {
        b = b.ca_file(ca.clone());
    }
    if let Some(auth) = &n.auth {
        let password =
            std::env::var(&auth.password_env).map_err(|_| SendError::MissingPassword {
                node: n.name.clone(),
                var: auth.password_env.clone(),
            })?;
        b = b.auth(Credentials::new(auth.user.clone(), password));
    }
    b.build().map_err(|source| SendError::Client {
        node: n.name.clone(),
        source,
    })
}

/// `--to ADDRESS`: renders the first accepted row and sends it to one test address through the
/// first primary node (the embedded receiver included), reporting the reply.
pub fn send_one(
    campaign: &Campaign,
    mut source: Source,
    renderer: Renderer,
    to: &str,
) -> Result<String, SendError> {
    let recipient = source
        .next_recipient()?
        .ok_or_else(|| SendError::To("the list has no valid row".into()))?;
    let mut msg = renderer
        .render(recipient, crate::clock::unix_now())
        .map_err(|e| SendError::To(e.to_string()))?;
    msg.rcpt = to.to_string();
    let node = campaign
        .nodes
        .iter()
        .find(|n| !n.fallback)
        .ok_or_else(|| SendError::To("no primary node".into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SendError::Runtime)?;
    runtime.block_on(async {
        let mut receiver = None;
        let addr = match &node.address {
            NodeAddress::Embedded => {
                let r = start_embedded().await?;
                let a = r.addr();
                receiver = Some(r);
                a
            }
            NodeAddress::Remote { host, port } => {
                let dns = shared_resolver(campaign, false)?;
                resolve(dns.as_deref(), &node.name, host, *port).await?
            }
        };
        let settings = client_settings(campaign, node)?;
        let client_err = |source| SendError::Client {
            node: node.name.clone(),
            source,
        };
        let mut conn = Connection::connect(addr, settings)
            .await
            .map_err(client_err)?;
        let d = conn
            .send(&msg.mail_from, &msg.rcpt, &msg.bytes)
            .await
            .map_err(client_err)?;
        conn.quit().await;
        if let Some(r) = receiver {
            r.shutdown().await;
        }
        Ok(format!(
            "row {} sent to {} via {}: {} {}",
            msg.row, msg.rcpt, node.name, d.reply.code, d.reply.text
        ))
    })
}
