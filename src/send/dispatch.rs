//! The dispatcher: the one task that decides which node gets which message, and when.
//!
//! Inputs: rendered messages from the render threads (a bounded queue of `queue_depth`: when
//! it is full, rendering and the CSV reader wait), and jobs coming back from connections
//! (lost connection: place again now; deferred: place again after the retry delay). Outputs:
//! the nodes' small bounded queues. Final outcomes are not its business: connections hand
//! them to the [`OutcomeSink`], which also tells it when no recipient is outstanding.
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

use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, mpsc};

use crate::campaign::{Rate, RetryPolicy};
use crate::outcome::Status;
use crate::send::node::Node;
use crate::send::outcomes::OutcomeSink;
use crate::send::progress::{Counters, dec, inc};
use crate::send::render::Message;
use crate::shutdown::Shutdown;
use crate::smtp::Delivery;

/// A message on its way, with its delivery history.
#[derive(Debug)]
pub struct Job {
    pub msg: Message,
    /// Every try: a transaction that got an answer or was cut off (lost connection, timeout),
    /// and, sending direct, a domain that could not be resolved or had no MX host up. What the
    /// delivery log and the journal call `attempts`: a message re-sent after a lost connection
    /// counts each send.
    pub attempts: u32,
    /// What the retry policy counts against `[retry] attempts` (see `send::retry`): tries that
    /// got an answer, plus one per [`REQUEUES_PER_ATTEMPT`] lost connections.
    ///
    /// [`REQUEUES_PER_ATTEMPT`]: crate::send::retry::REQUEUES_PER_ATTEMPT
    pub charged: u32,
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
            charged: 0,
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

/// State shared by the dispatcher and every connection task: where jobs come back to, and the
/// wake-up for room in the node queues. Final outcomes go to [`OutcomeSink`], the stop to
/// [`Shutdown`].
pub struct Shared {
    pub policy: RetryPolicy,
    pub counters: Arc<Counters>,
    /// Every final outcome and attempt mark.
    pub outcomes: Arc<OutcomeSink>,
    pub shutdown: Arc<Shutdown>,
    back: mpsc::UnboundedSender<Back>,
    /// Signalled when a node queue gets room or a node changes health.
    pub capacity: Notify,
}

impl Shared {
    /// A deferral: retry later, or expire per the retry policy.
    pub fn defer(&self, job: Job, node: &Arc<str>, delivery: Option<Delivery>) {
        self.defer_why(job, node, delivery, None);
    }

    /// [`Shared::defer`] of a try that ended without a reply (`reason` says why: a transaction
    /// past its deadline, a reply before the body), kept as the text if it expires.
    pub fn defer_why(
        &self,
        mut job: Job,
        node: &Arc<str>,
        delivery: Option<Delivery>,
        reason: Option<String>,
    ) {
        inc(&self.counters.deferrals);
        let now = Instant::now();
        let first = *job.first_attempt.get_or_insert(now);
        if self.policy.gives_up(job.charged, first, now) {
            self.outcomes
                .finish_why(job, Status::Expired, node, delivery, reason);
            return;
        }
        let at = now + self.policy.delay(job.charged);
        job.last = Some((node.clone(), delivery));
        inc(&self.counters.waiting_retry);
        let _ = self.back.send(Back::At(at, job));
    }

    /// A job whose `max_age` ran out while it waited for a try: expired without one, with its
    /// last deferral's reply if it had one.
    pub fn expire(&self, mut job: Job, node: &Arc<str>) {
        let (node, delivery) = job.last.take().unwrap_or_else(|| (node.clone(), None));
        let reason = Some("max_age reached before the next try".to_string());
        self.outcomes
            .finish_why(job, Status::Expired, &node, delivery, reason);
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
        self.shutdown.is_stopping()
    }
}

/// What became of a job offered to the nodes.
enum Offer {
    Placed,
    /// No healthy node at all.
    NoNode(Job),
    /// Every eligible node is full or rate limited; the earliest time a limit allows one.
    Busy(Job, Option<Instant>),
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
        outcomes: Arc<OutcomeSink>,
        shutdown: Arc<Shutdown>,
        heap_limit: usize,
    ) -> (Dispatcher, Arc<Shared>) {
        let (back, back_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            policy,
            counters,
            outcomes,
            shutdown,
            back,
            capacity: Notify::new(),
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
        };
        (d, shared)
    }

    /// Direct-to-MX delivery: jobs go where `router` says instead of to the node pool.
    pub fn set_direct(&mut self, router: crate::send::direct::Router) {
        self.direct = Some(router);
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
            // Rows that cannot be rendered are final before the render threads hand on their
            // last batch: once the input is closed, none can come any more.
            if input_done && self.shared.outcomes.outstanding() == 0 {
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
            let idle = shared.outcomes.idle();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if input_done && shared.outcomes.outstanding() == 0 {
                return End::Done;
            }
            tokio::select! {
                biased;
                _ = shared.shutdown.stopped() => {}
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
                _ = idle, if input_done => {}
            }
        }
    }

    /// A new message from the render threads: count it, respect the global rate, place it.
    async fn take(&mut self, msg: Message) -> Result<(), End> {
        self.shared.outcomes.taken();
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
        // Fast path: a node takes it now, without registering for the capacity wake-up (which
        // takes the Notify's lock, once per message otherwise).
        if self.shared.stopping() {
            return Err(End::Stopped);
        }
        job = match self.offer(job) {
            Offer::Placed => return Ok(()),
            Offer::NoNode(job) | Offer::Busy(job, _) => job,
        };
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
            let until = match self.offer(job) {
                Offer::Placed => return Ok(()),
                Offer::NoNode(j) => {
                    let since = *self.all_down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.shared.policy.all_nodes_down {
                        tracing::error!("no node reachable for {:?}; giving up", since.elapsed());
                        // Keep the job accounted for: it was not sent.
                        self.shared.redispatch(j);
                        return Err(End::AllNodesDown);
                    }
                    job = j;
                    Instant::now() + Duration::from_millis(250)
                }
                // Every eligible node is full or rate limited: wait for room or the limit.
                Offer::Busy(j, rate) => {
                    job = j;
                    rate.unwrap_or_else(|| Instant::now() + Duration::from_millis(250))
                }
            };
            tokio::select! {
                _ = capacity => {}
                _ = shared.shutdown.stopped() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// Offers a job to the healthy nodes (fallbacks first once it was deferred
    /// `fallback_after` times by primaries, or when no primary is up), in weighted round-robin
    /// order, skipping the full and the rate-limited ones.
    fn offer(&mut self, mut job: Job) -> Offer {
        let want_fallback = job.primary_deferrals >= self.shared.policy.fallback_after;
        let mut eligible = self.eligible(want_fallback);
        if eligible.is_empty() {
            eligible = self.eligible(!want_fallback);
        }
        if eligible.is_empty() {
            return Offer::NoNode(job);
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
                Ok(()) => return Offer::Placed,
                Err(e) => job = e.into_inner(),
            }
        }
        Offer::Busy(job, earliest_rate)
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
