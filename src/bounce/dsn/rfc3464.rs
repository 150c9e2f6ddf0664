//! RFC 3464 delivery-status notifications: the per-recipient fields, and the RFC 3463 status
//! codes and SMTP reply codes found in any text.

use super::address::{first_address, paragraph_about};
use super::parts::Parts;
use super::rules::{decide_reason, is_hard, smtp_command, user_unknown_or_filtered};
use super::{BouncedRecipient, Reason, fold};

/// Header-like fields of a block, with continuation lines unfolded; names lowercased.
pub(super) fn fields(block: &str) -> Vec<(String, String)> {
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

pub(super) fn dsn_recipients(parts: &Parts) -> Vec<BouncedRecipient> {
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

// ---------------------------------------------------------------------------------------------
// Status and reply codes
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
pub(super) fn find_reply_code(s: &str) -> Option<u16> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
