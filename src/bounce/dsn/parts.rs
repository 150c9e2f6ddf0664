//! The parts of a received message, sorted by what they are for classification, and the
//! cut between the failure text and the copy of the original message.

/// A message starts with a header field (`Name:`), perhaps after an mbox `From ` line.
pub(super) fn looks_like_message(raw: &[u8]) -> bool {
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
pub(super) struct Parts {
    /// `message/delivery-status` (and global) bodies.
    pub(super) delivery_status: Vec<String>,
    /// `message/feedback-report` bodies.
    pub(super) feedback: Vec<String>,
    pub(super) is_feedback: bool,
    /// Human-readable text of the top-level message (text parts, HTML stripped), with the
    /// copy of the original message cut off.
    pub(super) text: String,
    /// Headers of the returned original message (message/rfc822 or text/rfc822-headers).
    pub(super) original_headers: String,
}

impl Parts {
    pub(super) fn collect(msg: &mail_parser::Message<'_>) -> Parts {
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

pub(super) fn cut_original(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_message_mentioned_in_the_preamble_does_not_cut_the_text() {
        let t = "This is the mail system.\nYou can delete your own text from the attached returned message.\n\n<a@b.example>: 550 Unknown user (in reply to end of DATA command)\n\n--- Below this line is a copy of the message.\nSubject: x\n";
        let cut = cut_original(t);
        assert!(cut.contains("end of DATA"), "{cut}");
        assert!(!cut.contains("Subject: x"), "{cut}");
    }
}
