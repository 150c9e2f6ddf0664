//! The in-process SMTP receiver: the server side of `smtp`.
//!
//! Three users: the demo's embedded node (`send` starts one per `embedded = true` node, so the
//! demo runs with no mail server installed), `blast sink` (the bounce domain's MX, through a
//! [`ReceiverPolicy`]) and the tests, which need a server whose answers they can script.
//!
//! The SMTP dialogue lives in `protocol`, a state machine with no I/O (bytes in, replies out),
//! with the DATA body scanner; this file holds the options, the listener and the socket loop
//! around it, which stays dumb. The test behaviours live apart, in `script`: a [`Script`] in
//! [`ReceiverOptions::script`] turns on the scripted local-part prefixes (`tempfail+`,
//! `permfail+`, `datatemp+`, `datafail+`, `drop+`, `dropfirst+`, `slow+`), `reply_all`, the
//! tarpit and trickled replies. The
//! default is none, which is what the sink runs with; tests and the demo's embedded node opt in
//! ([`ReceiverOptions::scripted`]).
//!
//! What keeps a client from holding a session — absolute command-line, session and DATA time
//! limits, a tighter limit while every connection slot is taken, the per-address connection cap
//! — is in `limits`; the cap on errors in a row is the protocol's (`max_errors`).
//!
//! It is built for loopback throughput: one read buffer per session, every
//! complete pipelined command parsed before replying, all replies for a
//! batch sent in one write, and no allocation per line.
//!
//! It uses nothing else of the crate (tokio and rustls only), not even the client beside it.

#[doc(hidden)]
pub mod fuzz;
mod limits;
mod protocol;
mod script;

pub use script::Script;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use limits::{Clock, PerIp};
use protocol::{Phase, Protocol, Step};

const READ_BUF: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the parting 421 of a session cut off at a limit may take to write.
const GOODBYE: Duration = Duration::from_secs(1);
const HOSTNAME: &str = "localhost";

/// How the receiver behaves.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// Usually `127.0.0.1:0`; the bound address is [`ReceiverHandle::addr`].
    pub listen: SocketAddr,
    /// Advertise PIPELINING.
    pub pipelining: bool,
    /// Keep up to N received messages (one per recipient) for inspection;
    /// 0 keeps only the counters.
    pub keep_messages: usize,
    /// Advertised as SIZE; larger messages get 552. Also bounds memory.
    pub max_message_size: usize,
    /// Offer STARTTLS with this config.
    pub tls: Option<Arc<ServerConfig>>,
    /// Who may receive mail and what happens to it (the bounce sink). With a policy RCPT is
    /// the policy's (a [`Script`]'s local-part prefixes are not looked at), VRFY is disabled
    /// and every accepted message goes to [`ReceiverPolicy::message`].
    pub policy: Option<Arc<dyn ReceiverPolicy>>,
    /// Sessions served at once; further clients wait in the listen backlog (the permit is
    /// taken before `accept`). None: unbounded.
    pub max_connections: Option<usize>,
    /// Sessions at once from one client address (IPv6: one /64); one more is answered `421`
    /// and closed at once. None: no cap.
    pub max_connections_per_ip: Option<usize>,
    /// Longest time from the previous reply (or the greeting) to the end of the next command
    /// line, however the client trickles it in.
    pub command_timeout: Duration,
    /// Longest time from a command line's first byte to its end.
    pub line_timeout: Duration,
    /// While every `max_connections` slot is taken: the longest time from the previous reply to
    /// the end of the next command line, and inside DATA the longest time to receive 1 KB more
    /// of the message, so that idle and trickling sessions make room for the clients waiting
    /// in the backlog. None: no such mode.
    pub busy_timeout: Option<Duration>,
    /// Longest session, from the accept; a DATA phase under way at the limit may finish (it has
    /// `data_timeout`), then `421`. None: unbounded.
    pub session_timeout: Option<Duration>,
    /// Longest time from the 354 to the final dot, however the client trickles it in.
    pub data_timeout: Duration,
    /// 5xx replies to commands in a row that a session may collect; one more is answered `421`
    /// and the session closed. None: no limit.
    pub max_errors: Option<u32>,
    /// Test behaviours (scripted recipients, `reply_all`, tarpit; see [`Script`]). `None`, the
    /// default, for a real receiver such as the sink's.
    pub script: Option<Script>,
}

/// The bounce sink's hooks into the SMTP dialogue. Called on the session's task: keep them
/// quick (hand work to another thread).
pub trait ReceiverPolicy: std::fmt::Debug + Send + Sync {
    /// RCPT TO: `Ok` accepts; `Err(reply line without CRLF)` refuses.
    fn rcpt(&self, address: &str) -> Result<(), String>;
    /// A message accepted for `rcpts`; `Err(reply)` turns the final 250 into that reply
    /// (e.g. `451 4.3.0 busy` when the worker queue is full).
    fn message(&self, mail_from: &str, rcpts: &[String], data: Vec<u8>) -> Result<(), String>;
}

impl Default for ReceiverOptions {
    fn default() -> ReceiverOptions {
        ReceiverOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pipelining: true,
            keep_messages: 0,
            max_message_size: 10 * 1024 * 1024,
            tls: None,
            policy: None,
            max_connections: None,
            max_connections_per_ip: None,
            command_timeout: IDLE_TIMEOUT,
            line_timeout: Duration::from_secs(30),
            busy_timeout: None,
            session_timeout: None,
            data_timeout: Duration::from_secs(600),
            max_errors: Some(10),
            script: None,
        }
    }
}

impl ReceiverOptions {
    /// The defaults plus a default [`Script`]: what tests and the demo's embedded node start
    /// from.
    pub fn scripted() -> ReceiverOptions {
        ReceiverOptions {
            script: Some(Script::default()),
            ..ReceiverOptions::default()
        }
    }
}

/// Counter snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// MAIL commands accepted (transactions started).
    pub transactions: u64,
    /// Messages accepted after the final ".".
    pub accepted: u64,
    /// Rejections: size, the policy's refusals and a [`Script`]'s (RCPT, final dot,
    /// `reply_all`).
    pub rejected: u64,
    /// Body bytes (after dot-unstuffing) of accepted messages.
    pub bytes: u64,
}

/// One accepted message as seen by one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub mail_from: String,
    pub rcpt: String,
    /// The message as the client meant it: unstuffed, ending in CRLF.
    pub data: Vec<u8>,
}

/// Entry point; see [`Receiver::start`].
pub struct Receiver;

impl Receiver {
    /// Binds and starts accepting in a background task.
    pub async fn start(opts: ReceiverOptions) -> io::Result<ReceiverHandle> {
        let listener = TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(opts));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        Ok(ReceiverHandle {
            addr,
            shared,
            shutdown: tx,
            task,
        })
    }
}

/// A running receiver. Dropping it also stops it, without waiting.
pub struct ReceiverHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ReceiverHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> ReceiverStats {
        let c = &self.shared.counters;
        ReceiverStats {
            connections: c.connections.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    /// Messages kept so far (at most `keep_messages`).
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.messages().clone()
    }

    /// Stops accepting, closes every session and waits for them to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    transactions: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    bytes: AtomicU64,
}

struct Shared {
    opts: ReceiverOptions,
    counters: Counters,
    messages: Mutex<Vec<ReceivedMessage>>,
    next_id: AtomicU64,
    /// EHLO replies are identical for every session: built once.
    ehlo: Vec<u8>,
    ehlo_with_starttls: Vec<u8>,
    /// Every `max_connections` slot is taken (set by the accept loop; see `busy_timeout`).
    busy: watch::Sender<bool>,
    per_ip: Arc<PerIp>,
    /// `dropfirst+` addresses whose first transaction was dropped (scripted receivers only).
    dropped: Mutex<HashSet<String>>,
}

impl Shared {
    fn new(opts: ReceiverOptions) -> Shared {
        let size = format!("SIZE {}", opts.max_message_size);
        let mut caps = vec![HOSTNAME];
        if opts.pipelining {
            caps.push("PIPELINING");
        }
        caps.extend([size.as_str(), "8BITMIME", "ENHANCEDSTATUSCODES"]);
        let ehlo = multiline(250, &caps);
        caps.push("STARTTLS");
        let ehlo_with_starttls = multiline(250, &caps);
        Shared {
            per_ip: Arc::new(PerIp::new(opts.max_connections_per_ip)),
            opts,
            counters: Counters::default(),
            messages: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            ehlo,
            ehlo_with_starttls,
            busy: watch::Sender::new(false),
            dropped: Mutex::new(HashSet::new()),
        }
    }

    /// A poisoned lock only means a test panicked mid-push; the data is fine.
    fn messages(&self) -> MutexGuard<'_, Vec<ReceivedMessage>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        counter(&self.counters).fetch_add(n, Ordering::Relaxed);
    }

    /// `dropfirst+`: true the first time one of `rcpts` (case-insensitive) ends a transaction.
    fn first_drop(&self, rcpts: &[String]) -> bool {
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = false;
        for r in rcpts {
            first |= dropped.insert(r.to_ascii_lowercase());
        }
        first
    }

    /// The test behaviours, if this receiver runs with any.
    fn script(&self) -> Option<&Script> {
        self.opts.script.as_ref()
    }
}

fn multiline(code: u16, lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.extend_from_slice(format!("{code}{sep}{line}\r\n").as_bytes());
    }
    out
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let limit = shared
        .opts
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
    loop {
        // The permit comes before accept: over the limit, clients wait in the backlog.
        let permit = match &limit {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    // Every slot taken: sessions switch to `busy_timeout` until one frees.
                    shared
                        .busy
                        .send_if_modified(|b| !std::mem::replace(b, true));
                    let p = tokio::select! {
                        _ = shutdown.changed() => break,
                        p = sem.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    };
                    shared
                        .busy
                        .send_if_modified(|b| std::mem::replace(b, false));
                    Some(p)
                }
            },
            None => None,
        };
        tokio::select! {
            // A send or a dropped handle both end the loop.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    shared.count(|c| &c.connections, 1);
                    match shared.per_ip.admit(peer.ip()) {
                        Some(ip_slot) => {
                            let shared = shared.clone();
                            sessions.spawn(async move {
                                serve(tcp, peer, shared).await;
                                drop((ip_slot, permit));
                            });
                        }
                        None => {
                            // At its address's cap: refused at once, the slot is free again.
                            let _ = tcp.try_write(
                                b"421 4.7.0 Too many connections from your address, try again later\r\n",
                            );
                            tracing::debug!(%peer, "receiver: per-address connection cap reached");
                        }
                    }
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "receiver accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
        while sessions.try_join_next().is_some() {}
    }
    drop(listener);
    sessions.shutdown().await;
}

async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if shared.script().is_some_and(|s| s.tarpit) {
        // Hold the socket open and silent until shutdown aborts us.
        let _held = tcp;
        std::future::pending::<()>().await;
        return;
    }
    let _ = tcp.set_nodelay(true);
    if let Err(e) = run_session(Stream::Plain(tcp), shared).await {
        tracing::debug!(%peer, error = %e, "receiver session ended");
    }
}

/// The socket loop: feed input to the protocol, write replies when the
/// input is drained, and carry out what the protocol asks for. Every wait, for input or for a
/// write, ends at the session's [`Clock`] deadline.
async fn run_session(stream: Stream, shared: Arc<Shared>) -> io::Result<()> {
    let tls = shared.opts.tls.clone();
    // Only a script marks a transaction slow (`slow+`).
    let slow_delay = shared.script().map_or(Duration::ZERO, |s| s.slow_delay);
    let trickle = shared.script().and_then(|s| s.trickle);
    let mut s = Session {
        clock: Clock::new(&shared.opts, Instant::now()),
        busy: shared.busy.subscribe(),
        stream,
        buf: vec![0u8; READ_BUF],
        start: 0,
        end: 0,
        received: 0,
    };
    let mut proto = Protocol::new(shared, tls.is_some());
    proto.greet();
    loop {
        let (used, step) = proto.feed(&s.buf[s.start..s.end]);
        s.start += used;
        let partial = s.start < s.end || proto.mid_line();
        let in_data = proto.phase == Phase::Data;
        let lines = proto.lines();
        s.clock
            .update(Instant::now(), in_data, partial, lines, s.received);
        match step {
            Step::NeedInput => {
                if !proto.out.is_empty() {
                    match trickle.filter(|_| proto.mailed()) {
                        Some(gap) => s.trickle(&proto.out, gap).await?,
                        None => s.write(&proto.out).await?,
                    }
                    proto.out.clear();
                }
                if !s.read().await? {
                    return Ok(());
                }
            }
            Step::Slow => {
                s.write(&proto.out).await?;
                proto.out.clear();
                tokio::time::sleep(slow_delay).await;
                proto.finish_data();
            }
            Step::Close => {
                s.write(&proto.out).await?;
                let (deadline, _) = s.deadline();
                return match timeout_at(deadline, s.stream.shutdown()).await {
                    Ok(r) => r,
                    Err(_) => Ok(()),
                };
            }
            Step::Drop => return Ok(()),
            Step::StartTls => {
                s.write(&proto.out).await?;
                proto.out.clear();
                // Plaintext pipelined behind STARTTLS must not be treated
                // as if it arrived over TLS.
                if s.start != s.end {
                    return Ok(());
                }
                let (Stream::Plain(tcp), Some(config)) = (s.stream, tls.clone()) else {
                    return Ok(());
                };
                let (deadline, _) = s.clock.deadline(Instant::now(), false);
                let accept = TlsAcceptor::from(config).accept(tcp);
                let tls = timeout_at(deadline, accept)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))??;
                s.stream = Stream::Tls(Box::new(tls));
                proto.tls_started();
            }
        }
    }
}

/// One session's socket, read buffer and limits.
struct Session {
    clock: Clock,
    busy: watch::Receiver<bool>,
    stream: Stream,
    buf: Vec<u8>,
    /// Unconsumed input is `buf[start..end]`.
    start: usize,
    end: usize,
    /// Bytes read in the session (for the busy DATA rate, see `limits`).
    received: u64,
}

/// What ended a wait for input.
enum Wake {
    Read(io::Result<usize>),
    Limit,
    BusyChanged,
}

impl Session {
    fn deadline(&mut self) -> (Instant, limits::Cut) {
        let busy = *self.busy.borrow_and_update();
        self.clock.deadline(Instant::now(), busy)
    }

    /// Writes replies, by the current deadline (a client that does not read cannot hold the
    /// session either).
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (deadline, cut) = self.deadline();
        match timeout_at(deadline, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client not reading; cut at the {cut:?} limit"),
            )),
        }
    }

    /// Writes replies a byte at a time, `gap` apart ([`Script::trickle`]).
    async fn trickle(&mut self, bytes: &[u8], gap: Duration) -> io::Result<()> {
        for b in bytes {
            self.write(std::slice::from_ref(b)).await?;
            tokio::time::sleep(gap).await;
        }
        Ok(())
    }

    /// Reads more input after the unconsumed rest. False: the client closed, or a limit ended
    /// the session (after a `421` saying which).
    async fn read(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            let (deadline, cut) = self.deadline();
            let wake = tokio::select! {
                n = self.stream.read(&mut self.buf[self.end..]) => Wake::Read(n),
                _ = tokio::time::sleep_until(deadline) => Wake::Limit,
                Ok(()) = self.busy.changed() => Wake::BusyChanged,
            };
            match wake {
                Wake::Read(n) => {
                    let n = n?;
                    self.end += n;
                    self.received += n as u64;
                    return Ok(n > 0);
                }
                Wake::Limit => {
                    tracing::debug!(?cut, "receiver: session cut off at a time limit");
                    let _ = timeout(GOODBYE, self.stream.write_all(cut.reply())).await;
                    return Ok(false);
                }
                // Recompute the deadline: busy tightens it, idle loosens it.
                Wake::BusyChanged => {}
            }
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}
