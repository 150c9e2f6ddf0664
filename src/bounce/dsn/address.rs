//! Addresses in free text: extraction, system addresses, the paragraph that names one.

fn is_addr_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
}

/// Every plausible address in `s`, lowercased, in order.
pub(super) fn addresses(s: &str) -> Vec<(usize, String)> {
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

pub(super) fn first_address(s: &str) -> Option<String> {
    addresses(s).into_iter().next().map(|(_, a)| a)
}

/// Addresses that are never the bounced recipient.
pub(super) fn is_system_address(a: &str) -> bool {
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
pub(super) fn paragraph_about(text: &str, addr: &str) -> Option<String> {
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
