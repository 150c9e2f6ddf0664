//! Provider notification formats: Amazon SES notifications (JSON, as SNS e-mails them).

use super::rfc3464::{find_reply_code, find_status};
use super::rules::{decide_reason, is_hard};
use super::{BouncedRecipient, Classification, Kind, Reason, cap, fold};

pub(super) fn ses_notification(text: &str) -> Option<Classification> {
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
