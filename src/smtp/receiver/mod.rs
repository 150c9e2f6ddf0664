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
//! `permfail+`, `datatemp+`, `datafail+`, `drop+`, `slow+`), `reply_all` and the tarpit. The
//! default is none, which is what the sink runs with; tests and the demo's embedded node opt in
//! ([`ReceiverOptions::scripted`]).
//!
//! It is built for loopback throughput: one read buffer per session, every
//! complete pipelined command parsed before replying, all replies for a
//! batch sent in one write, and no allocation per line.
//!
//! It uses nothing else of the crate (tokio and rustls only), not even the client beside it.

mod protocol;
mod script;

pub use script::Script;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use protocol::{Phase, Protocol, Step};

const READ_BUF: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
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
    /// Longest wait for a command line (and the greeting's reply).
    pub command_timeout: Duration,
    /// Longest time from the 354 to the final dot, however the client trickles it in.
    pub data_timeout: Duration,
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
            command_timeout: IDLE_TIMEOUT,
            data_timeout: Duration::from_secs(600),
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
            opts,
            counters: Counters::default(),
            messages: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            ehlo,
            ehlo_with_starttls,
        }
    }

    /// A poisoned lock only means a test panicked mid-push; the data is fine.
    fn messages(&self) -> MutexGuard<'_, Vec<ReceivedMessage>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        counter(&self.counters).fetch_add(n, Ordering::Relaxed);
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
            Some(sem) => tokio::select! {
                _ = shutdown.changed() => break,
                p = sem.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
            },
            None => None,
        };
        tokio::select! {
            // A send or a dropped handle both end the loop.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    shared.count(|c| &c.connections, 1);
                    let shared = shared.clone();
                    sessions.spawn(async move {
                        serve(tcp, peer, shared).await;
                        drop(permit);
                    });
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
/// input is drained, and carry out what the protocol asks for.
async fn run_session(mut stream: Stream, shared: Arc<Shared>) -> io::Result<()> {
    let tls = shared.opts.tls.clone();
    // Only a script marks a transaction slow (`slow+`).
    let slow_delay = shared.script().map_or(Duration::ZERO, |s| s.slow_delay);
    let (command_timeout, data_timeout) = (shared.opts.command_timeout, shared.opts.data_timeout);
    let mut data_deadline: Option<tokio::time::Instant> = None;
    let mut proto = Protocol::new(shared, tls.is_some());
    let mut buf = vec![0u8; READ_BUF];
    let (mut start, mut end) = (0, 0);
    proto.greet();
    loop {
        let (used, step) = proto.feed(&buf[start..end]);
        start += used;
        match step {
            Step::NeedInput => {
                if !proto.out.is_empty() {
                    stream.write_all(&proto.out).await?;
                    proto.out.clear();
                }
                if start == end {
                    (start, end) = (0, 0);
                } else if end == buf.len() {
                    buf.copy_within(start..end, 0);
                    (start, end) = (0, end - start);
                }
                // In DATA the whole body must arrive by a deadline, so a client trickling
                // bytes cannot hold the session forever.
                let wait = if proto.phase == Phase::Data {
                    let deadline = *data_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + data_timeout);
                    deadline.saturating_duration_since(tokio::time::Instant::now())
                } else {
                    data_deadline = None;
                    command_timeout
                };
                let n = match timeout(wait, stream.read(&mut buf[end..])).await {
                    Ok(n) => n?,
                    Err(_) => {
                        stream
                            .write_all(b"421 4.4.2 Timeout, closing connection\r\n")
                            .await?;
                        return Ok(());
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                end += n;
            }
            Step::Slow => {
                stream.write_all(&proto.out).await?;
                proto.out.clear();
                tokio::time::sleep(slow_delay).await;
                proto.finish_data();
            }
            Step::Close => {
                stream.write_all(&proto.out).await?;
                return stream.shutdown().await;
            }
            Step::Drop => return Ok(()),
            Step::StartTls => {
                stream.write_all(&proto.out).await?;
                proto.out.clear();
                // Plaintext pipelined behind STARTTLS must not be treated
                // as if it arrived over TLS.
                if start != end {
                    return Ok(());
                }
                let (Stream::Plain(tcp), Some(config)) = (stream, tls.clone()) else {
                    return Ok(());
                };
                stream = Stream::Tls(Box::new(TlsAcceptor::from(config).accept(tcp).await?));
                proto.tls_started();
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
