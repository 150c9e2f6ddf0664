//! Bounce classification: what a message received by the bounce sink says about recipients.
//!
//! [`classify`] is a pure function from the raw message to a [`Classification`]: its kind
//! (bounce, complaint, auto-reply, delivery notice, not a bounce, unparseable) and one
//! [`BouncedRecipient`] per reported recipient with the action, the RFC 3463 status, the
//! diagnostic text, a [`Reason`] and whether the failure is hard (the address is dead).
//!
//! What it reads, in order of trust:
//! 1. ARF feedback reports (RFC 5965, `message/feedback-report`) → complaint.
//! 2. RFC 3464 delivery status (`message/delivery-status`, `message/global-delivery-status`):
//!    per-recipient `Final-Recipient`, `Action`, `Status`, `Diagnostic-Code`. `delivered`,
//!    `relayed` and `expanded` actions are reported as [`Kind::Delivered`] and never suppress.
//! 3. Auto-replies (RFC 3834 `Auto-Submitted: auto-replied`, vacation subjects) → never suppress.
//! 4. The common non-standard formats: Exim (`X-Failed-Recipients`), qmail (`<addr>:` blocks),
//!    Sendmail transcripts, Exchange "did not reach the following recipient(s)", and the
//!    provider texts (Gmail, Yahoo, Microsoft, Amazon SES…): the failure text before the copy
//!    of the original message is searched for recipients, status codes and reason keywords.
//!
//! "Hard" follows the reason, not the status class: an unknown user, an unknown host, a moved
//! mailbox and a domain that accepts no mail (5xx) are hard; a full mailbox, a policy or spam
//! rejection, an expiry are soft (they repeat or they don't). Complaints are not hard bounces
//! but suppress the address anyway (see [`Classification::suppresses`]).
//!
//! The parser never panics and bounds its work: input beyond [`MAX_INPUT`] is ignored.
//!
//! `bounce::dsn` owns this classification and nothing else: bytes in, a [`Classification`]
//! out, no I/O and no state. It uses nothing from the crate besides itself (only `mail_parser`,
//! `serde` and `serde_json`); the bounce sink and the suppression list use it, never the other
//! way round.
//!
//! Layout: `parts` sorts a message's MIME parts and cuts off the returned copy; `rfc3464` reads
//! delivery-status fields and the status and reply codes; `rules` turns text and codes into a
//! [`Reason`] (the keyword table) and says whether it is hard; `providers` reads provider
//! notifications (Amazon SES); `arf` reads feedback reports; `text` handles auto-replies,
//! list managers and the non-standard bounces; `address` finds addresses in free text.

mod address;
mod arf;
mod parts;
mod providers;
mod rfc3464;
mod rules;
mod text;

use serde::Serialize;

use arf::complaint;
use parts::{Parts, cut_original, looks_like_message};
use providers::ses_notification;
use rfc3464::dsn_recipients;
use text::{is_auto_reply, list_manager_error, looks_like_bounce, text_recipients};

pub use rfc3464::find_status;
pub use rules::reason_from_text;

/// Bytes of a message that are looked at; bounces are small, the returned copy is not needed.
pub const MAX_INPUT: usize = 4 * 1024 * 1024;
/// Recipients reported per message, at most.
const MAX_RECIPIENTS: usize = 1000;
/// Diagnostic text kept per recipient.
const MAX_DIAGNOSTIC: usize = 500;

/// What kind of message it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A delivery failure report (permanent or temporary).
    Bounce,
    /// An ARF feedback report: the recipient complained (marked it as spam).
    Complaint,
    /// An RFC 3834 automatic reply (vacation, out of office).
    AutoReply,
    /// A DSN saying the message was delivered, relayed or expanded.
    Delivered,
    /// A message that is none of the above (a human reply, spam to the bounce address…).
    NotBounce,
    /// Not a parseable message at all: keep it for a human.
    Unparseable,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bounce => "bounce",
            Kind::Complaint => "complaint",
            Kind::AutoReply => "auto_reply",
            Kind::Delivered => "delivered",
            Kind::NotBounce => "not_bounce",
            Kind::Unparseable => "unparseable",
        }
    }
}

/// Why delivery failed, coarse enough to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The mailbox does not exist (5.1.1).
    UserUnknown,
    /// The domain does not exist or has no mail host (5.1.2, 5.4.4).
    HostUnknown,
    /// The mailbox moved (5.1.6).
    Moved,
    /// The domain accepts no mail (null MX, 5.1.10).
    NotAccept,
    /// Mailbox over quota (5.2.2, 4.2.2).
    MailboxFull,
    /// Mailbox disabled or suspended (5.2.1).
    Suspended,
    /// Message larger than the receiver accepts (5.3.4, 5.2.3).
    MessageTooBig,
    /// Rejected by policy: blocklists, reputation, authentication (SPF/DKIM/DMARC), PTR,
    /// relaying, rate limits, filters.
    Policy,
    /// Rejected as spam, virus or bad content.
    Spam,
    /// Gave up after retrying (4.4.7).
    Expired,
    /// Could not connect or the connection broke.
    Network,
    /// The receiving system failed (disk full, mailer error, loop).
    System,
    /// A feedback (complaint) report.
    Complaint,
    /// An automatic reply.
    AutoReply,
    /// Delivered (not a failure).
    Delivered,
    /// Anything else.
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UserUnknown => "user_unknown",
            Reason::HostUnknown => "host_unknown",
            Reason::Moved => "moved",
            Reason::NotAccept => "not_accept",
            Reason::MailboxFull => "mailbox_full",
            Reason::Suspended => "suspended",
            Reason::MessageTooBig => "message_too_big",
            Reason::Policy => "policy",
            Reason::Spam => "spam",
            Reason::Expired => "expired",
            Reason::Network => "network",
            Reason::System => "system",
            Reason::Complaint => "complaint",
            Reason::AutoReply => "auto_reply",
            Reason::Delivered => "delivered",
            Reason::Other => "other",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Reason, String> {
        ALL_REASONS
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown reason {s:?}"))
    }
}

const ALL_REASONS: &[Reason] = &[
    Reason::UserUnknown,
    Reason::HostUnknown,
    Reason::Moved,
    Reason::NotAccept,
    Reason::MailboxFull,
    Reason::Suspended,
    Reason::MessageTooBig,
    Reason::Policy,
    Reason::Spam,
    Reason::Expired,
    Reason::Network,
    Reason::System,
    Reason::Complaint,
    Reason::AutoReply,
    Reason::Delivered,
    Reason::Other,
];

/// One recipient a message reports on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BouncedRecipient {
    /// Lowercased address.
    pub address: String,
    /// RFC 3464 action (`failed`, `delayed`, `delivered`, …), inferred for non-standard formats.
    pub action: String,
    /// RFC 3463 status (`5.1.1`), if the message carries one.
    pub status: Option<String>,
    /// The SMTP reply code (`550`), if the message carries one.
    pub reply_code: Option<u16>,
    /// The diagnostic text (Diagnostic-Code, or the failure text), whitespace folded.
    pub diagnostic: String,
    pub reason: Reason,
    /// The address is dead: never mail it again.
    pub hard: bool,
}

/// The result of [`classify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    pub kind: Kind,
    pub recipients: Vec<BouncedRecipient>,
}

impl Classification {
    /// Whether this recipient's address belongs on the suppression list right away:
    /// hard bounces and complaints. Soft bounces count towards `soft_bounce_limit` instead.
    pub fn suppresses(&self, r: &BouncedRecipient) -> bool {
        match self.kind {
            Kind::Complaint => true,
            Kind::Bounce => r.hard,
            _ => false,
        }
    }
}

/// Classifies a received message. `verp_address`: the recipient's address as known from a
/// valid VERP token (looked up by the caller); when given it replaces the address the report
/// names if the report is about a single recipient (VERP messages have exactly one).
pub fn classify_with(raw: &[u8], verp_address: Option<&str>) -> Classification {
    let c = classify(raw);
    match verp_address {
        Some(addr) => with_verp_address(c, addr),
        None => c,
    }
}

/// [`classify_with`] on an existing classification: the report's single recipient (or a
/// recipient-less bounce) is about `addr`.
pub fn with_verp_address(mut c: Classification, addr: &str) -> Classification {
    let addr = addr.trim().to_ascii_lowercase();
    match c.kind {
        Kind::Bounce | Kind::Complaint | Kind::Delivered if c.recipients.len() <= 1 => {
            if let Some(r) = c.recipients.first_mut() {
                r.address = addr;
            } else if c.kind == Kind::Bounce {
                c.recipients.push(BouncedRecipient {
                    address: addr,
                    action: "failed".into(),
                    status: None,
                    reply_code: None,
                    diagnostic: String::new(),
                    reason: Reason::Other,
                    hard: false,
                });
            }
        }
        _ => {}
    }
    c
}

/// Classifies a received message (see the module doc). Whatever the message says, every
/// recipient it returns has an address that could be one (see [`plausible_address`]) and a
/// one-line diagnostic: a report's text is anyone's, and the addresses may reach the
/// suppression list.
pub fn classify(raw: &[u8]) -> Classification {
    let mut c = classify_message(raw);
    c.recipients.retain(|r| plausible_address(&r.address));
    for r in &mut c.recipients {
        if r.diagnostic.contains(|ch: char| ch.is_control()) {
            r.diagnostic = fold(&r.diagnostic.replace(|ch: char| ch.is_control(), " "));
        }
    }
    c
}

/// `local@domain`, each part non-empty and bounded (64 and 255 octets), with no white space or
/// control characters anywhere: what a header such as `From: kijitora@exntil May 5` is not.
fn plausible_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && domain.len() <= 255
        && !a.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn classify_message(raw: &[u8]) -> Classification {
    let raw = &raw[..raw.len().min(MAX_INPUT)];
    if !looks_like_message(raw) {
        return Classification {
            kind: Kind::Unparseable,
            recipients: Vec::new(),
        };
    }
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return Classification {
            kind: Kind::Unparseable,
            recipients: Vec::new(),
        };
    };
    let mut parts = Parts::collect(&msg);
    if parts.delivery_status.is_empty() && !parts.is_feedback {
        // Broken MIME (a wrong boundary, odd parameter case): look for the fields anyway.
        let body = String::from_utf8_lossy(&raw[msg.root_part().offset_body as usize..]);
        if body.to_ascii_lowercase().contains("final-recipient:") {
            parts.delivery_status.push(body.into_owned());
        }
    }
    if parts.text.trim().is_empty() && parts.delivery_status.is_empty() {
        // A multipart whose boundary parameter was not folded into its Content-Type (Apache
        // James, Verizon): the parser finds no parts; read the raw body as text.
        let body = String::from_utf8_lossy(&raw[msg.root_part().offset_body as usize..]);
        parts.text = cut_original(&body).replace("\r\n", "\n");
    }
    if let Some(c) = ses_notification(&parts.text) {
        return c;
    }

    // 1. Feedback reports.
    if parts.is_feedback {
        return complaint(&msg, &parts);
    }
    // 2. Standard DSNs.
    if !parts.delivery_status.is_empty() {
        let recipients = dsn_recipients(&parts);
        if !recipients.is_empty() {
            let recipients = cap(recipients);
            let kind = if recipients.iter().all(|r| r.reason == Reason::Delivered) {
                Kind::Delivered
            } else {
                Kind::Bounce
            };
            let recipients = if kind == Kind::Bounce {
                recipients
                    .into_iter()
                    .filter(|r| r.reason != Reason::Delivered)
                    .collect()
            } else {
                recipients
            };
            return Classification { kind, recipients };
        }
    }
    // 3. Auto-replies.
    if is_auto_reply(&msg) && !looks_like_bounce(&msg, &parts) {
        let recipients = msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(|a| BouncedRecipient {
                address: a.to_ascii_lowercase(),
                action: "auto-replied".into(),
                status: None,
                reply_code: None,
                diagnostic: msg.subject().unwrap_or("").chars().take(200).collect(),
                reason: Reason::AutoReply,
                hard: false,
            })
            .into_iter()
            .collect();
        return Classification {
            kind: Kind::AutoReply,
            recipients,
        };
    }
    // 4. A mailing-list manager (fml) refusing a post: the list is the recipient.
    if let Some(c) = list_manager_error(&msg, &parts) {
        return c;
    }
    // 5. Non-standard bounces.
    if looks_like_bounce(&msg, &parts) {
        let recipients = cap(text_recipients(&msg, &parts));
        return Classification {
            kind: Kind::Bounce,
            recipients,
        };
    }
    Classification {
        kind: Kind::NotBounce,
        recipients: Vec::new(),
    }
}

fn cap(mut v: Vec<BouncedRecipient>) -> Vec<BouncedRecipient> {
    v.truncate(MAX_RECIPIENTS);
    v
}

fn fold(s: &str) -> String {
    let mut out = String::new();
    for w in s.split_whitespace() {
        if out.len() + w.len() + 1 > MAX_DIAGNOSTIC {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\n\
To: b-spring-1-aaaaaaaaaa@bounce.example.com\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\
\r\n\
--B\r\n\
Content-Type: text/plain\r\n\
\r\n\
I'm sorry to have to inform you that your message could not be delivered.\r\n\
--B\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.net\r\n\
\r\n\
Final-Recipient: rfc822; Gone@Example.ORG\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected:\r\n\
\x20User unknown in virtual mailbox table\r\n\
\r\n\
Final-Recipient: rfc822; full@example.org\r\n\
Action: delayed\r\n\
Status: 4.2.2\r\n\
Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\r\n\
--B--\r\n";

    #[test]
    fn standard_dsn() {
        let c = classify(DSN.as_bytes());
        assert_eq!(c.kind, Kind::Bounce);
        assert_eq!(c.recipients.len(), 2);
        let r = &c.recipients[0];
        assert_eq!(r.address, "gone@example.org");
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(r.reply_code, Some(550));
        assert_eq!(r.reason, Reason::UserUnknown);
        assert!(r.hard && c.suppresses(r));
        assert!(
            r.diagnostic
                .contains("User unknown in virtual mailbox table"),
            "{:?}",
            r.diagnostic
        );
        let r = &c.recipients[1];
        assert_eq!(
            (r.reason, r.hard, r.action.as_str()),
            (Reason::MailboxFull, false, "delayed")
        );
    }

    #[test]
    fn verp_address_wins_for_a_single_recipient() {
        let one = DSN.replace("Final-Recipient: rfc822; full@example.org", "X-Nothing: x");
        let c = classify_with(one.as_bytes(), Some("Real@Example.org"));
        assert_eq!(c.recipients[0].address, "real@example.org");
    }

    #[test]
    fn garbage_is_unparseable_or_not_a_bounce() {
        assert_eq!(classify(b"").kind, Kind::Unparseable);
        assert_eq!(classify(b"\x00\x01 binary").kind, Kind::Unparseable);
        let c = classify(b"From: a@b.example\r\nSubject: hello\r\n\r\nhi there\r\n");
        assert_eq!(c.kind, Kind::NotBounce);
    }

    #[test]
    fn an_address_with_white_space_is_no_recipient() {
        // Found by the fuzz target `dsn`: an auto-reply's broken From header was returned as
        // the recipient "kijitora@exntil may 5".
        let raw = b"From: kijitora@exntil May 5\r\nTo: me@example.net\r\nAuto-Submitted: auto-replied\r\nSubject: Away\r\n\r\nI am away.\r\n";
        let c = classify(raw);
        assert_eq!(c.kind, Kind::AutoReply);
        assert_eq!(c.recipients, vec![]);
        let ok = classify(
            &String::from_utf8_lossy(raw)
                .replace("exntil May 5", "example.org")
                .into_bytes(),
        );
        assert_eq!(ok.recipients[0].address, "kijitora@example.org");
    }

    #[test]
    fn fml_notice_and_unfolded_boundary() {
        let fml = "From: list-admin@example.org\nTo: me@example.net\nSubject: You are not member (list ML)\nX-MLServer: fml [fml 4.0.3]\n\nYou are not a member of this mailing list <list@example.org>.\n";
        let c = classify(fml.as_bytes());
        assert_eq!(c.kind, Kind::Bounce);
        assert_eq!(c.recipients[0].address, "list@example.org");
        assert_eq!(
            (c.recipients[0].reason, c.recipients[0].hard),
            (Reason::Policy, false)
        );
        // Apache James: the boundary parameter on a line of its own.
        let james = "From: post_master@example.com\nTo: me@example.net\nSubject: Re:Test\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: multipart/alternative;\nboundary=\"b2\"\n\n--b2\nContent-Type: text/plain\n\nError: Invalid user address\n\nError message below:\n550 - Requested action not taken: no such user here\n\nMessage details:\n  MAIL FROM: me@example.net\n  RCPT TO: gone@example.com\n\n--b2--\n\n--b1--\n";
        let c = classify(james.as_bytes());
        assert_eq!(c.kind, Kind::Bounce);
        assert_eq!(c.recipients[0].address, "gone@example.com");
    }

    #[test]
    fn arbitrary_bytes_do_not_panic() {
        // A small deterministic generator: no extra dependency, bounded time.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces: &[&[u8]] = &[
            b"Content-Type: multipart/report; boundary=\"b\"\r\n",
            b"--b\r\n",
            b"Content-Type: message/delivery-status\r\n\r\n",
            b"Final-Recipient: rfc822; ",
            b"Status: 5.",
            b"@",
            b"\r\n",
            b"\n\n",
            b"Action: failed\r\n",
            b"From: MAILER-DAEMON@x.y\r\n",
            b"X-Failed-Recipients: ",
            b"\xff\xfe",
            b"=?utf-8?b?",
            b"<",
            b".",
            b"5.1.",
        ];
        for _ in 0..2000 {
            let mut msg = Vec::new();
            let n = next() % 40;
            for _ in 0..n {
                let r = next();
                if r.is_multiple_of(3) {
                    msg.push((r >> 8) as u8);
                } else {
                    msg.extend_from_slice(pieces[(r >> 8) as usize % pieces.len()]);
                }
            }
            let _ = classify(&msg);
        }
    }
}
