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

use serde::Serialize;

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

/// Classifies a received message (see the module doc).
pub fn classify(raw: &[u8]) -> Classification {
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

/// A message starts with a header field (`Name:`), perhaps after an mbox `From ` line.
fn looks_like_message(raw: &[u8]) -> bool {
    let mut s = raw;
    while let Some(rest) = s.strip_prefix(b"\r\n").or_else(|| s.strip_prefix(b"\n")) {
        s = rest;
    }
    if s.starts_with(b"From ") {
        match s.iter().position(|&b| b == b'\n') {
            Some(i) => s = &s[i + 1..],
            None => return false,
        }
    }
    let line_end = s.iter().position(|&b| b == b'\n').unwrap_or(s.len());
    let line = &s[..line_end];
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon]
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b':'),
        _ => false,
    }
}

/// The parts of a message, sorted by what they are for us.
#[derive(Default)]
struct Parts {
    /// `message/delivery-status` (and global) bodies.
    delivery_status: Vec<String>,
    /// `message/feedback-report` bodies.
    feedback: Vec<String>,
    is_feedback: bool,
    /// Human-readable text of the top-level message (text parts, HTML stripped), with the
    /// copy of the original message cut off.
    text: String,
    /// Headers of the returned original message (message/rfc822 or text/rfc822-headers).
    original_headers: String,
}

impl Parts {
    fn collect(msg: &mail_parser::Message<'_>) -> Parts {
        use mail_parser::{MimeHeaders, PartType};
        let mut p = Parts::default();
        let top_ct = msg.root_part().content_type();
        if let Some(ct) = top_ct
            && ct.c_type.eq_ignore_ascii_case("multipart")
            && ct
                .c_subtype
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && ct
                .attribute("report-type")
                .is_some_and(|t| t.eq_ignore_ascii_case("feedback-report"))
        {
            p.is_feedback = true;
        }
        for (i, part) in msg.parts.iter().enumerate() {
            let (ctype, sub) = part
                .content_type()
                .map(|ct| {
                    (
                        ct.c_type.to_ascii_lowercase(),
                        ct.c_subtype.as_deref().unwrap_or("").to_ascii_lowercase(),
                    )
                })
                .unwrap_or_else(|| ("text".into(), "plain".into()));
            let contents = || -> String {
                match &part.body {
                    PartType::Text(t) => t.to_string(),
                    PartType::Html(h) => strip_html(h),
                    PartType::Binary(b) | PartType::InlineBinary(b) => {
                        String::from_utf8_lossy(b).into_owned()
                    }
                    PartType::Message(m) => String::from_utf8_lossy(m.raw_message()).into_owned(),
                    PartType::Multipart(_) => String::new(),
                }
            };
            match (ctype.as_str(), sub.as_str()) {
                ("message", "delivery-status" | "global-delivery-status") => {
                    p.delivery_status.push(contents());
                }
                ("message", "feedback-report") => {
                    p.is_feedback = true;
                    p.feedback.push(contents());
                }
                ("message", "rfc822" | "global") | ("text", "rfc822-headers")
                    if p.original_headers.is_empty() =>
                {
                    let c = contents();
                    let end = c.find("\n\n").or_else(|| c.find("\r\n\r\n"));
                    p.original_headers = c[..end.unwrap_or(c.len())].to_string();
                }
                ("message", "rfc822" | "global") | ("text", "rfc822-headers") => {}
                ("multipart", _) => {}
                ("text", _) | ("message", _) if i == 0 || !part.is_message() => {
                    // Text of the report itself (a text/plain part, or the whole body).
                    let c = contents();
                    if !p.text.is_empty() {
                        p.text.push('\n');
                    }
                    p.text.push_str(&c);
                }
                _ => {}
            }
        }
        p.text = cut_original(&p.text).replace("\r\n", "\n");
        p
    }
}

/// Lines that start the copy of the original message in a text-only bounce.
const COPY_MARKERS: &[&str] = &[
    "below this line is a copy of the message",
    "this is a copy of the message",
    "original message follows",
    "original message header",
    "--- original message",
    "-----original message-----",
    "----- original message -----",
    "returned message",
    "message headers follow",
    "the header of the original message",
    "unsent message below",
    "content-type: message/rfc822",
    "--- the following is the returned message",
    "----- the following addresses had permanent fatal errors", // not a marker: kept below
];

fn cut_original(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut cut = text.len();
    for m in &COPY_MARKERS[..COPY_MARKERS.len() - 1] {
        for (i, _) in lower.match_indices(m) {
            // Only a marker if there is some failure text before it, and if it starts its line
            // (perhaps after dashes or a short word): "…from the attached returned message."
            // in Postfix's preamble is not one.
            let line_start = lower[..i].rfind('\n').map_or(0, |n| n + 1);
            let prefix = lower[line_start..i].trim_matches(|c: char| !c.is_alphanumeric());
            if i > 20 && prefix.len() <= 12 {
                cut = cut.min(i);
                break;
            }
        }
    }
    // Cut at a char boundary.
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

fn strip_html(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    let mut in_tag = false;
    for c in h.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

// ---------------------------------------------------------------------------------------------
// RFC 3464
// ---------------------------------------------------------------------------------------------

/// Header-like fields of a block, with continuation lines unfolded; names lowercased.
fn fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) {
                out.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    out
}

fn blocks(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    let mut blocks = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    blocks
}

fn dsn_recipients(parts: &Parts) -> Vec<BouncedRecipient> {
    let mut out = Vec::new();
    for ds in &parts.delivery_status {
        for block in blocks(ds) {
            let f = fields(&block);
            let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
            // A block may hold several recipients when the MTA forgot the blank lines.
            let starts: Vec<usize> = f
                .iter()
                .enumerate()
                .filter(|(_, (k, _))| k == "final-recipient")
                .map(|(i, _)| i)
                .collect();
            if starts.len() > 1 {
                for (n, &s) in starts.iter().enumerate() {
                    let end = starts.get(n + 1).copied().unwrap_or(f.len());
                    if let Some(r) = dsn_recipient(&f[s..end], parts) {
                        out.push(r);
                    }
                }
                continue;
            }
            if get("final-recipient").is_none()
                && get("original-recipient").is_none()
                && get("x-actual-recipient").is_none()
            {
                continue;
            }
            if let Some(r) = dsn_recipient(&f, parts) {
                out.push(r);
            }
        }
    }
    // One entry per address (some MTAs repeat a recipient).
    let mut seen = std::collections::HashSet::new();
    out.retain(|r| seen.insert(r.address.clone()));
    out
}

fn dsn_recipient(f: &[(String, String)], parts: &Parts) -> Option<BouncedRecipient> {
    let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let addr = [
        "final-recipient",
        "original-recipient",
        "x-actual-recipient",
    ]
    .iter()
    .filter_map(|n| get(n))
    .find_map(address_in_field)?;
    let action = get("action").unwrap_or("").trim().to_ascii_lowercase();
    let action = action
        .split_whitespace()
        .next()
        .unwrap_or("failed")
        .to_string();
    let mut diagnostic = get("diagnostic-code")
        .map(|d| match d.split_once(';') {
            Some((t, rest)) if t.trim().len() < 20 && !t.contains(' ') => rest.trim().to_string(),
            _ => d.trim().to_string(),
        })
        .unwrap_or_default();
    let status_field = get("status").and_then(find_status);
    let diag_status = find_status(&diagnostic);
    // A specific code in the diagnostic beats a generic x.0.0 in the Status field.
    let status = match (status_field, diag_status) {
        (Some(s), Some(d)) if s.ends_with(".0.0") && !d.ends_with(".0.0") => Some(d),
        (Some(s), _) => Some(s),
        (None, d) => d,
    };
    if diagnostic.is_empty() {
        // Some MTAs put the explanation only in the text part.
        diagnostic = paragraph_about(&parts.text, &addr).unwrap_or_default();
    }
    let reply_code = find_reply_code(&diagnostic);
    let delivered = matches!(
        action.as_str(),
        "delivered" | "relayed" | "expanded" | "deliverable"
    ) || (action.is_empty()
        && status.as_deref().is_some_and(|s| s.starts_with('2')));
    let (reason, hard) = if delivered {
        (Reason::Delivered, false)
    } else {
        let about = paragraph_about(&parts.text, &addr).unwrap_or_default();
        let mut reason = decide_reason(&diagnostic, status.as_deref());
        if reason == Reason::Other {
            reason = decide_reason(&about, status.as_deref());
            if reason == Reason::Other && action == "delayed" {
                reason = Reason::Expired;
            }
        }
        let context = format!("{diagnostic}\n{about}").to_lowercase();
        let command = smtp_command(&context, Some(&addr))
            .or_else(|| smtp_command(&parts.text.to_lowercase(), Some(&addr)));
        reason = user_unknown_or_filtered(reason, status.as_deref(), command, &context);
        let temp = status.as_deref().is_some_and(|s| s.starts_with('4'))
            || reply_code.is_some_and(|c| c / 100 == 4);
        (reason, is_hard(reason, temp))
    };
    Some(BouncedRecipient {
        address: addr,
        action: if action.is_empty() {
            "failed".into()
        } else {
            action
        },
        status,
        reply_code,
        diagnostic: fold(&diagnostic),
        reason,
        hard,
    })
}

/// `rfc822; <a@b>` → `a@b`.
fn address_in_field(v: &str) -> Option<String> {
    let v = match v.split_once(';') {
        Some((_, rest)) => rest,
        None => v,
    };
    first_address(v)
}

fn is_hard(reason: Reason, temporary: bool) -> bool {
    match reason {
        Reason::UserUnknown | Reason::HostUnknown | Reason::Moved => true,
        Reason::NotAccept => !temporary,
        _ => false,
    }
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

// ---------------------------------------------------------------------------------------------
// Status codes and reasons
// ---------------------------------------------------------------------------------------------

/// The first RFC 3463 code (`5.1.1`) in `s`, preferring 4xx/5xx over 2xx.
pub fn find_status(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut best: Option<String> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.');
        if boundary && matches!(c, b'2' | b'4' | b'5') && b.get(i + 1) == Some(&b'.') {
            let mut j = i + 2;
            let d1 = digits(b, &mut j, 3);
            if d1 > 0 && b.get(j) == Some(&b'.') {
                j += 1;
                let d2 = digits(b, &mut j, 3);
                let end_ok = b.get(j).is_none_or(|&e| {
                    !(e.is_ascii_alphanumeric()
                        || (e == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit)))
                });
                if d2 > 0 && end_ok {
                    let code = &s[i..j];
                    if c != b'2' {
                        return Some(code.to_string());
                    }
                    best.get_or_insert_with(|| code.to_string());
                    i = j;
                    continue;
                }
            }
        }
        i += 1;
    }
    best
}

fn digits(b: &[u8], j: &mut usize, max: usize) -> usize {
    let start = *j;
    while *j < b.len() && b[*j].is_ascii_digit() && *j - start < max {
        *j += 1;
    }
    *j - start
}

/// The first SMTP reply code (4xx/5xx) in `s`, as a word followed by space, `-` or end.
fn find_reply_code(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        if matches!(b[i], b'4' | b'5')
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.' || b[i - 1] == b'#'))
            && b.get(i + 3)
                .is_none_or(|&e| e == b' ' || e == b'-' || e == b'\n' || e == b'\r')
        {
            let n = (b[i] - b'0') as u16 * 100
                + (b[i + 1] - b'0') as u16 * 10
                + (b[i + 2] - b'0') as u16;
            if matches!(n / 10, 42 | 45 | 50 | 52 | 53 | 54 | 55) {
                return Some(n);
            }
        }
    }
    None
}

/// Keyword rules, tried in order on the lowercased text.
const RULES: &[(Reason, &[&str])] = &[
    // The sender's side (its domain, its IP, its authentication) is not the recipient's fault.
    (
        Reason::Policy,
        &[
            "domain of sender",
            "unroutable sender",
            "permission to post",
            "sender address rejected",
            "sender domain",
            "spamhaus",
            "blacklist",
            "blocklist",
            "block list",
            "black list",
            "dnsbl",
            "client host blocked",
            "client host rejected",
            "ip source",
            "spf",
            "dkim",
            "dmarc",
            "authentication checks",
            "reverse dns",
            "ptr record",
            "ip name lookup failed",
            "recipient preferences",
            "too many recipients",
        ],
    ),
    (
        Reason::Spam,
        &[
            "spam",
            "junk mail",
            "virus",
            "malware",
            "unsolicited",
            "bulk mail",
            "content filter",
            "message content",
            "rejected due to content",
            "phish",
        ],
    ),
    (
        Reason::MailboxFull,
        &[
            "mailbox full",
            "mailbox is full",
            "mailbox was full",
            "quota",
            "storage",
            "full mailbox",
            "too much mail",
            "mailbox size limit",
            "mailfolder is full",
            "maildir is full",
            "box is full",
            "is over the limit",
            "exceeds the size of the mailbox",
            "mailbox has exceeded",
            "account is full",
            "would exceed",
            "mailbox exceeds",
            "mailbox exceeded",
            "'s mailbox",
            "exceeded the local limit",
        ],
    ),
    (
        Reason::MessageTooBig,
        &[
            "message too big",
            "message too large",
            "too large",
            "size exceeds",
            "message size",
            "exceeds size",
            "exceeded the maximum",
            "message length exceeds",
            "message file too big",
            "size limit",
            "too big",
        ],
    ),
    (
        Reason::Suspended,
        &[
            "suspended",
            "disabled",
            "inactive",
            "deactivated",
            "not active",
            "account is locked",
            "locked account",
            "account has been closed",
            "is frozen",
            "account is blocked",
            "has been frozen",
            "is not accepting mail",
        ],
    ),
    (
        Reason::Moved,
        &[
            "has moved",
            "address changed",
            "moved to",
            "no longer valid",
        ],
    ),
    (
        Reason::NotAccept,
        &[
            "null mx",
            "doesn't receive email",
            "does not receive email",
            "no smtp service",
            "couldn't find a mail exchanger",
            "does not accept mail",
            "no mx record",
        ],
    ),
    (
        Reason::Network,
        &[
            "malformed or unexpected name server reply",
            "hop count",
            "routing loop",
            "network error",
            "too many hops",
        ],
    ),
    (
        Reason::HostUnknown,
        &[
            "host unknown",
            "unknown host",
            "host not found",
            "domain not found",
            "no such domain",
            "domain does not exist",
            "unrouteable",
            "unroutable",
            "name or service not known",
            "host or domain name not found",
            "domain name not found",
            "unknown domain",
            "nxdomain",
            "no mx",
            "mx record",
            "dns error",
            "domain lookup failed",
            "domain is not reachable",
            "name server",
            "hostname not found",
            "host name lookup failure",
        ],
    ),
    (
        Reason::UserUnknown,
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "user not found",
            "does not exist",
            "doesn't exist",
            "not exist",
            "mailbox not found",
            "recipient not found",
            "invalid recipient",
            "no mailbox",
            "unknown recipient",
            "recipient unknown",
            "not recognized",
            "not a valid mailbox",
            "no such mailbox",
            "invalid mailbox",
            "unknown local part",
            "unknown local-part",
            "no such recipient",
            "address unknown",
            "unknown address",
            "bad destination mailbox",
            "mailbox does not",
            "addressee unknown",
            "no such address",
            "not a known user",
            "user doesn't",
            "user not known",
            "invalid address",
            "account does not",
            "unknown or illegal alias",
            "mailbox unavailable",
            "no account",
            "address is correct",
            "not our customer",
            "user is unknown",
            "recipient no longer",
            "unknown mailbox",
            "mailbox is unavailable",
            "is not a valid",
            "user invalid",
            "not listed",
            "address not present",
            "no valid recipients",
            "undeliverable address",
            "dosn't exist",
            "not found in",
            "no longer available",
            "does not have an account",
            "user_unknown",
            "userunknown",
            "nosuchuser",
            "unknown recipients",
            "address rejected.",
        ],
    ),
    (
        Reason::Expired,
        &[
            "connection timed out",
            "timed out",
            "retry timeout exceeded",
            "delivery time expired",
            "message expired",
            "was not delivered within",
            "could not be delivered within",
            "delivery period",
            "failed 20 attempts",
            "will be retried",
            "retry time not reached",
        ],
    ),
    (
        Reason::Policy,
        &[
            "blocked",
            "denied",
            "not allowed",
            "policy",
            "authenticat",
            "reverse lookup",
            "relay",
            "rbl",
            "reputation",
            "not authorized",
            "unauthorized",
            "prohibited",
            "refused",
            "rejected",
            "too many",
            "rate limit",
            "throttl",
            "tls",
            "starttls",
            "filtered",
            "filter",
            "banned",
            "not permitted",
            "sender address",
            "your ip",
            "listed",
            "security",
            "unacceptable",
            "not accepted",
            "permission",
            "forbidden",
        ],
    ),
    (
        Reason::Network,
        &[
            "connection refused",
            "network",
            "no route",
            "could not connect",
            "couldn't connect",
            "lost connection",
            "connection reset",
            "unable to connect",
            "connection dropped",
            "conversation with",
            "connect to",
            "no answer",
            "establish an smtp connection",
            "not reachable",
        ],
    ),
    (
        Reason::System,
        &[
            "system error",
            "internal error",
            "local error",
            "mailer error",
            "configuration",
            "loop",
            "temporary local problem",
            "server error",
            "out of memory",
            "disk",
            "resources",
            "system is busy",
            "system not available",
            "program",
            "mail system",
            "service unavailable",
            "service currently unavailable",
            "ldap",
            "couldn't create",
            "pipe to",
            "upstream error",
        ],
    ),
    (
        Reason::Expired,
        &[
            "too long in queue",
            "in the queue too long",
            "giving up",
            "gave up",
            "has expired",
            "timeout waiting",
            "time limit",
            "maximum time",
            "for more than",
            "queue timeout",
            "delayed for",
            "retry period",
            "expired",
        ],
    ),
];

/// Reason from a status code alone, if the code is specific enough.
fn reason_from_status(status: &str) -> Option<Reason> {
    let mut it = status.split('.');
    let _class = it.next()?;
    let subject = it.next()?;
    let detail = it.next()?;
    Some(match (subject, detail) {
        ("1", "1") => Reason::UserUnknown,
        ("1", "2") => Reason::HostUnknown,
        ("1", "6") => Reason::Moved,
        ("1", "10") => Reason::NotAccept,
        ("2", "1") => Reason::Suspended,
        ("2", "2") => Reason::MailboxFull,
        ("2", "3") | ("3", "4") => Reason::MessageTooBig,
        ("3", "1") | ("3", "2") | ("3", "5") => Reason::System,
        ("4", "4") => Reason::HostUnknown,
        ("4", "1") | ("4", "2") | ("4", "6") => Reason::Network,
        ("4", "7") => Reason::Expired,
        ("6", _) => Reason::Spam,
        ("7", "1") | ("7", "0") => Reason::Policy,
        ("7", d) if d.len() == 2 => Reason::Policy,
        ("7", _) => Reason::Policy,
        _ => return None,
    })
}

/// Decides the reason from diagnostic text and status: a specific status code wins unless
/// the text says something more telling.
fn decide_reason(text: &str, status: Option<&str>) -> Reason {
    let from_text = reason_from_text(text);
    let from_status = status.and_then(reason_from_status);
    let lower = text.to_lowercase();
    // A mailbox rejected at the end of DATA is a content filter speaking, not a dead address.
    let after_data = rejected_after_data(&lower);
    // The sender-side words (first rule: blocklists, SPF/DKIM, "recipient preferences",
    // rate limits) beat any status: a 5.1.1 that says so is not a dead mailbox.
    let strong_policy = RULES[0].1.iter().any(|w| lower.contains(w));
    let r = match (from_status, from_text) {
        (_, Some(Reason::Policy)) if strong_policy => Reason::Policy,
        // A specific mailbox status (moved, disabled) beats a generic "user unknown".
        (Some(s @ Reason::Moved), Some(Reason::UserUnknown)) => s,
        // Words that name the problem beat a code that is often reused loosely.
        (
            _,
            Some(
                t @ (Reason::UserUnknown
                | Reason::MailboxFull
                | Reason::HostUnknown
                | Reason::Suspended
                | Reason::MessageTooBig
                | Reason::Spam
                | Reason::NotAccept
                | Reason::Moved),
            ),
        ) => t,
        (Some(Reason::Policy | Reason::Network | Reason::System), Some(t)) => t,
        (Some(s), _) => s,
        (None, Some(t)) => t,
        (None, None) => Reason::Other,
    };
    // A local delivery agent failing (procmail, maildrop) is a mailer error, whatever the
    // status says and whatever it says about the user.
    let local_agent = ["procmail:", "maildrop:", "couldn't create \"/var/"]
        .iter()
        .any(|w| lower.contains(w));
    // A DNS lookup that failed with a temporary status is a network problem, not a domain
    // known not to exist.
    let dns_temporary = r == Reason::HostUnknown
        && status.is_some_and(|s| s.starts_with('4'))
        && ["name server", "dns error", "lookup"]
            .iter()
            .any(|w| lower.contains(w));
    // Exchange Online's directory-based edge blocking: "550 5.4.1 Recipient address rejected:
    // Access denied" is its answer for a recipient not in the tenant's directory.
    let dbeb = lower.contains("recipient address rejected: access denied");
    if local_agent {
        Reason::System
    } else if dbeb {
        Reason::UserUnknown
    } else if dns_temporary {
        Reason::Network
    } else if r == Reason::UserUnknown && after_data {
        Reason::Policy
    } else {
        r
    }
}

/// Whether the text says the rejection came after DATA (a content filter), not at RCPT.
fn rejected_after_data(lower: &str) -> bool {
    smtp_command(lower, None) == Some(Command::Data)
}

/// The SMTP command a rejection answered, as far as the report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Mail,
    Rcpt,
    Data,
}

/// The command the report names (`lower`: lowercased text; Postfix "in reply to RCPT TO command", Exim "after RCPT
/// TO:", a Sendmail transcript's `>>>` line before the `<<<` error, …). With `addr`, a
/// transcript's error line naming that address wins over the first error.
fn smtp_command(lower: &str, addr: Option<&str>) -> Option<Command> {
    let mut last: Option<Command> = None;
    let mut first_error: Option<Option<Command>> = None;
    let lines: Vec<&str> = lower.lines().map(str::trim_start).collect();
    for (i, &line) in lines.iter().enumerate() {
        if let Some(cmd) = line.strip_prefix(">>> ") {
            let cmd = cmd.trim_start();
            last = if cmd.starts_with("rcpt") {
                Some(Command::Rcpt)
            } else if cmd.starts_with("mail") {
                Some(Command::Mail)
            } else if cmd.starts_with("data") || cmd == "." {
                Some(Command::Data)
            } else {
                None
            };
        } else if line.starts_with("<<< 4") || line.starts_with("<<< 5") {
            // With PIPELINING, Sendmail shows the RCPT replies after `>>> DATA`: every reply
            // before the last one of that command answered a RCPT.
            let more = lines[i + 1..]
                .iter()
                .take_while(|l| !l.starts_with(">>> "))
                .any(|l| l.starts_with("<<< "));
            let cmd = if last == Some(Command::Data) && more {
                Some(Command::Rcpt)
            } else {
                last
            };
            if addr.is_some_and(|a| line.contains(a)) {
                return cmd;
            }
            first_error.get_or_insert(cmd);
        }
    }
    if let Some(c) = first_error {
        return c;
    }
    let text = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    let data = [
        "end of data",
        "after data",
        "(data)",
        "data command",
        "after end of data",
    ]
    .iter()
    .any(|p| text.contains(p));
    let rcpt = [
        "rcpt to command",
        "after rcpt to",
        "in reply to rcpt",
        "rcpt to:<",
        "(rcpt)",
        "our rcpt to",
        "rcpt to response",
        "smtp:rcpt",
    ]
    .iter()
    .any(|p| text.contains(p));
    let mail = [
        "mail from command",
        "after mail from",
        "in reply to mail from",
    ]
    .iter()
    .any(|p| text.contains(p));
    match (data, rcpt, mail) {
        (true, false, _) => Some(Command::Data),
        (false, true, _) => Some(Command::Rcpt),
        (false, false, true) => Some(Command::Mail),
        _ => None,
    }
}

/// "No such user" is a dead address when it answered RCPT, or when the status says so (x.1.1)
/// and no later command is named; the same words after DATA, or with neither a RCPT nor a
/// x.1.1 status (a 5.7.1, a bare 550 from a filtering gateway), are a filter speaking — soft,
/// like sisimai's "filtered".
fn user_unknown_or_filtered(
    reason: Reason,
    status: Option<&str>,
    command: Option<Command>,
    text: &str,
) -> Reason {
    if reason != Reason::UserUnknown {
        return reason;
    }
    let from_status = status.and_then(reason_from_status);
    match command {
        Some(Command::Rcpt) => Reason::UserUnknown,
        Some(Command::Data) => Reason::Policy,
        _ if from_status == Some(Reason::Policy) => Reason::Policy,
        // A remote reply quoted in the text with an x.7.x code ("550-'5.7.1 … Access denied'")
        // is an access verdict, whatever the local summary calls it.
        _ if mentions_security_status(text) => Reason::Policy,
        // "5.2.1 User unknown" with no command named: the mailbox exists but is disabled.
        None if from_status == Some(Reason::Suspended) => Reason::Suspended,
        // Like sisimai: without an x.1.1 code, the bare "user unknown" / "no such user" that
        // filtering gateways also answer is a dead address only when it answered RCPT.
        None if from_status != Some(Reason::UserUnknown) && only_generic_unknown(text) => {
            Reason::Policy
        }
        _ => Reason::UserUnknown,
    }
}

/// Words every "no such mailbox" filter also uses; the other user-unknown wordings ("not
/// recognized", "does not exist", "RecipientNotFound", …) come from the mailbox's own server.
const GENERIC_UNKNOWN: &[&str] = &[
    "user unknown",
    "unknown user",
    "no such user",
    "mailbox unavailable",
    "user doesn't",
    "doesn't have a",
];

/// `text` quotes an RFC 3463 code of the security/policy class (`5.7.1`, `4.7.0`).
fn mentions_security_status(text: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices(".7.").any(|(i, _)| {
        i > 0
            && matches!(b[i - 1], b'4' | b'5')
            && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'.'))
            && b.get(i + 3).is_some_and(u8::is_ascii_digit)
    })
}

/// `text` says "user unknown" only in the generic words, with no x.1.1 code anywhere.
fn only_generic_unknown(text: &str) -> bool {
    let lower = text.to_lowercase();
    let words = RULES
        .iter()
        .find(|(r, _)| *r == Reason::UserUnknown)
        .map_or(&[][..], |(_, w)| *w);
    // Yahoo's own "554 delivery error: dd This user doesn't have a yahoo.com account".
    let yahoo_dd = lower.contains("delivery error: dd ");
    !yahoo_dd
        && GENERIC_UNKNOWN.iter().any(|w| lower.contains(w))
        && !words
            .iter()
            .any(|w| !GENERIC_UNKNOWN.contains(w) && lower.contains(w))
        && !lower.contains(".1.1")
}

pub fn reason_from_text(text: &str) -> Option<Reason> {
    let lower = text.to_lowercase();
    if lower.trim().is_empty() {
        return None;
    }
    RULES
        .iter()
        .find(|(_, words)| words.iter().any(|w| lower.contains(w)))
        .map(|(r, _)| *r)
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

fn is_addr_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
}

/// Every plausible address in `s`, lowercased, in order.
fn addresses(s: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    for (at, _) in s.match_indices('@') {
        let mut start = at;
        while start > 0 && is_addr_char(b[start - 1] as char) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'-' || b[end] == b'.')
        {
            end += 1;
        }
        let local = s[start..at].trim_matches('.');
        let domain = s[at + 1..end].trim_matches(|c| c == '.' || c == '-');
        if local.is_empty() || local.len() > 64 || !domain.contains('.') || domain.len() > 255 {
            continue;
        }
        if domain
            .rsplit('.')
            .next()
            .is_none_or(|tld| tld.len() < 2 || tld.bytes().all(|c| c.is_ascii_digit()))
        {
            continue;
        }
        let local = local.trim_start_matches(['\'', '`', '=', '/', '{', '|']);
        if local.is_empty() {
            continue;
        }
        out.push((start, format!("{local}@{domain}").to_ascii_lowercase()));
    }
    out
}

fn first_address(s: &str) -> Option<String> {
    addresses(s).into_iter().next().map(|(_, a)| a)
}

/// Addresses that are never the bounced recipient.
fn is_system_address(a: &str) -> bool {
    let local = a.split('@').next().unwrap_or("");
    matches!(
        local,
        "mailer-daemon"
            | "postmaster"
            | "mailerdaemon"
            | "mail-daemon"
            | "root"
            | "nobody"
            | "noreply"
            | "no-reply"
            | "abuse"
            | "daemon"
            | "mdaemon"
            | "bounce"
            | "bounces"
    ) || local.starts_with("mailer-daemon")
        || local.starts_with("postmaster")
}

/// The paragraph of `text` that names `addr` (the line with it and the lines after it up to
/// the next blank line, at most a few lines).
fn paragraph_about(text: &str, addr: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let i = lower.find(addr)?;
    let line_start = lower[..i].rfind('\n').map_or(0, |n| n + 1);
    let mut out = String::new();
    let mut lines = 0;
    for line in text[line_start..].lines() {
        if line.trim().is_empty() {
            if lines > 1 {
                break;
            }
            lines += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
        lines += 1;
        if lines >= 12 {
            break;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Amazon SES notifications (JSON, as SNS e-mails them)
// ---------------------------------------------------------------------------------------------

fn ses_notification(text: &str) -> Option<Classification> {
    let i = text.find("{\"notificationType\"")?;
    // SNS wraps long lines with "!\n ".
    let json = text[i..].replace("!\n ", "").replace("!\r\n ", "");
    let v: serde_json::Value = serde_json::Deserializer::from_str(&json)
        .into_iter::<serde_json::Value>()
        .next()?
        .ok()?;
    let kind = v.get("notificationType")?.as_str()?;
    let list = |obj: &str, key: &str| -> Vec<serde_json::Value> {
        v.get(obj)
            .and_then(|o| o.get(key))
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let mk = |address: String, action: &str, status: Option<String>, diag: String, reason, hard| {
        BouncedRecipient {
            address: address.to_ascii_lowercase(),
            action: action.into(),
            reply_code: find_reply_code(&diag),
            status,
            diagnostic: fold(&diag),
            reason,
            hard,
        }
    };
    let s = |x: &serde_json::Value, k: &str| x.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (kind, recipients) = match kind {
        "Complaint" => (
            Kind::Complaint,
            list("complaint", "complainedRecipients")
                .iter()
                .filter_map(|r| s(r, "emailAddress"))
                .map(|a| {
                    mk(
                        a,
                        "complained",
                        None,
                        "feedback-type: abuse".into(),
                        Reason::Complaint,
                        false,
                    )
                })
                .collect(),
        ),
        "Delivery" => (
            Kind::Delivered,
            v.get("delivery")
                .and_then(|d| d.get("recipients"))
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .map(|a| {
                    mk(
                        a.to_string(),
                        "delivered",
                        None,
                        String::new(),
                        Reason::Delivered,
                        false,
                    )
                })
                .collect(),
        ),
        "Bounce" => {
            let permanent = v
                .get("bounce")
                .and_then(|b| s(b, "bounceType"))
                .is_some_and(|t| t == "Permanent");
            (
                Kind::Bounce,
                list("bounce", "bouncedRecipients")
                    .iter()
                    .filter_map(|r| {
                        let diag = s(r, "diagnosticCode").unwrap_or_default();
                        let status = s(r, "status").or_else(|| find_status(&diag));
                        let mut reason = decide_reason(&diag, status.as_deref());
                        if reason == Reason::Other && permanent {
                            reason = Reason::UserUnknown;
                        }
                        let temp = !permanent;
                        // SES reports a bounce only once it stopped trying: never a warning.
                        Some(mk(
                            s(r, "emailAddress")?,
                            "failed",
                            status,
                            diag,
                            reason,
                            is_hard(reason, temp),
                        ))
                    })
                    .collect(),
            )
        }
        _ => return None,
    };
    Some(Classification {
        kind,
        recipients: cap(recipients),
    })
}

// ---------------------------------------------------------------------------------------------
// Feedback reports and auto-replies
// ---------------------------------------------------------------------------------------------

fn complaint(msg: &mail_parser::Message<'_>, parts: &Parts) -> Classification {
    let mut addrs: Vec<String> = Vec::new();
    for fb in &parts.feedback {
        for (k, v) in fields(fb) {
            if k == "original-rcpt-to" || k == "removal-recipient" {
                addrs.extend(addresses(&v).into_iter().map(|(_, a)| a));
            }
        }
    }
    if addrs.is_empty() {
        for (k, v) in fields(&parts.original_headers) {
            if k == "to" {
                addrs.extend(addresses(&v).into_iter().map(|(_, a)| a));
            }
        }
    }
    if addrs.is_empty()
        && let Some(a) = msg.to().and_then(|a| a.first()).and_then(|a| a.address())
    {
        addrs.push(a.to_ascii_lowercase());
    }
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(a.clone()));
    let feedback_type = parts
        .feedback
        .iter()
        .flat_map(|f| fields(f))
        .find(|(k, _)| k == "feedback-type")
        .map(|(_, v)| v)
        .unwrap_or_else(|| "abuse".into());
    Classification {
        kind: Kind::Complaint,
        recipients: cap(addrs
            .into_iter()
            .map(|address| BouncedRecipient {
                address,
                action: "complained".into(),
                status: None,
                reply_code: None,
                diagnostic: format!("feedback-type: {feedback_type}"),
                reason: Reason::Complaint,
                hard: false,
            })
            .collect()),
    }
}

fn header_lower(msg: &mail_parser::Message<'_>, name: &str) -> String {
    msg.header_raw(name.to_string())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_auto_reply(msg: &mail_parser::Message<'_>) -> bool {
    let auto = header_lower(msg, "Auto-Submitted");
    if auto.starts_with("auto-replied") || auto.starts_with("auto-generated") {
        return true;
    }
    if msg.header_raw("X-Autoreply").is_some()
        || msg.header_raw("X-Autorespond").is_some()
        || header_lower(msg, "Precedence").starts_with("auto_reply")
        || msg.header_raw("X-Auto-Response-Suppress").is_some()
            && msg
                .subject()
                .is_some_and(|s| s.to_lowercase().contains("reply"))
    {
        return true;
    }
    let subject = msg.subject().unwrap_or("").to_lowercase();
    [
        "auto reply",
        "auto-reply",
        "autoreply",
        "automatic reply",
        "out of office",
        "out of the office",
        "away from",
        "away until",
        "vacation",
        "abwesenheit",
        "auto:",
    ]
    .iter()
    .any(|p| subject.contains(p))
}

// ---------------------------------------------------------------------------------------------
// Non-standard bounces
// ---------------------------------------------------------------------------------------------

const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "undelivered",
    "delivery status",
    "failure notice",
    "returned mail",
    "delivery fail",
    "mail delivery",
    "non-delivery",
    "nondeliver",
    "not delivered",
    "could not be delivered",
    "delivery problem",
    "rejected",
    "returned to sender",
    "delivery notification",
    "mail system error",
    "failed delivery",
    "bounce",
    "unzustellbar",
    "delivery report",
    "warning: message",
    "error sending",
    "nicht zugestellt",
    "not be delivered",
    "delivery has failed",
    "message not delivered",
    "mail error",
    "delivery incomplete",
    "permanent error",
];

const BOUNCE_BODY: &[&str] = &[
    "this is the qmail-send program",
    "created automatically by mail delivery software",
    "could not be delivered to one or more",
    "did not reach the following recipient",
    "delivery to the following recipient",
    "the following addresses had permanent fatal errors",
    "transcript of session follows",
    "delivery has failed to these recipients",
    "this is the mail system at host",
    "i'm afraid i wasn't able to deliver",
    "undeliverable",
    "permanent error",
    "delivery failed",
    "could not be delivered",
    "message was not delivered",
    "your message to",
    "unable to deliver",
    "the following recipient",
    "delivery to the following",
    "wasn't delivered",
    "couldn't be delivered",
    "failed to deliver",
    "message you sent",
    // Apache James (Verizon's gateways too): "Error message below: … Message details: …".
    "error message below:",
];

fn looks_like_bounce(msg: &mail_parser::Message<'_>, parts: &Parts) -> bool {
    if msg.header_raw("X-Failed-Recipients").is_some() {
        return true;
    }
    let from = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_ascii_lowercase();
    let from_daemon = is_system_address(&from)
        || msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.name())
            .is_some_and(|n| {
                let n = n.to_ascii_lowercase();
                n.contains("mail delivery")
                    || n.contains("mailer-daemon")
                    || n.contains("postmaster")
            });
    let subject = msg.subject().unwrap_or("").to_lowercase();
    let subject_says = BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s));
    let text = parts.text.to_lowercase();
    let body_says = BOUNCE_BODY.iter().any(|s| text.contains(s));
    from_daemon || subject_says || body_says
}

/// fml's error notices (`X-MLServer: fml`): "You are not a member of this mailing list
/// <list@…>", "Duplicated Message-ID in <list@…>" (a loop alert). The list address is the first
/// `<address>` in the notice; the verdict is always soft (the list refused the post; nothing
/// says an address is dead).
fn list_manager_error(msg: &mail_parser::Message<'_>, parts: &Parts) -> Option<Classification> {
    let server = msg
        .header_raw("X-MLServer")
        .or_else(|| msg.header_raw("X-ML-Server"))?
        .to_ascii_lowercase();
    if !server.contains("fml") {
        return None;
    }
    let text = &parts.text;
    let lower = text.to_lowercase();
    let reason = if lower.contains("not a member") || lower.contains("not member") {
        Reason::Policy
    } else if lower.contains("loop") || lower.contains("duplicated message-id") {
        Reason::System
    } else {
        let subject = msg.subject().unwrap_or("").to_lowercase();
        if !(subject.contains("loop alert") || subject.contains("error")) {
            return None;
        }
        Reason::System
    };
    let notice = lower.split("original mail as follows").next().unwrap_or("");
    let start = notice.find('<')?;
    let end = notice[start..].find('>')? + start;
    let address = first_address(&notice[start + 1..end])?;
    let line = text
        .lines()
        .find(|l| l.to_lowercase().contains(&address))
        .unwrap_or("");
    Some(Classification {
        kind: Kind::Bounce,
        recipients: vec![BouncedRecipient {
            address,
            action: "failed".into(),
            status: None,
            reply_code: None,
            diagnostic: fold(line),
            reason,
            hard: false,
        }],
    })
}

fn text_recipients(msg: &mail_parser::Message<'_>, parts: &Parts) -> Vec<BouncedRecipient> {
    let text = &parts.text;
    let lower = text.to_ascii_lowercase();
    // Addresses of the bounce itself: never the failed recipient.
    let mut own: Vec<String> = Vec::new();
    for a in [msg.from(), msg.to(), msg.reply_to()].into_iter().flatten() {
        own.extend(
            a.iter()
                .filter_map(|a| a.address())
                .map(|a| a.to_ascii_lowercase()),
        );
    }
    // Candidates, best source first.
    let mut cands: Vec<String> = Vec::new();
    if let Some(v) = msg.header_raw("X-Failed-Recipients") {
        cands.extend(addresses(v).into_iter().map(|(_, a)| a));
    }
    if cands.is_empty() {
        // Addresses that start a line (qmail `<a@b>:`, Exim `  a@b`, Exchange `a@b on …`,
        // Sendmail `<a@b>... User unknown`) or follow a "recipient" label.
        for (pos, a) in addresses(text) {
            let line_start = lower[..pos].rfind('\n').map_or(0, |n| n + 1);
            let before = lower[line_start..pos].trim();
            let before = before.trim_end_matches(['<', '"', '\'', '(', '[']);
            let leading = before.is_empty()
                || before.ends_with("rcpt to:")
                || before.ends_with("recipient:")
                || before.ends_with("recipients:")
                || before.ends_with("to:") && !before.starts_with("to:") && before.len() > 3
                || before.ends_with("address:")
                || before.ends_with("delivery to")
                || before.ends_with("message to")
                || before.ends_with("for")
                || before.ends_with("mailbox")
                || before.ends_with("user")
                || before.ends_with("recipient")
                || before.ends_with("original-recipient: rfc822;")
                || before.ends_with("final-recipient: rfc822;")
                || before.ends_with("delivered to")
                || before.ends_with("failed:")
                || before.ends_with("to the following address:")
                || before.ends_with(":");
            let label = before.starts_with("from:")
                || before.starts_with("to:")
                || before.starts_with("cc:")
                || before.starts_with("return-path")
                || before.starts_with("reply-to")
                || before.starts_with("sender")
                || before.starts_with("received")
                || before.starts_with("by ")
                || before.starts_with("message-id");
            if leading && !label && !is_system_address(&a) && !own.contains(&a) {
                cands.push(a);
            }
        }
    }
    if cands.is_empty() {
        for (_, a) in addresses(text) {
            if !is_system_address(&a) && !own.contains(&a) {
                cands.push(a);
                break;
            }
        }
    }
    if cands.is_empty() {
        // The To of the returned message.
        for (k, v) in fields(&parts.original_headers) {
            if k == "to" {
                cands.extend(addresses(&v).into_iter().map(|(_, a)| a));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    cands.retain(|a| seen.insert(a.clone()));
    let temporary_text = [
        "temporary",
        "will be retried",
        "delayed",
        "still trying",
        "will keep trying",
    ]
    .iter()
    .any(|w| lower.contains(w))
        && !lower.contains("permanent");
    // A warning (the MTA is still trying), not a final bounce: never suppresses.
    let still_trying = [
        "will be retried",
        "still trying",
        "will keep trying",
        "has been delayed",
        "delivery delayed",
        "not yet been delivered",
    ]
    .iter()
    .any(|w| lower.contains(w))
        && !["permanent", "giving up", "gave up", "given up"]
            .iter()
            .any(|w| lower.contains(w));
    cands
        .into_iter()
        .map(|address| {
            let para = paragraph_about(text, &address).unwrap_or_default();
            let mut status = find_status(&para);
            let mut reply_code = find_reply_code(&para);
            let mut reason = decide_reason(&para, status.as_deref());
            if reason == Reason::Other {
                status = status.or_else(|| find_status(text));
                reply_code = reply_code.or_else(|| find_reply_code(text));
                reason = decide_reason(text, status.as_deref());
            }
            let command = smtp_command(&para.to_lowercase(), Some(&address))
                .or_else(|| smtp_command(&lower, Some(&address)));
            reason = user_unknown_or_filtered(reason, status.as_deref(), command, &para);
            let temporary = status.as_deref().is_some_and(|s| s.starts_with('4'))
                || reply_code.is_some_and(|c| c / 100 == 4)
                || (status.is_none() && reply_code.is_none() && temporary_text);
            let diagnostic = if para.trim().is_empty() {
                text.as_str()
            } else {
                para.as_str()
            };
            BouncedRecipient {
                hard: is_hard(reason, temporary),
                action: if still_trying { "delayed" } else { "failed" }.into(),
                address,
                status,
                reply_code,
                diagnostic: fold(diagnostic),
                reason,
            }
        })
        .collect()
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
    fn status_and_code_scanning() {
        assert_eq!(
            find_status("said: 550 5.1.1 <a@b>").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            find_status("2.0.0 ok then 4.4.7 late").as_deref(),
            Some("4.4.7")
        );
        assert_eq!(find_status("version 1.5.1.2 and 10.5.1"), None);
        assert_eq!(find_reply_code("host said: 550-5.1.1 no"), Some(550));
        assert_eq!(find_reply_code("(#5.5.0) 12550 x"), None);
    }

    #[test]
    fn garbage_is_unparseable_or_not_a_bounce() {
        assert_eq!(classify(b"").kind, Kind::Unparseable);
        assert_eq!(classify(b"\x00\x01 binary").kind, Kind::Unparseable);
        let c = classify(b"From: a@b.example\r\nSubject: hello\r\n\r\nhi there\r\n");
        assert_eq!(c.kind, Kind::NotBounce);
    }

    #[test]
    fn user_unknown_after_data_or_with_5_7_is_a_filter() {
        let rcpt = "550 5.1.1 <a@b.example>: User unknown (in reply to RCPT TO command)";
        let data = "550 Unknown user a@b.example (in reply to end of DATA\n    command)";
        assert_eq!(
            smtp_command(&rcpt.to_lowercase(), None),
            Some(Command::Rcpt)
        );
        assert_eq!(
            smtp_command(&data.to_lowercase(), None),
            Some(Command::Data)
        );
        let r = |t: &str, st: Option<&str>| {
            let cmd = smtp_command(&t.to_lowercase(), Some("a@b.example"));
            user_unknown_or_filtered(decide_reason(t, st), st, cmd, t)
        };
        assert_eq!(r(rcpt, Some("5.1.1")), Reason::UserUnknown);
        assert_eq!(r(data, None), Reason::Policy);
        assert_eq!(
            r("550 5.7.1 550 User Unknown: a@b.example", Some("5.7.1")),
            Reason::Policy
        );
        assert_eq!(
            r("550 5.1.6 recipient no longer on server", Some("5.1.6")),
            Reason::Moved
        );
        assert_eq!(
            r("550 5.2.1 <a@b.example>... User Unknown", Some("5.2.1")),
            Reason::Suspended
        );
        // Sendmail with PIPELINING: the RCPT replies show up after `>>> DATA`.
        let t = ">>> DATA\n<<< 550 5.1.1 <a@b.example>... User Unknown\n<<< 503 5.0.0 Need RCPT\n";
        assert_eq!(
            smtp_command(&t.to_lowercase(), Some("a@b.example")),
            Some(Command::Rcpt)
        );
        let t = ">>> DATA\n<<< 550 Unknown user a@b.example\n554 5.0.0 Service unavailable\n";
        assert_eq!(
            smtp_command(&t.to_lowercase(), Some("a@b.example")),
            Some(Command::Data)
        );
    }

    #[test]
    fn generic_user_unknown_without_rcpt_or_x_1_1_is_a_filter() {
        let r = |t: &str, st: Option<&str>| {
            let cmd = smtp_command(&t.to_lowercase(), Some("a@b.example"));
            let reason = user_unknown_or_filtered(decide_reason(t, st), st, cmd, t);
            (reason, is_hard(reason, false))
        };
        // The words filtering gateways use, with nothing saying RCPT: soft.
        assert_eq!(
            r("550 <a@b.example> No such user here", None).0,
            Reason::Policy
        );
        assert_eq!(
            r("550 Unknown user a@b.example", Some("5.0.0")).0,
            Reason::Policy
        );
        // … but hard with an x.1.1 code, or when the reply answered RCPT.
        assert_eq!(
            r("550 5.1.1 <a@b.example>... User Unknown", None),
            (Reason::UserUnknown, true)
        );
        let t =
            "most progress was RCPT TO response; remote host said: 550 Unknown user a@b.example";
        assert_eq!(r(t, Some("5.5.0")), (Reason::UserUnknown, true));
        // The mailbox's own server wording stays hard.
        assert_eq!(
            r("The recipient name is not recognized", None),
            (Reason::UserUnknown, true)
        );
        // Exchange Online's edge blocking and Yahoo's "dd" wording name a missing mailbox.
        assert_eq!(
            r(
                "550 5.4.1 [a@b.example]: Recipient address rejected: Access denied",
                Some("5.4.1")
            ),
            (Reason::UserUnknown, true)
        );
        let t =
            "554 delivery error: dd This user doesn't have a b.example account (a@b.example) [0]";
        assert_eq!(r(t, Some("5.0.0")), (Reason::UserUnknown, true));
        // A quoted 5.7.x reply is an access verdict.
        let t = "5.1.0 - Unknown address error 550-'5.7.1 <x@y.example>... Access denied'";
        assert_eq!(r(t, Some("5.1.0")).0, Reason::Policy);
    }

    #[test]
    fn temporary_dns_failures_and_local_agents() {
        let t = "Deferred: Name server: example.jp.: host name lookup failure";
        assert_eq!(decide_reason(t, Some("4.4.7")), Reason::Network);
        assert_eq!(
            decide_reason("Host or domain name not found", Some("5.4.4")),
            Reason::HostUnknown
        );
        let t = "procmail: Couldn't create \"/var/spool/mail/neko\" id: No such user";
        assert_eq!(decide_reason(t, Some("5.1.1")), Reason::System);
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
    fn a_returned_message_mentioned_in_the_preamble_does_not_cut_the_text() {
        let t = "This is the mail system.\nYou can delete your own text from the attached returned message.\n\n<a@b.example>: 550 Unknown user (in reply to end of DATA command)\n\n--- Below this line is a copy of the message.\nSubject: x\n";
        let cut = cut_original(t);
        assert!(cut.contains("end of DATA"), "{cut}");
        assert!(!cut.contains("Subject: x"), "{cut}");
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
