//! The dispatcher: the one task that decides which node gets which message, and when.
//!
//! Inputs: rendered messages from the render threads (a bounded queue of `queue_depth`: when
//! it is full, rendering and the CSV reader wait), and jobs coming back from connections
//! (lost connection: place again now; deferred: place again after the retry delay), and the rows
//! the render threads could not render, which it records as final failures (like every final
//! outcome, through [`Shared::finish_with`]). Outputs: the nodes' small bounded queues.
//!
//! Choice of node: smooth weighted round-robin over healthy nodes whose queue has room and
//! whose rate limit allows a message now. A recipient deferred `fallback_after` times by
//! primaries goes to the `fallback = true` nodes; fallbacks also take over when no primary is
//! up. The global rate limit is applied here too: one limiter, one waiter, which is how
//! governor is cheapest and most accurate.
//!
//! Deferred jobs wait in an in-memory heap. Its size is bounded (`queue_depth`, at least
//! 1000): when it is full the dispatcher stops taking new messages, so memory stays flat even
//! when every node defers everything.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, mpsc};

use crate::campaign::{Rate, RetryPolicy};
use crate::journal::JournalSender;
use crate::outcome::{Outcome, Status};
use crate::send::log::LogSender;
use crate::send::node::Node;
use crate::send::progress::{Counters, dec, inc};
use crate::send::render::Message;
use crate::smtp::Delivery;

/// A message on its way, with its delivery history.
#[derive(Debug)]
pub struct Job {
    pub msg: Message,
    /// Attempts that got an answer (or were charged for breaking connections).
    pub attempts: u32,
    /// Lost connections.
    pub requeues: u32,
    pub first_attempt: Option<Instant>,
    /// Deferrals by primary nodes, for the switch to fallback nodes.
    pub primary_deferrals: u32,
    pub possibly_duplicated: bool,
    /// An attempt mark was written to the journal for this job.
    pub marked: bool,
    /// The last deferral, reported if the recipient expires.
    pub last: Option<(Arc<str>, Option<Delivery>)>,
}

impl Job {
    pub fn new(msg: Message) -> Job {
        Job {
            msg,
            attempts: 0,
            requeues: 0,
            first_attempt: None,
            primary_deferrals: 0,
            possibly_duplicated: false,
            marked: false,
            last: None,
        }
    }
}

enum Back {
    /// Place again now (lost connection, node went down).
    Now(Job),
    /// Place again at the given time (deferred).
    At(Instant, Job),
}

/// State shared by the dispatcher and every connection task.
pub struct Shared {
    pub policy: RetryPolicy,
    pub counters: Arc<Counters>,
    log: LogSender,
    /// The journal, if this run keeps one.
    journal: Option<JournalSender>,
    /// Final outcomes of rows an earlier session had attempted without a recorded outcome.
    resumed_duplicates: AtomicU64,
    back: mpsc::UnboundedSender<Back>,
    /// Recipients taken from the render queue and not yet final.
    outstanding: AtomicU64,
    /// Signalled when a node queue gets room or a node changes health.
    pub capacity: Notify,
    /// Signalled when `outstanding` drops to zero.
    idle: Notify,
    stop: AtomicBool,
    stop_notify: Notify,
    /// Where synchronous user-unknown failures are recorded (see [`Shared::set_suppression`]).
    suppression: std::sync::OnceLock<SyncSuppression>,
}

/// The suppression list as the connection tasks use it: rare writes (a 5xx user unknown at
/// RCPT), so one lock around one connection is enough.
pub struct SyncSuppression {
    pub campaign: String,
    pub list: std::sync::Mutex<crate::bounce::suppression::Suppressions>,
}

impl Shared {
    /// Records synchronous hard failures (5.1.1 and the like) in this suppression list.
    pub fn set_suppression(&self, s: SyncSuppression) {
        let _ = self.suppression.set(s);
    }

    fn record_dead_address(&self, row: u64, rcpt: &str, delivery: &Delivery) {
        let Some(s) = self.suppression.get() else {
            return;
        };
        let r = &delivery.reply;
        let enhanced = r.enhanced.map(|e| (e.class, e.subject, e.detail));
        if !crate::bounce::suppression::is_dead_address_reply(r.code, enhanced, &r.text) {
            return;
        }
        let mut e = crate::bounce::suppression::Entry::new(
            rcpt,
            crate::bounce::suppression::Source::Smtp,
            crate::bounce::dsn::Reason::UserUnknown.as_str(),
        );
        e.status = r.enhanced.map(|x| x.to_string());
        e.diagnostic = Some(format!("{} {}", r.code, r.text));
        e.campaign = Some(s.campaign.clone());
        e.row = Some(row);
        let list = s.list.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = list.add(&e) {
            tracing::error!("cannot record {rcpt} as suppressed: {err}");
        }
    }

    /// Records a final outcome.
    pub fn finish(&self, job: Job, status: Status, node: &Arc<str>, delivery: Option<Delivery>) {
        self.finish_with(job, status, node, delivery, None, true);
    }

    /// A row whose message could not be rendered (from the render threads, through the
    /// dispatcher): final `failed`, node `render`, the template error as its reason; not added
    /// to the suppression list. Recorded like every other outcome, so the run can finish.
    pub fn fail_unrendered(&self, u: crate::outcome::Unrendered) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        let job = Job::new(Message {
            row: u.row,
            rcpt: u.rcpt,
            mail_from: String::new(),
            message_id: u.message_id,
            bytes: Vec::new(),
        });
        let node: Arc<str> = crate::outcome::UNRENDERED_NODE.into();
        self.finish_with(job, Status::Failed, &node, None, Some(u.reason), false);
    }

    /// A rendered message that will never be sent: its domain does not accept mail (see
    /// [`crate::dns`]). Final `failed` with a synthetic reply (`reply_line`, e.g. "550 5.1.2
    /// domain does not accept mail: ..."), node "dns"; not added to the suppression list.
    pub fn fail_unsent(&self, msg: Message, reply_line: &str) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        self.fail_job(Job::new(msg), reply_line);
    }

    /// [`Shared::fail_unsent`] for a job the dispatcher already counts.
    pub fn fail_job(&self, job: Job, reply_line: &str) {
        let raw = format!("{reply_line}\r\n");
        let reply = crate::smtp::Reply::parse(raw.as_bytes())
            .ok()
            .flatten()
            .map(|(r, _)| r);
        let delivery = reply.map(|reply| Delivery {
            stage: crate::smtp::Stage::Rcpt,
            reply,
        });
        let node: Arc<str> = "dns".into();
        self.finish_with(job, Status::Failed, &node, delivery, None, false);
    }

    fn finish_with(
        &self,
        mut job: Job,
        status: Status,
        node: &Arc<str>,
        delivery: Option<Delivery>,
        reason: Option<String>,
        suppress: bool,
    ) {
        if let Some(j) = &self.journal
            && j.was_unconfirmed(job.msg.row)
        {
            // A crashed session may have had it in flight: the relay may already have it.
            self.resumed_duplicates.fetch_add(1, Ordering::Relaxed);
            job.possibly_duplicated = true;
        }
        match status {
            Status::Accepted => inc(&self.counters.accepted),
            Status::Failed => inc(&self.counters.failed),
            Status::Expired => inc(&self.counters.expired),
        }
        if job.possibly_duplicated {
            inc(&self.counters.possibly_duplicated);
        }
        if status == Status::Failed
            && suppress
            && let Some(d) = &delivery
        {
            self.record_dead_address(job.msg.row, &job.msg.rcpt, d);
        }
        let (stage, reply) = match delivery {
            Some(d) => (Some(d.stage), Some(d.reply)),
            None => (None, None),
        };
        let outcome = Outcome {
            row: job.msg.row,
            rcpt: job.msg.rcpt,
            message_id: job.msg.message_id,
            status,
            node: node.clone(),
            stage,
            reply,
            attempts: job.attempts,
            possibly_duplicated: job.possibly_duplicated,
            reason,
        };
        if let Some(j) = &self.journal
            && !j.record(&outcome)
        {
            tracing::error!("the journal writer stopped; stopping the run");
            self.request_stop();
        }
        self.log.record(outcome);
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_one();
        }
    }

    /// Writes the journal's attempt mark for a job taken off a node queue for the first time,
    /// and waits until it is committed. False if the journal cannot take it: do not send then
    /// (the run is being stopped).
    pub async fn mark_attempt(&self, job: &mut Job) -> bool {
        let Some(j) = &self.journal else {
            return true;
        };
        if job.marked {
            // A retry: no new mark, but wait for this connection's last outcome to be
            // committed, as a first attempt does (one row in doubt per connection at most).
            if j.barrier().await {
                return true;
            }
            self.request_stop();
            return false;
        }
        if j.mark_attempt(job.msg.row).await {
            job.marked = true;
            true
        } else {
            self.request_stop();
            false
        }
    }

    /// Final outcomes of rows that an earlier session had attempted without recording an
    /// outcome (resumed after a crash): possibly duplicated.
    pub fn resumed_duplicates(&self) -> u64 {
        self.resumed_duplicates.load(Ordering::Relaxed)
    }

    /// A node went down or came back up (from [`crate::send::node`]): into the journal, if any.
    pub fn node_event(&self, node: &str, event: &crate::outcome::HealthEvent) {
        if let Some(j) = &self.journal {
            j.node_event(node, event);
        }
    }

    /// A deferral: retry later, or expire per the retry policy.
    pub fn defer(&self, mut job: Job, node: &Arc<str>, delivery: Option<Delivery>) {
        inc(&self.counters.deferrals);
        let now = Instant::now();
        let first = *job.first_attempt.get_or_insert(now);
        if self.policy.gives_up(job.attempts, first, now) {
            self.finish(job, Status::Expired, node, delivery);
            return;
        }
        let at = now + self.policy.delay(job.attempts);
        job.last = Some((node.clone(), delivery));
        inc(&self.counters.waiting_retry);
        let _ = self.back.send(Back::At(at, job));
    }

    /// A lost connection: place the job again at once.
    pub fn requeued(&self, job: Job) {
        inc(&self.counters.requeues);
        self.redispatch(job);
    }

    /// Hands a job back to the dispatcher unchanged (its node went down).
    pub fn redispatch(&self, job: Job) {
        let _ = self.back.send(Back::Now(job));
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Asks everything to stop: no new transactions start; running ones finish.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stop_notify.notify_waiters();
        self.capacity.notify_waiters();
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }
}

/// Why the dispatcher ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every message reached a final outcome.
    Done,
    /// A stop was requested.
    Stopped,
    /// No node was reachable for `retry.all_nodes_down`.
    AllNodesDown,
}

struct Entry {
    at: Instant,
    seq: u64,
    job: Job,
    /// Parked for a moment by direct delivery (rate limit, busy MX), not a retry.
    parked: bool,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// The governor quota of a rate, with a burst of 1/20 s worth of messages (at least 1) so the
/// limiter reaches the nominal rate without letting a whole second through at once.
pub fn quota(rate: Rate) -> Quota {
    let per_sec = rate.per_second();
    let period = rate.per / rate.count;
    let burst = ((per_sec / 20.0).ceil() as u32).max(1);
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("at least 1"))
}

/// A direct (unkeyed) limiter for a rate; see [`quota`].
pub fn limiter(rate: Rate) -> DefaultDirectRateLimiter {
    RateLimiter::direct(quota(rate))
}

pub struct Dispatcher {
    nodes: Vec<Arc<Node>>,
    node_limiters: Vec<Option<DefaultDirectRateLimiter>>,
    global: Option<DefaultDirectRateLimiter>,
    shared: Arc<Shared>,
    back_rx: mpsc::UnboundedReceiver<Back>,
    heap: BinaryHeap<Entry>,
    heap_limit: usize,
    seq: u64,
    /// Smooth weighted round-robin state, one per node.
    current: Vec<i64>,
    all_down_since: Option<Instant>,
    /// Direct-to-MX delivery: routes jobs instead of the node pool (see [`crate::send::direct`]).
    direct: Option<crate::send::direct::Router>,
    /// Rows the render threads could not render: recorded as final failures.
    unrendered: Option<async_channel::Receiver<crate::outcome::Unrendered>>,
}

impl Dispatcher {
    /// Creates the dispatcher and the state shared with the connection tasks.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nodes: Vec<Arc<Node>>,
        node_rates: Vec<Option<Rate>>,
        global_rate: Option<Rate>,
        policy: RetryPolicy,
        counters: Arc<Counters>,
        log: LogSender,
        journal: Option<JournalSender>,
        heap_limit: usize,
    ) -> (Dispatcher, Arc<Shared>) {
        let (back, back_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            policy,
            counters,
            log,
            journal,
            resumed_duplicates: AtomicU64::new(0),
            back,
            outstanding: AtomicU64::new(0),
            capacity: Notify::new(),
            idle: Notify::new(),
            stop: AtomicBool::new(false),
            stop_notify: Notify::new(),
            suppression: std::sync::OnceLock::new(),
        });
        let n = nodes.len();
        let d = Dispatcher {
            nodes,
            node_limiters: node_rates.into_iter().map(|r| r.map(limiter)).collect(),
            global: global_rate.map(limiter),
            shared: shared.clone(),
            back_rx,
            heap: BinaryHeap::new(),
            heap_limit: heap_limit.max(1000),
            seq: 0,
            current: vec![0; n],
            all_down_since: None,
            direct: None,
            unrendered: None,
        };
        (d, shared)
    }

    /// Direct-to-MX delivery: jobs go where `router` says instead of to the node pool.
    pub fn set_direct(&mut self, router: crate::send::direct::Router) {
        self.direct = Some(router);
    }

    /// Rows that could not be rendered come from `rx` (closed by the render threads with the
    /// message input): each becomes a final `failed` outcome ([`Shared::fail_unrendered`]), and
    /// the run is not done before `rx` is closed and drained.
    pub fn set_unrendered(&mut self, rx: async_channel::Receiver<crate::outcome::Unrendered>) {
        self.unrendered = Some(rx);
    }

    /// Runs until every message is final, a stop is requested, or no node is reachable.
    /// Closes the node queues on the way out so the connection tasks finish.
    pub async fn run(mut self, input: async_channel::Receiver<Vec<Message>>) -> End {
        let end = self.run_inner(input).await;
        for n in &self.nodes {
            n.queue_tx.close();
        }
        if let Some(r) = &self.direct {
            r.close();
        }
        end
    }

    async fn run_inner(&mut self, input: async_channel::Receiver<Vec<Message>>) -> End {
        let mut input_done = false;
        let unrendered = self.unrendered.take();
        let mut unrendered_done = unrendered.is_none();
        // Messages arrive in batches (one wake-up per batch, not per message).
        let mut pending: VecDeque<Message> = VecDeque::new();
        let shared = self.shared.clone();
        loop {
            if self.shared.stopping() {
                return End::Stopped;
            }
            // Due retries first.
            if self.heap.peek().is_some_and(|e| e.at <= Instant::now()) {
                let e = self.heap.pop().expect("peeked");
                if !e.parked {
                    dec(&self.shared.counters.waiting_retry);
                }
                if let Err(end) = self.place(e.job).await {
                    return end;
                }
                continue;
            }
            if input_done && unrendered_done && self.shared.outstanding() == 0 {
                return End::Done;
            }
            let next_due = self.heap.peek().map(|e| e.at);
            let take_new = self.heap.len() < self.heap_limit;
            if take_new && let Some(msg) = pending.pop_front() {
                // Jobs coming back were placed before this one: they go first.
                while let Ok(back) = self.back_rx.try_recv() {
                    if let Err(end) = self.back(back).await {
                        return end;
                    }
                }
                if let Err(end) = self.take(msg).await {
                    return end;
                }
                continue;
            }
            let take_new = take_new && !input_done;
            // Register for the stop wake-up, then look at the flag again: `request_stop` wakes
            // only registered waiters, so a stop between the look above and the wait would be
            // lost and the dispatcher would sleep until some connection came back (CI saw 25 s).
            // Only here, where it waits: registering takes the Notify's lock.
            let stop = shared.stop_notify.notified();
            tokio::pin!(stop);
            stop.as_mut().enable();
            if self.shared.stopping() {
                return End::Stopped;
            }
            tokio::select! {
                biased;
                _ = stop => {}
                back = self.back_rx.recv() => if let Some(back) = back
                    && let Err(end) = self.back(back).await
                {
                    return end;
                },
                _ = sleep_until_opt(next_due), if next_due.is_some() => {}
                batch = input.recv(), if take_new => match batch {
                    Ok(batch) => pending.extend(batch),
                    Err(_) => input_done = true,
                },
                u = recv_unrendered(unrendered.as_ref()), if !unrendered_done => match u {
                    Some(u) => self.shared.fail_unrendered(u),
                    None => unrendered_done = true,
                },
                _ = self.shared.idle.notified(), if input_done => {}
            }
        }
    }

    /// A new message from the render threads: count it, respect the global rate, place it.
    async fn take(&mut self, msg: Message) -> Result<(), End> {
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        if let Some(g) = &self.global {
            g.until_ready().await;
        }
        self.place(Job::new(msg)).await
    }

    /// A job coming back from a connection: place it again now, or keep it for later.
    async fn back(&mut self, back: Back) -> Result<(), End> {
        match back {
            Back::Now(job) => self.place(job).await,
            Back::At(at, job) => {
                self.seq += 1;
                self.heap.push(Entry {
                    at,
                    seq: self.seq,
                    job,
                    parked: false,
                });
                Ok(())
            }
        }
    }

    /// Puts a job into the queue of the best node that can take it now; waits while none can.
    async fn place(&mut self, mut job: Job) -> Result<(), End> {
        if let Some(router) = &mut self.direct {
            if self.shared.stopping() {
                return Err(End::Stopped);
            }
            if let crate::send::direct::Placed::Later(at, job) = router.place(job, &self.shared) {
                self.seq += 1;
                self.heap.push(Entry {
                    at,
                    seq: self.seq,
                    job: *job,
                    parked: true,
                });
            }
            return Ok(());
        }
        loop {
            // Register interest before looking (at the stop flag and the queues), so a
            // wake-up between the look and the wait is not lost.
            let shared = self.shared.clone();
            let capacity = shared.capacity.notified();
            tokio::pin!(capacity);
            capacity.as_mut().enable();
            if self.shared.stopping() {
                return Err(End::Stopped);
            }

            let want_fallback = job.primary_deferrals >= self.shared.policy.fallback_after;
            let mut eligible = self.eligible(want_fallback);
            if eligible.is_empty() {
                eligible = self.eligible(!want_fallback);
            }
            if eligible.is_empty() {
                let since = *self.all_down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.shared.policy.all_nodes_down {
                    tracing::error!("no node reachable for {:?}; giving up", since.elapsed());
                    // Keep the job accounted for: it was not sent.
                    self.shared.redispatch(job);
                    return Err(End::AllNodesDown);
                }
                let _ = tokio::time::timeout(Duration::from_millis(250), capacity).await;
                continue;
            }
            self.all_down_since = None;

            let mut earliest_rate: Option<Instant> = None;
            while !eligible.is_empty() {
                let i = self.pick(&eligible);
                eligible.retain(|&e| e != i);
                if let Some(l) = &self.node_limiters[i]
                    && let Err(not_until) = l.check()
                {
                    let at = ready_at(&not_until);
                    earliest_rate = Some(earliest_rate.map_or(at, |e| e.min(at)));
                    continue;
                }
                match self.nodes[i].queue_tx.try_send(job) {
                    Ok(()) => return Ok(()),
                    Err(e) => job = e.into_inner(),
                }
            }
            // Every eligible node is full or rate limited: wait for room or the limit.
            match earliest_rate {
                Some(at) => {
                    tokio::select! {
                        _ = capacity => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => {
                    let _ = tokio::time::timeout(Duration::from_millis(250), capacity).await;
                }
            }
        }
    }

    fn eligible(&self, fallback: bool) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].fallback == fallback && self.nodes[i].is_healthy())
            .collect()
    }

    /// Smooth weighted round-robin (as in nginx) among `candidates`.
    fn pick(&mut self, candidates: &[usize]) -> usize {
        let total: i64 = candidates
            .iter()
            .map(|&i| self.nodes[i].weight as i64)
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            self.current[i] += self.nodes[i].weight as i64;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        best
    }
}

async fn recv_unrendered(
    rx: Option<&async_channel::Receiver<crate::outcome::Unrendered>>,
) -> Option<crate::outcome::Unrendered> {
    match rx {
        Some(rx) => rx.recv().await.ok(),
        None => None,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// When a rate-limited node may take a message again, as a std `Instant`.
fn ready_at(n: &governor::NotUntil<governor::clock::QuantaInstant>) -> Instant {
    use governor::clock::Clock;
    Instant::now() + n.wait_time_from(governor::clock::DefaultClock::default().now())
}
