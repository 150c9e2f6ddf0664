//! What happened to a recipient, decided in one place.
//!
//! [`classify`] is the single function that maps an SMTP transaction result to a [`Verdict`]:
//! 2xx after the message body is the only "accepted"; 4xx anywhere is temporary and retried
//! later; 5xx anywhere is final and never retried; a transport failure (lost connection,
//! timeout, garbage) says nothing about the recipient, so the message is sent again,
//! elsewhere if need be — except a reply the relay sent after 354 before the body went out
//! ([`SmtpError::ReplyBeforeBody`]) and a transaction that ran past its deadline
//! ([`SmtpError::Deadline`]: its own limit or the recipient's `max_age`): deferrals, like a
//! 4xx, so the retry policy expires the recipient when its age is up. [`Outcome`] is the final
//! record that the delivery log (and the journal) keep per recipient.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::smtp::{Delivery, EnhancedStatus, Reply, SmtpError, Stage};

/// The verdict on one transaction attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx to the end of DATA: the node took responsibility for the message.
    Accepted,
    /// 4xx (or a reply that makes no sense at that stage, or a transaction past its deadline):
    /// try again later, or expire.
    Deferred,
    /// 5xx: final.
    Failed,
    /// The transaction did not complete for reasons of the connection, not the recipient:
    /// re-dispatch, not counted as an attempt. `after_data` means the final dot was written, so
    /// the node may have queued the message: a re-send may duplicate it.
    Requeue { after_data: bool },
}

/// Classifies a transaction result. The only place that turns replies into decisions.
pub fn classify(result: &Result<Delivery, SmtpError>) -> Verdict {
    match result {
        Ok(d) => match d.reply.code / 100 {
            2 if d.stage == Stage::Body => Verdict::Accepted,
            5 => Verdict::Failed,
            _ => Verdict::Deferred,
        },
        // Our own validation refused the address: sending again cannot help.
        Err(SmtpError::InvalidAddress(_)) => Verdict::Failed,
        // A reply after 354 before the body was sent: nothing was delivered (no duplicate risk)
        // and the relay is misbehaving, so a temporary failure of this attempt, like a 4xx.
        Err(SmtpError::ReplyBeforeBody { .. }) => Verdict::Deferred,
        // Too slow as a whole (a relay trickling its replies): a temporary failure of this
        // attempt, so `max_age` and `attempts` apply, not an endless re-send.
        Err(SmtpError::Deadline { .. }) => Verdict::Deferred,
        Err(e) => Verdict::Requeue {
            after_data: e.after_data(),
        },
    }
}

/// Final state of a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A node accepted the message (2xx to DATA).
    Accepted,
    /// Permanent failure (5xx).
    Failed,
    /// Temporary failures until the retry policy gave up (attempts or age).
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Failed => "failed",
            Status::Expired => "expired",
        }
    }
}

/// The final record of one recipient.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub row: u64,
    pub rcpt: String,
    pub message_id: String,
    pub status: Status,
    /// Node of the last attempt.
    pub node: Arc<str>,
    /// Stage of the last attempt where the transaction ended.
    pub stage: Option<Stage>,
    pub reply: Option<Reply>,
    /// Every try: each transaction, answered or cut off by a lost connection or a timeout (a
    /// message re-sent after a lost connection counts each send), a failed lookup when sending
    /// direct, and one for an earlier session that died with the row in flight. The retry
    /// policy counts differently (see `send::retry`).
    pub attempts: u32,
    /// An earlier attempt lost its connection after the final dot: the recipient may get the
    /// message twice (same Message-ID).
    pub possibly_duplicated: bool,
    /// Why, when no SMTP reply says it: the template error of a row whose message could not be
    /// rendered (see [`Unrendered`]). Kept where a reply's text goes (`text` in the journal and
    /// the delivery log).
    pub reason: Option<String>,
}

impl Outcome {
    pub fn code(&self) -> Option<u16> {
        self.reply.as_ref().map(|r| r.code)
    }

    pub fn enhanced(&self) -> Option<EnhancedStatus> {
        self.reply.as_ref().and_then(|r| r.enhanced)
    }

    /// The reply's text, or the reason when there is no reply.
    pub fn text(&self) -> Option<&str> {
        self.reply
            .as_ref()
            .map(|r| r.text.as_str())
            .or(self.reason.as_deref())
    }

    pub fn queue_id(&self) -> Option<&str> {
        match self.status {
            Status::Accepted => self.reply.as_ref().and_then(|r| r.queue_id()),
            _ => None,
        }
    }
}

/// A row whose message could not be rendered: a template that fails at send time for this
/// row's values (e.g. a division by a zero column). Rendering is deterministic, so sending again
/// cannot help: it is a final `failed` outcome (node [`UNRENDERED_NODE`], no stage, no reply, the
/// error as its reason), recorded like any other one and never rendered again by a resume.
/// Render threads hand these downstream to the dispatcher (see [`crate::send::dispatch`]).
#[derive(Debug, Clone)]
pub struct Unrendered {
    pub row: u64,
    pub rcpt: String,
    pub message_id: String,
    /// The template error, without the row number (so that `blast status` groups equal reasons).
    pub reason: String,
}

/// The node name of [`Unrendered`] outcomes.
pub const UNRENDERED_NODE: &str = "render";

pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Mail => "mail",
        Stage::Rcpt => "rcpt",
        Stage::Data => "data",
        Stage::Body => "body",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Reply {
        Reply::parse(format!("{code} x.y.z text\r\n").as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    fn delivery(stage: Stage, code: u16) -> Result<Delivery, SmtpError> {
        Ok(Delivery {
            stage,
            reply: reply(code),
        })
    }

    #[test]
    fn replies() {
        assert_eq!(classify(&delivery(Stage::Body, 250)), Verdict::Accepted);
        assert_eq!(classify(&delivery(Stage::Rcpt, 550)), Verdict::Failed);
        assert_eq!(classify(&delivery(Stage::Body, 554)), Verdict::Failed);
        assert_eq!(classify(&delivery(Stage::Rcpt, 451)), Verdict::Deferred);
        assert_eq!(classify(&delivery(Stage::Mail, 421)), Verdict::Deferred);
        // A 2xx that ends the transaction before the body is nonsense: retry, never "accepted".
        assert_eq!(classify(&delivery(Stage::Data, 250)), Verdict::Deferred);
    }

    #[test]
    fn transport_errors_requeue() {
        let e: Result<Delivery, SmtpError> = Err(SmtpError::Closed { after_data: true });
        assert_eq!(classify(&e), Verdict::Requeue { after_data: true });
        let e: Result<Delivery, SmtpError> = Err(SmtpError::Closed { after_data: false });
        assert_eq!(classify(&e), Verdict::Requeue { after_data: false });
        let e: Result<Delivery, SmtpError> = Err(SmtpError::InvalidAddress("x".into()));
        assert_eq!(classify(&e), Verdict::Failed);
    }

    #[test]
    fn a_reply_before_the_body_is_a_deferral_without_duplicate_risk() {
        let err = SmtpError::ReplyBeforeBody { bytes: 24 };
        assert!(!err.after_data(), "the body was never sent");
        assert_eq!(classify(&Err(err)), Verdict::Deferred);
    }
}

/// Health events kept per node (a flapping node must not grow memory); later ones are counted.
pub const HEALTH_EVENTS_KEPT: usize = 100;

/// One change of a node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub time: SystemTime,
    /// Up again (a connect succeeded) or down (taken out of rotation).
    pub up: bool,
    /// Why it went down (the error or the last deferral); "connected" for up.
    pub reason: String,
    /// The node's accepted count at that moment (what it took before / after).
    pub accepted: u64,
    /// Down events: probes that failed before the node came back (or the run ended).
    pub failed_probes: u32,
}

/// A node's health history: the first [`HEALTH_EVENTS_KEPT`] events, and how many more.
#[derive(Debug, Clone, Default)]
pub struct HealthHistory {
    pub events: Vec<HealthEvent>,
    pub dropped: u64,
}
