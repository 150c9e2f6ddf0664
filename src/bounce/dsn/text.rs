//! Messages without a delivery-status part: auto-replies, mailing-list manager notices and the
//! non-standard bounce texts (Exim, qmail, Sendmail, Exchange, providers).

use super::address::{addresses, first_address, is_system_address, paragraph_about};
use super::parts::Parts;
use super::rfc3464::{fields, find_reply_code, find_status};
use super::rules::{decide_reason, is_hard, smtp_command, user_unknown_or_filtered};
use super::{BouncedRecipient, Classification, Kind, Reason, fold};

// ---------------------------------------------------------------------------------------------
// Auto-replies
// ---------------------------------------------------------------------------------------------

fn header_lower(msg: &mail_parser::Message<'_>, name: &str) -> String {
    msg.header_raw(name.to_string())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

pub(super) fn is_auto_reply(msg: &mail_parser::Message<'_>) -> bool {
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

pub(super) fn looks_like_bounce(msg: &mail_parser::Message<'_>, parts: &Parts) -> bool {
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
pub(super) fn list_manager_error(
    msg: &mail_parser::Message<'_>,
    parts: &Parts,
) -> Option<Classification> {
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

/// The recipients of a non-standard bounce: the addresses its failure text reports on, each
/// with the status, reply code and reason of the paragraph that names it.
pub(super) fn text_recipients(
    msg: &mail_parser::Message<'_>,
    parts: &Parts,
) -> Vec<BouncedRecipient> {
    let text = &parts.text;
    let lower = text.to_ascii_lowercase();
    let cands = candidates(msg, parts, &lower);
    let temporary_text = says_temporary(&lower);
    // A warning (the MTA is still trying), not a final bounce: never suppresses.
    let still_trying = says_still_trying(&lower);
    cands
        .into_iter()
        .map(|address| text_recipient(address, text, &lower, temporary_text, still_trying))
        .collect()
}

/// The addresses a non-standard bounce reports on, best source first, each once. `lower`:
/// `parts.text` lowercased.
fn candidates(msg: &mail_parser::Message<'_>, parts: &Parts, lower: &str) -> Vec<String> {
    let text = &parts.text;
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
            if names_a_recipient(before) && !is_system_address(&a) && !own.contains(&a) {
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
    cands
}

/// Whether an address preceded on its line by `before` (lowercased, trimmed) is a reported
/// recipient: it starts the line or follows a recipient label, and is not in a header field.
fn names_a_recipient(before: &str) -> bool {
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
    leading && !label
}

/// The (lowercased) text says the failure is temporary, and nowhere that it is permanent.
fn says_temporary(lower: &str) -> bool {
    [
        "temporary",
        "will be retried",
        "delayed",
        "still trying",
        "will keep trying",
    ]
    .iter()
    .any(|w| lower.contains(w))
        && !lower.contains("permanent")
}

/// The (lowercased) text is a warning: the MTA is still trying and has not given up.
fn says_still_trying(lower: &str) -> bool {
    [
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
            .any(|w| lower.contains(w))
}

/// One recipient of a non-standard bounce, read from the paragraph of `text` that names it, or
/// from the whole text when that paragraph gives no reason. `lower`: `text` lowercased.
fn text_recipient(
    address: String,
    text: &str,
    lower: &str,
    temporary_text: bool,
    still_trying: bool,
) -> BouncedRecipient {
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
        .or_else(|| smtp_command(lower, Some(&address)));
    reason = user_unknown_or_filtered(reason, status.as_deref(), command, &para);
    let temporary = status.as_deref().is_some_and(|s| s.starts_with('4'))
        || reply_code.is_some_and(|c| c / 100 == 4)
        || (status.is_none() && reply_code.is_none() && temporary_text);
    let diagnostic = if para.trim().is_empty() {
        text
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
}
