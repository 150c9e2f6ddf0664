//! One sender node (a relay MTA): its queue, its health and its connection tasks.
//!
//! Each node has a small bounded queue (two jobs per connection) that the dispatcher fills and
//! `max_connections` tasks drain. The queue is deliberately short: a slow node fills it fast
//! and the dispatcher sends elsewhere, so slowness is routed around without any timing logic.
//!
//! Health is a circuit breaker. A failed connect or [`DEFERRALS_TO_TRIP`] deferrals in a row
//! mark the node down: the dispatcher stops choosing it, the jobs in its queue go back to the
//! dispatcher at once, and one task probes the node with exponential backoff (1 s up to 60 s).
//! A successful connect marks it up again. Connections carry `messages_per_connection`
//! transactions, then QUIT; an idle connection is closed after [`IDLE`].
//!
//! Every change of health (down, with its reason; up again) is recorded as a [`HealthEvent`]
//! here, in [`Node::trip`] and [`Node::mark_up`] — the only two places that change it — for the
//! summary and the journal (`blast status`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::outcome::{HEALTH_EVENTS_KEPT, HealthEvent, HealthHistory, Status, Verdict, classify};
use crate::send::dispatch::{Job, Shared};
use crate::send::progress::{NodeCounters, dec, inc};
use crate::send::retry::REQUEUES_PER_ATTEMPT;
use crate::smtp::{ClientSettings, Connection};

/// Consecutive deferrals (4xx) that take a node out of rotation for a while.
pub const DEFERRALS_TO_TRIP: u32 = 20;
/// Consecutive lost connections or timeouts that do the same (a tarpit, a dying node).
pub const ERRORS_TO_TRIP: u32 = 3;
/// Idle connections are closed after this long without work.
pub const IDLE: Duration = Duration::from_secs(5);
const PROBE_MIN: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(60);

/// A node of the pool at run time.
pub struct Node {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub fallback: bool,
    pub max_connections: u32,
    pub messages_per_connection: u32,
    pub settings: Arc<ClientSettings>,
    pub counters: Arc<NodeCounters>,
    pub queue_tx: async_channel::Sender<Job>,
    queue_rx: async_channel::Receiver<Job>,
    /// Deferrals in a row.
    deferral_streak: AtomicU32,
    /// Lost connections and timeouts in a row.
    error_streak: AtomicU32,
    /// How many times the node went down: a connection opened before the last time is not
    /// reused (it most likely died with the node, and would trip it again once it is back).
    outages: AtomicU64,
    /// Failed connects / trips in a row, for the probe backoff.
    failures: AtomicU32,
    /// One task at a time probes a down node.
    probing: AtomicBool,
    /// When a tripped node may be probed again.
    retry_at: Mutex<Instant>,
    /// Down/up events, see [`Node::health`].
    history: Mutex<HealthHistory>,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        addr: SocketAddr,
        weight: u32,
        fallback: bool,
        max_connections: u32,
        messages_per_connection: u32,
        settings: Arc<ClientSettings>,
    ) -> Node {
        let (queue_tx, queue_rx) = async_channel::bounded(2 * max_connections as usize);
        let counters = Arc::new(NodeCounters::default());
        counters.healthy.store(true, Ordering::Relaxed);
        Node {
            name: name.into(),
            addr,
            weight,
            fallback,
            max_connections,
            messages_per_connection,
            settings,
            counters,
            queue_tx,
            queue_rx,
            deferral_streak: AtomicU32::new(0),
            error_streak: AtomicU32::new(0),
            outages: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            retry_at: Mutex::new(Instant::now()),
            history: Mutex::new(HealthHistory::default()),
        }
    }

    /// The node's down/up events so far.
    pub fn health(&self) -> HealthHistory {
        self.history.lock().expect("not poisoned").clone()
    }

    /// Records a change of health (the caller changed `healthy`); a failed probe of a down
    /// node is counted on its down event instead.
    fn record(&self, shared: &Shared, up: bool, reason: &str) {
        let event = HealthEvent {
            time: SystemTime::now(),
            up,
            reason: reason.to_string(),
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            failed_probes: 0,
        };
        shared.outcomes.node_event(&self.name, &event);
        let mut h = self.history.lock().expect("not poisoned");
        if h.events.len() < HEALTH_EVENTS_KEPT {
            h.events.push(event);
        } else {
            h.dropped += 1;
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.counters.healthy.load(Ordering::Relaxed)
    }

    /// A connection was opened: the node is up. Returns the outage count the connection
    /// belongs to (see `outages`).
    fn connected(&self, shared: &Shared) -> u64 {
        self.mark_up(shared);
        inc(&self.counters.connections);
        self.outages.load(Ordering::Relaxed)
    }

    fn mark_up(&self, shared: &Shared) {
        self.failures.store(0, Ordering::Relaxed);
        self.deferral_streak.store(0, Ordering::Relaxed);
        self.error_streak.store(0, Ordering::Relaxed);
        if !self.counters.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(node = %self.name, "node is up");
            self.record(shared, true, "connected");
            shared.capacity.notify_one();
        }
    }

    /// Takes the node out of rotation and schedules the first probe. On a node that is down
    /// already (another connection's late failure) it changes nothing: only the probes push
    /// the next probe back, or a brief outage seen by 8 connections would wait out 60 s.
    fn trip(&self, shared: &Shared, why: &str) {
        if self.counters.healthy.swap(false, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            let wait = self.schedule_probe();
            tracing::warn!(node = %self.name, reason = why, retry_in = ?wait, "node is down");
            self.record(shared, false, why);
        }
        self.drain(shared);
        shared.capacity.notify_one();
    }

    /// The probe of a down node failed: back off further.
    fn probe_failed(&self, shared: &Shared) {
        self.schedule_probe();
        let mut h = self.history.lock().expect("not poisoned");
        if let Some(e) = h.events.last_mut().filter(|e| !e.up) {
            e.failed_probes += 1;
        }
        drop(h);
        self.drain(shared);
        shared.capacity.notify_one();
    }

    /// When the next probe may run: 1 s after the first failure, doubling up to 60 s.
    fn schedule_probe(&self) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
        let wait = (PROBE_MIN * (1 << n)).min(PROBE_MAX);
        *self.retry_at.lock().expect("not poisoned") = Instant::now() + wait;
        wait
    }

    /// Sends every job waiting in this node's queue back to the dispatcher.
    fn drain(&self, shared: &Shared) {
        while let Ok(job) = self.queue_rx.try_recv() {
            shared.redispatch(job);
        }
    }

    async fn connect(&self) -> Result<Connection, crate::smtp::SmtpError> {
        Connection::connect(self.addr, self.settings.clone()).await
    }

    /// Starts the node's connection tasks.
    pub fn spawn(self: &Arc<Self>, shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.max_connections)
            .map(|_| tokio::spawn(connection_loop(self.clone(), shared.clone())))
            .collect()
    }
}

/// One connection slot: connect, send jobs until the connection is used up, idle or broken,
/// QUIT, and again, until the node's queue closes or a stop is requested.
async fn connection_loop(node: Arc<Node>, shared: Arc<Shared>) {
    let mut conn: Option<Connection> = None;
    // `node.outages` when `conn` was opened.
    let mut opened_in = 0;
    loop {
        if shared.stopping() {
            break;
        }
        if !node.is_healthy() {
            node.drain(&shared);
            if node.queue_rx.is_closed() && node.queue_rx.is_empty() {
                break;
            }
            close(&node, conn.take()).await;
            if node.probing.swap(true, Ordering::Relaxed) {
                // Someone else probes; check again shortly.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let at = *node.retry_at.lock().expect("not poisoned");
            // Wait for the probe time, but not past the end of the run: the dispatcher closes
            // the queue when it is done or stopped, and a run must not wait out a probe backoff
            // (up to PROBE_MAX) for a node nobody needs any more.
            let closed = loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => break false,
                    job = node.queue_rx.recv() => match job {
                        // Placed just before the node went down: hand it back.
                        Ok(job) => shared.redispatch(job),
                        Err(_) => break true,
                    },
                }
            };
            if closed {
                node.probing.store(false, Ordering::Relaxed);
                break;
            }
            let probe = node.connect().await;
            node.probing.store(false, Ordering::Relaxed);
            match probe {
                Ok(c) => {
                    opened_in = node.connected(&shared);
                    conn = Some(c);
                }
                Err(e) => {
                    inc(&node.counters.errors);
                    tracing::debug!(node = %node.name, error = %e, "probe failed");
                    node.probe_failed(&shared);
                }
            }
            continue;
        }

        // Wait for work; with an open connection only for IDLE.
        let job = match &conn {
            None => match node.queue_rx.recv().await {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(_) => match tokio::time::timeout(IDLE, node.queue_rx.recv()).await {
                Ok(Ok(job)) => job,
                Ok(Err(_)) => break,
                Err(_) => {
                    close(&node, conn.take()).await;
                    continue;
                }
            },
        };
        shared.capacity.notify_one();
        // Journal: the attempt mark is committed before the relay can see the message.
        let mut job = job;
        if !shared.outcomes.mark_attempt(&mut job).await {
            shared.redispatch(job);
            continue;
        }
        // The recipient's max_age (from its first try) bounds its transaction too: a relay that
        // trickles its replies cannot hold it past its age.
        let now = Instant::now();
        let deadline = *job.first_attempt.get_or_insert(now) + shared.policy.max_age;
        if deadline <= now {
            shared.expire(job, &node.name);
            continue;
        }

        if conn.is_some() && opened_in != node.outages.load(Ordering::Relaxed) {
            // Opened before the node's last outage: most likely dead, do not QUIT it.
            lost(&node, conn.take());
        }
        if conn.is_none() {
            match node.connect().await {
                Ok(c) => {
                    opened_in = node.connected(&shared);
                    conn = Some(c);
                }
                Err(e) => {
                    inc(&node.counters.errors);
                    tracing::debug!(node = %node.name, error = %e, "connect failed");
                    shared.redispatch(job);
                    node.trip(&shared, &e.to_string());
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let (usable, used_up) = transact(&node, &shared, c, job, deadline).await;
        if !usable {
            // Lost or closed (421): do not QUIT a dead connection.
            lost(&node, conn.take());
        } else if used_up {
            close(&node, conn.take()).await;
        }
    }
    close(&node, conn.take()).await;
}

/// Sends `job` on `c`, its transaction ending by `deadline`, and applies the verdict. Returns
/// whether the connection is still usable and whether it has carried its
/// `messages_per_connection`.
async fn transact(
    node: &Node,
    shared: &Shared,
    c: &mut Connection,
    job: Job,
    deadline: Instant,
) -> (bool, bool) {
    inc(&node.counters.in_flight);
    let (from, rcpt, bytes) = (&job.msg.mail_from, &job.msg.rcpt, &job.msg.bytes);
    let result = c.send_until(from, rcpt, bytes, Some(deadline)).await;
    dec(&node.counters.in_flight);
    let verdict = classify(&result);
    let usable = c.is_usable();
    let used_up = c.transactions() >= u64::from(node.messages_per_connection);
    handle(node, shared, job, verdict, result);
    (usable, used_up)
}

/// Ends a connection politely (QUIT). Every connection counted by [`Node::connected`] ends
/// here or in [`lost`], so the count of open connections returns to zero.
async fn close(node: &Node, conn: Option<Connection>) {
    if let Some(c) = conn {
        c.quit().await;
        dec(&node.counters.connections);
    }
}

/// Drops a connection that is dead or not to be trusted (no QUIT).
fn lost(node: &Node, conn: Option<Connection>) {
    if conn.is_some() {
        dec(&node.counters.connections);
    }
}

/// Applies a verdict: final outcome, retry later, or send again elsewhere.
fn handle(
    node: &Node,
    shared: &Shared,
    mut job: Job,
    verdict: Verdict,
    result: Result<crate::smtp::Delivery, crate::smtp::SmtpError>,
) {
    let now = Instant::now();
    match verdict {
        Verdict::Accepted | Verdict::Failed => {
            node.deferral_streak.store(0, Ordering::Relaxed);
            node.error_streak.store(0, Ordering::Relaxed);
            job.attempts += 1;
            job.charged += 1;
            let status = if verdict == Verdict::Accepted {
                inc(&node.counters.accepted);
                Status::Accepted
            } else {
                inc(&node.counters.failed);
                Status::Failed
            };
            shared.outcomes.finish(job, status, &node.name, result.ok());
        }
        Verdict::Deferred => {
            node.error_streak.store(0, Ordering::Relaxed);
            inc(&node.counters.deferred);
            job.attempts += 1;
            job.charged += 1;
            job.first_attempt.get_or_insert(now);
            if !node.fallback {
                job.primary_deferrals += 1;
            }
            // No reply (a transaction past its deadline, a reply before the body): why, and
            // whether the final dot had gone out (then the relay may have the message).
            let reason = result.as_ref().err().map(ToString::to_string);
            if result
                .as_ref()
                .is_err_and(crate::smtp::SmtpError::after_data)
            {
                job.possibly_duplicated = true;
            }
            let delivery = result.ok();
            if node.deferral_streak.fetch_add(1, Ordering::Relaxed) + 1 >= DEFERRALS_TO_TRIP {
                node.deferral_streak.store(0, Ordering::Relaxed);
                let last = delivery
                    .as_ref()
                    .map(|d| format!(", the last: {} {}", d.reply.code, d.reply.text))
                    .unwrap_or_default();
                node.trip(
                    shared,
                    &format!("{DEFERRALS_TO_TRIP} deferrals (4xx) in a row{last}"),
                );
            }
            shared.defer_why(job, &node.name, delivery, reason);
        }
        Verdict::Requeue { after_data } => {
            inc(&node.counters.errors);
            // A try (the delivery log counts it), but not one the retry policy charges.
            job.attempts += 1;
            job.requeues += 1;
            if after_data && !job.possibly_duplicated {
                job.possibly_duplicated = true;
            }
            let why = match &result {
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            };
            tracing::debug!(node = %node.name, row = job.msg.row, error = %why, "connection lost; re-dispatching");
            if node.error_streak.fetch_add(1, Ordering::Relaxed) + 1 >= ERRORS_TO_TRIP {
                node.error_streak.store(0, Ordering::Relaxed);
                node.trip(
                    shared,
                    &format!("{ERRORS_TO_TRIP} lost connections in a row, the last: {why}"),
                );
            }
            if job.requeues.is_multiple_of(REQUEUES_PER_ATTEMPT) {
                // This message keeps breaking connections: charge it an attempt.
                job.charged += 1;
                job.first_attempt.get_or_insert(now);
                shared.defer(job, &node.name, None);
            } else {
                shared.requeued(job);
            }
        }
    }
}
