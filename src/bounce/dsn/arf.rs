//! ARF feedback reports (RFC 5965): complaints.

use super::address::addresses;
use super::parts::Parts;
use super::rfc3464::fields;
use super::{BouncedRecipient, Classification, Kind, Reason, cap};

pub(super) fn complaint(msg: &mail_parser::Message<'_>, parts: &Parts) -> Classification {
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
