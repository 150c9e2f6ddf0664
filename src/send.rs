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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::campaign::{Campaign, NodeAddress, TlsSetting};
use crate::dispatch::{Dispatcher, End};
use crate::log::DeliveryLog;
use crate::node::Node;
use crate::progress::{Counters, Mode, Progress, get, inc};
use crate::receiver::{Receiver, ReceiverHandle, ReceiverOptions};
use crate::render::{Message, Renderer};
use crate::smtp::{ClientSettings, Connection, Credentials, TlsMode};
use crate::source::{Recipient, Source, SourceStats};

/// Recipients per hand-over from the reader to the render threads.
const BATCH: usize = 64;

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
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--to: {0}")]
    To(String),
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
}

/// Which signal stopped the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

#[derive(Debug, Clone)]
pub struct NodeReport {
    pub name: String,
    pub accepted: u64,
    pub deferred: u64,
    pub failed: u64,
    pub errors: u64,
}

/// What a run did, for the summary and the exit code.
#[derive(Debug, Clone)]
pub struct Report {
    pub end: End,
    pub signal: Option<Signal>,
    pub dry_run: bool,
    pub source: SourceStats,
    pub rendered: u64,
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
    pub peak_rate: f64,
    pub log_lines: u64,
    pub log_waits: u64,
    /// Messages the embedded receiver accepted (demo campaigns).
    pub embedded_received: Option<u64>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        use crate::cli::exit;
        match (self.signal, self.end) {
            (Some(Signal::Interrupt), _) => exit::SIGINT,
            (Some(Signal::Terminate), _) => exit::SIGTERM,
            (None, End::AllNodesDown) => exit::TEMPFAIL,
            _ if self.failed + self.expired + self.render_errors > 0 => exit::SOME_FAILED,
            _ => exit::OK,
        }
    }

    /// The summary printed at the end of a run.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let secs = self.duration.as_secs_f64().max(0.001);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "rows       {} read, {} rejected (see the rejects file), {} rendered{}",
            self.source.rows,
            self.source.rejected,
            self.rendered,
            if self.render_errors > 0 {
                format!(", {} render errors", self.render_errors)
            } else {
                String::new()
            }
        );
        for (kind, n) in self.source.rejected_by_kind().filter(|(_, n)| *n > 0) {
            let _ = writeln!(s, "  rejected {n:>9}  {kind}");
        }
        if self.dry_run {
            let _ = writeln!(s, "dry run    nothing sent");
        } else {
            let _ = writeln!(
                s,
                "outcomes   {} accepted, {} failed, {} expired, {} unfinished",
                self.accepted, self.failed, self.expired, self.unfinished
            );
            let _ = writeln!(
                s,
                "retries    {} deferrals (4xx), {} re-sent after lost connections, {} possibly duplicated",
                self.deferrals, self.requeues, self.possibly_duplicated
            );
            for n in &self.nodes {
                let _ = writeln!(
                    s,
                    "node       {:<16} {} accepted, {} deferred, {} failed, {} connection errors",
                    n.name, n.accepted, n.deferred, n.failed, n.errors
                );
            }
        }
        let done = if self.dry_run {
            self.rendered
        } else {
            self.accepted + self.failed + self.expired
        };
        let _ = writeln!(
            s,
            "time       {:.1} s, {:.0} msg/s average, {:.0} msg/s peak",
            secs,
            done as f64 / secs,
            self.peak_rate
        );
        if !self.dry_run {
            let _ = writeln!(
                s,
                "log        {} lines, {} waits for the writer",
                self.log_lines, self.log_waits
            );
        }
        if let Some(n) = self.embedded_received {
            let _ = writeln!(s, "embedded   receiver accepted {n} messages");
        }
        let why = match (self.signal, self.end) {
            (Some(Signal::Interrupt), _) => "interrupted (SIGINT)",
            (Some(Signal::Terminate), _) => "terminated (SIGTERM)",
            (None, End::AllNodesDown) => "stopped: no node reachable",
            (None, End::Stopped) => "stopped",
            (None, End::Done) => "done",
        };
        let _ = write!(s, "result     {why}, exit code {}", self.exit_code());
        s
    }
}

/// Runs a campaign to the end (or to a stop) and reports.
pub fn run(
    campaign: &Campaign,
    source: Source,
    renderer: Renderer,
    opts: &SendOptions,
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
    runtime.block_on(run_async(campaign, source, renderer, opts))
}

async fn run_async(
    campaign: &Campaign,
    source: Source,
    renderer: Renderer,
    opts: &SendOptions,
) -> Result<Report, SendError> {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let total = estimate_rows(&campaign.recipients.path, opts.limit);

    // The pool (or nothing, for a dry run).
    let mut receivers: Vec<ReceiverHandle> = Vec::new();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    if !opts.dry_run {
        for n in &campaign.nodes {
            let addr = match &n.address {
                NodeAddress::Embedded => {
                    let r = start_embedded().await?;
                    let addr = r.addr();
                    receivers.push(r);
                    addr
                }
                NodeAddress::Remote { host, port } => resolve(&n.name, host, *port).await?,
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
    }

    let log = if opts.dry_run {
        None
    } else {
        Some(DeliveryLog::open(&campaign.output.delivery_log, 65_536)?)
    };

    // Reader and render threads.
    let stop_reading = Arc::new(AtomicBool::new(false));
    let (msg_tx, msg_rx) = async_channel::bounded::<Message>(campaign.limits.queue_depth);
    let (batch_tx, batch_rx) =
        async_channel::bounded::<Vec<Recipient>>(campaign.limits.render_threads * 2);
    let reader = {
        let stop = stop_reading.clone();
        let limit = opts.limit;
        std::thread::Builder::new()
            .name("blast-reader".into())
            .spawn(move || read_loop(source, batch_tx, stop, limit))
            .map_err(SendError::Runtime)?
    };
    let renderer = Arc::new(renderer);
    let renderers: Vec<_> = (0..campaign.limits.render_threads)
        .map(|i| {
            let (r, rx, tx, c) = (
                renderer.clone(),
                batch_rx.clone(),
                msg_tx.clone(),
                counters.clone(),
            );
            std::thread::Builder::new()
                .name(format!("blast-render-{i}"))
                .spawn(move || render_loop(&r, rx, tx, &c))
                .map_err(SendError::Runtime)
        })
        .collect::<Result<_, _>>()?;
    drop((msg_tx, batch_rx));

    let node_counters = nodes
        .iter()
        .map(|n| (n.name.to_string(), n.counters.clone()))
        .collect();
    let progress = Progress::start(opts.mode, counters.clone(), node_counters, total);

    // Signals: the first asks for a clean stop, the second cuts the grace period short.
    let signal = Arc::new(std::sync::Mutex::new(None::<Signal>));
    let hurry = Arc::new(tokio::sync::Notify::new());

    let (end, log_stats) = if let Some(log) = log {
        let (dispatcher, shared) = Dispatcher::new(
            nodes.clone(),
            campaign.nodes.iter().map(|n| n.rate).collect(),
            campaign.limits.rate,
            campaign.retry.clone(),
            counters.clone(),
            log.sender(),
            campaign.limits.queue_depth,
        );
        let tasks: Vec<_> = nodes.iter().flat_map(|n| n.spawn(&shared)).collect();
        let watcher = {
            let (shared, stop, signal, hurry) = (
                shared.clone(),
                stop_reading.clone(),
                signal.clone(),
                hurry.clone(),
            );
            tokio::spawn(async move {
                let first = wait_signal().await;
                *signal.lock().expect("not poisoned") = Some(first);
                tracing::warn!("{first:?}: stopping; running transactions may finish");
                stop.store(true, Ordering::Relaxed);
                shared.request_stop();
                let _ = wait_signal().await;
                hurry.notify_one();
            })
        };
        let end = dispatcher.run(msg_rx.clone()).await;
        // Let running transactions finish (bounded by the grace period after a stop).
        let all = futures_join(tasks);
        if end == End::Done {
            all.await;
        } else {
            tokio::select! {
                _ = all => {}
                _ = tokio::time::sleep(opts.grace) => tracing::warn!("grace period over; closing connections"),
                _ = hurry.notified() => tracing::warn!("second signal; closing connections now"),
            }
        }
        watcher.abort();
        counters
            .waiting_retry
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let unfinished = shared.outstanding();
        drop(shared);
        stop_reading.store(true, Ordering::Relaxed);
        let waits = log.sender().waits();
        let lines = log.close()?;
        (end, (lines, waits, unfinished))
    } else {
        // Dry run: drain the queue.
        while msg_rx.recv().await.is_ok() {}
        (End::Done, (0, 0, 0))
    };
    msg_rx.close();

    let peak_rate = progress.finish().await;
    let source_stats = tokio::task::spawn_blocking(move || {
        for r in renderers {
            let _ = r.join();
        }
        reader.join()
    })
    .await
    .expect("join task")
    .expect("reader thread")?;

    let mut embedded_received = None;
    for r in receivers {
        *embedded_received.get_or_insert(0) += r.stats().accepted;
        r.shutdown().await;
    }

    let signal = *signal.lock().expect("not poisoned");
    Ok(Report {
        end,
        signal,
        dry_run: opts.dry_run,
        source: source_stats,
        rendered: get(&counters.rendered),
        render_errors: get(&counters.render_errors),
        accepted: get(&counters.accepted),
        failed: get(&counters.failed),
        expired: get(&counters.expired),
        deferrals: get(&counters.deferrals),
        requeues: get(&counters.requeues),
        possibly_duplicated: get(&counters.possibly_duplicated),
        unfinished: log_stats.2,
        nodes: nodes
            .iter()
            .map(|n| NodeReport {
                name: n.name.to_string(),
                accepted: get(&n.counters.accepted),
                deferred: get(&n.counters.deferred),
                failed: get(&n.counters.failed),
                errors: get(&n.counters.errors),
            })
            .collect(),
        duration: started.elapsed(),
        peak_rate,
        log_lines: log_stats.0,
        log_waits: log_stats.1,
        embedded_received,
    })
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn wait_signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return Signal::Interrupt;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Signal::Interrupt,
            _ = term.recv() => Signal::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}

fn read_loop(
    mut source: Source,
    tx: async_channel::Sender<Vec<Recipient>>,
    stop: Arc<AtomicBool>,
    limit: Option<u64>,
) -> Result<SourceStats, crate::source::SourceError> {
    let mut batch = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        if limit.is_some_and(|l| source.stats().rows >= l) {
            break;
        }
        match source.next_recipient()? {
            Some(r) => {
                batch.push(r);
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send_blocking(full).is_err() {
                        break;
                    }
                }
            }
            None => break,
        }
    }
    if !batch.is_empty() && !stop.load(Ordering::Relaxed) {
        let _ = tx.send_blocking(batch);
    }
    source.finish()
}

fn render_loop(
    renderer: &Renderer,
    rx: async_channel::Receiver<Vec<Recipient>>,
    tx: async_channel::Sender<Message>,
    counters: &Counters,
) {
    while let Ok(batch) = rx.recv_blocking() {
        let now = crate::cli::unix_now();
        for r in batch {
            match renderer.render(r, now) {
                Ok(m) => {
                    inc(&counters.rendered);
                    if tx.send_blocking(m).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    inc(&counters.render_errors);
                    tracing::warn!("{e}");
                }
            }
        }
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

async fn resolve(node: &str, host: &str, port: u16) -> Result<SocketAddr, SendError> {
    let err = |source| SendError::Resolve {
        node: node.to_string(),
        host: host.to_string(),
        port,
        source,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(err)?
        .next()
        .ok_or_else(|| err(std::io::Error::other("no address")))
}

async fn start_embedded() -> Result<ReceiverHandle, SendError> {
    Receiver::start(ReceiverOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        pipelining: true,
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
        .render(recipient, crate::cli::unix_now())
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
            NodeAddress::Remote { host, port } => resolve(&node.name, host, *port).await?,
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
