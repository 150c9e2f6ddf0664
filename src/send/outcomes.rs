//! The one owner of outcomes: every final outcome and every attempt mark of a run passes
//! through the [`OutcomeSink`] — from the connections (2xx, 5xx, expired retries), the
//! pre-validation stage and direct delivery (domains that do not accept mail), and the render
//! threads (rows that cannot be rendered). It fans each one out to the counters (progress and
//! the summary), the journal (the durable record), the delivery log and, for a 5xx that says
//! the mailbox does not exist, the suppression list; and it counts the recipients taken and not
//! yet final, so the dispatcher knows when the run is done.
//!
//! Blocking I/O happens on threads of their own, never on a tokio worker: the journal's writer
//! and log threads (a connection awaits its attempt mark's durability, see
//! [`OutcomeSink::mark_attempt`]), the delivery log's thread, and the suppression writer thread
//! here (a dead address is handed over and the connection goes on).
//!
//! Uses: outcome (the records), journal (its sender), bounce::suppression, send::log,
//! send::progress, send::dispatch (the job a connection hands back), shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::Notify;

use crate::bounce::suppression::{self, Entry, Suppressions};
use crate::journal::JournalSender;
use crate::outcome::{HealthEvent, Outcome, Status, UNRENDERED_NODE, Unrendered};
use crate::send::dispatch::Job;
use crate::send::log::LogSender;
use crate::send::progress::{Counters, inc};
use crate::send::render::Message;
use crate::shutdown::Shutdown;
use crate::smtp::{Delivery, Reply, Stage};

/// Receives every final outcome and attempt mark of a run; see the module doc.
pub struct OutcomeSink {
    counters: Arc<Counters>,
    log: LogSender,
    /// The journal, if this run keeps one.
    journal: Option<JournalSender>,
    /// Dead addresses (a 5xx user unknown) to the suppression writer thread.
    suppression: Option<mpsc::Sender<Entry>>,
    /// The campaign id recorded with suppression entries.
    campaign: String,
    shutdown: Arc<Shutdown>,
    /// Final outcomes of rows an earlier session had attempted without a recorded outcome.
    resumed_duplicates: AtomicU64,
    /// Recipients taken (from the render queue, or failed before it) and not yet final.
    outstanding: AtomicU64,
    /// Signalled when `outstanding` drops to zero.
    idle: Notify,
}

/// Where the suppression writer thread writes, and how to wait for it at the end of a run.
pub struct SuppressionWriter {
    thread: JoinHandle<u64>,
}

impl SuppressionWriter {
    /// Waits until every dead address handed over is written (after the last
    /// [`OutcomeSink`] is dropped). Returns how many were written.
    pub fn close(self) -> u64 {
        self.thread.join().unwrap_or(0)
    }
}

impl OutcomeSink {
    /// A sink recording into `log` and `journal`; with `suppression`, 5xx user-unknown replies
    /// are added to that list by a thread of its own (returned, to be closed at the end).
    pub fn new(
        counters: Arc<Counters>,
        log: LogSender,
        journal: Option<JournalSender>,
        suppression: Option<Suppressions>,
        campaign: &str,
        shutdown: Arc<Shutdown>,
    ) -> std::io::Result<(OutcomeSink, Option<SuppressionWriter>)> {
        let (tx, writer) = match suppression {
            Some(list) => {
                let (tx, rx) = mpsc::channel::<Entry>();
                let thread = std::thread::Builder::new()
                    .name("blast-suppress".into())
                    .spawn(move || write_suppressions(&list, &rx))?;
                (Some(tx), Some(SuppressionWriter { thread }))
            }
            None => (None, None),
        };
        let sink = OutcomeSink {
            counters,
            log,
            journal,
            suppression: tx,
            campaign: campaign.to_string(),
            shutdown,
            resumed_duplicates: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            idle: Notify::new(),
        };
        Ok((sink, writer))
    }

    /// A recipient was taken by the dispatcher: it is outstanding until its final outcome.
    pub fn taken(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// Recipients taken and not yet final.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Resolves when no recipient is outstanding (register before looking, see
    /// [`Notify::notified`]).
    pub fn idle(&self) -> tokio::sync::futures::Notified<'_> {
        self.idle.notified()
    }

    /// A final outcome from a connection (2xx to DATA, 5xx, or retries given up).
    pub fn finish(&self, job: Job, status: Status, node: &Arc<str>, delivery: Option<Delivery>) {
        self.record(job, status, node, delivery, None, true);
    }

    /// [`OutcomeSink::finish`] with a reason for when no reply says why (the text of an
    /// expiry after a transaction past its deadline).
    pub fn finish_why(
        &self,
        job: Job,
        status: Status,
        node: &Arc<str>,
        delivery: Option<Delivery>,
        reason: Option<String>,
    ) {
        self.record(job, status, node, delivery, reason, true);
    }

    /// A row whose message could not be rendered (from a render thread): final `failed`, node
    /// `render`, the template error as its reason; not added to the suppression list.
    pub fn fail_unrendered(&self, u: Unrendered) {
        self.taken();
        let job = Job::new(Message {
            row: u.row,
            rcpt: u.rcpt,
            mail_from: String::new(),
            message_id: u.message_id,
            bytes: Vec::new(),
        });
        let node: Arc<str> = UNRENDERED_NODE.into();
        self.record(job, Status::Failed, &node, None, Some(u.reason), false);
    }

    /// A rendered message that will never be sent: its domain does not accept mail (see
    /// [`crate::dns`]). Final `failed` with a synthetic reply (`reply_line`, e.g. "550 5.1.2
    /// domain does not accept mail: ..."), node "dns"; not added to the suppression list.
    pub fn fail_unsent(&self, msg: Message, reply_line: &str) {
        self.taken();
        self.fail_job(Job::new(msg), reply_line);
    }

    /// [`OutcomeSink::fail_unsent`] for a job already taken.
    pub fn fail_job(&self, job: Job, reply_line: &str) {
        let raw = format!("{reply_line}\r\n");
        let reply = Reply::parse(raw.as_bytes()).ok().flatten().map(|(r, _)| r);
        let delivery = reply.map(|reply| Delivery {
            stage: Stage::Rcpt,
            reply,
        });
        let node: Arc<str> = "dns".into();
        self.record(job, Status::Failed, &node, delivery, None, false);
    }

    fn record(
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
            // A crashed session may have had it in flight: the relay may already have it. That
            // session's try counts too (as one: how often it tried is not known).
            self.resumed_duplicates.fetch_add(1, Ordering::Relaxed);
            job.possibly_duplicated = true;
            job.attempts += 1;
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
            self.suppress_dead_address(job.msg.row, &job.msg.rcpt, d);
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
            self.shutdown.request_stop();
        }
        self.log.record(outcome);
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_one();
        }
    }

    /// A synchronous 5xx that says the mailbox does not exist: to the suppression list, through
    /// its writer thread (the connection does not wait for SQLite).
    fn suppress_dead_address(&self, row: u64, rcpt: &str, delivery: &Delivery) {
        let Some(tx) = &self.suppression else {
            return;
        };
        let r = &delivery.reply;
        let enhanced = r.enhanced.map(|e| (e.class, e.subject, e.detail));
        if !suppression::is_dead_address_reply(r.code, enhanced, &r.text) {
            return;
        }
        let mut e = Entry::new(
            rcpt,
            suppression::Source::Smtp,
            crate::bounce::dsn::Reason::UserUnknown.as_str(),
        );
        e.status = r.enhanced.map(|x| x.to_string());
        e.diagnostic = Some(format!("{} {}", r.code, r.text));
        e.campaign = Some(self.campaign.clone());
        e.row = Some(row);
        if tx.send(e).is_err() {
            tracing::error!("the suppression writer stopped: {rcpt} is not suppressed");
        }
    }

    /// Writes the journal's attempt mark for a job taken off a node queue for the first time,
    /// and waits (without blocking the worker) until it is durable. False if the journal cannot
    /// take it: do not send then (the run is being stopped).
    pub async fn mark_attempt(&self, job: &mut Job) -> bool {
        let Some(j) = &self.journal else {
            return true;
        };
        let durable = if job.marked {
            // A retry: no new mark, but wait for this connection's last outcome to be
            // durable, as a first attempt does (one row in doubt per connection at most).
            j.barrier().await
        } else {
            let ok = j.mark_attempt(job.msg.row).await;
            job.marked |= ok;
            ok
        };
        if !durable {
            self.shutdown.request_stop();
        }
        durable
    }

    /// A node went down or came back up: into the journal, if any.
    pub fn node_event(&self, node: &str, event: &HealthEvent) {
        if let Some(j) = &self.journal {
            j.node_event(node, event);
        }
    }

    /// Final outcomes of rows that an earlier session had attempted without recording an
    /// outcome (resumed after a crash): possibly duplicated.
    pub fn resumed_duplicates(&self) -> u64 {
        self.resumed_duplicates.load(Ordering::Relaxed)
    }
}

/// The suppression writer thread: one SQLite write per dead address, in order, until every
/// sender is gone.
fn write_suppressions(list: &Suppressions, rx: &mpsc::Receiver<Entry>) -> u64 {
    let mut written = 0;
    for e in rx {
        match list.add(&e) {
            Ok(_) => written += 1,
            Err(err) => tracing::error!("cannot record {} as suppressed: {err}", e.address),
        }
    }
    written
}
