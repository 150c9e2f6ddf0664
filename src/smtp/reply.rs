//! SMTP reply parsing (RFC 5321 §4.2, enhanced status codes RFC 3463).
//!
//! Parsing looks at the connection's read buffer without consuming it: a
//! pipelined server may send several replies in one segment, and the bytes
//! after the first reply must stay buffered for the next read. EHLO also
//! needs the raw lines (see [`lines`]) which a joined `Reply` no longer has.

use std::fmt;

/// Upper bound for one reply, continuation lines included; a server
/// exceeding it is broken or hostile and we stop buffering.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Cap on [`Reply::text`]: enough for any diagnostic, bounded for logs.
const MAX_TEXT: usize = 512;

/// Why bytes from the server are not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("line does not start with a 3-digit code and separator: {0:?}")]
    BadLine(String),
    #[error("reply lines disagree on the code ({first} then {then})")]
    MixedCodes { first: u16, then: u16 },
    #[error("reply longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
}

/// An RFC 3463 enhanced status code such as `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete server reply. Multi-line text is joined with spaces and
/// capped at ~512 bytes; the enhanced code is lifted out of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedStatus>,
    pub text: String,
}

impl Reply {
    /// Parses the first reply in `buf`. `Ok(None)` means more bytes are
    /// needed; otherwise returns the reply and how many bytes it used.
    pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        Ok(complete_len(buf)?.map(|n| (Reply::from_raw(&buf[..n]), n)))
    }

    /// Builds a reply from bytes that [`complete_len`] accepted.
    pub(crate) fn from_raw(raw: &[u8]) -> Reply {
        let code = code_of(raw).unwrap_or(0);
        let mut enhanced = None;
        let mut text = String::new();
        for (i, line) in lines(raw).enumerate() {
            let mut line = line;
            let (status, rest) = split_enhanced(line, code);
            if i == 0 {
                enhanced = status;
                line = rest;
            } else if status.is_some() && status == enhanced {
                line = rest;
            }
            let line = String::from_utf8_lossy(line);
            let line = line.trim();
            if line.is_empty() || text.len() >= MAX_TEXT {
                continue;
            }
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(line);
        }
        if text.len() > MAX_TEXT {
            let mut end = MAX_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Reply {
            code,
            enhanced,
            text,
        }
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not retry as is.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The server's queue id from a 2xx reply to the final ".", so a
    /// delivery log line can be matched against the relay's own log.
    /// Knows Postfix ("queued as X"), Exim ("id=X") and Sendmail
    /// ("X Message accepted for delivery").
    pub fn queue_id(&self) -> Option<&str> {
        if !self.is_positive() {
            return None;
        }
        let t = self.text.as_str();
        if let Some(i) = find_ascii_ci(t, "queued as ") {
            return token(&t[i + "queued as ".len()..]);
        }
        if let Some(i) = find_ascii_ci(t, "id=")
            && (i == 0 || t.as_bytes()[i - 1].is_ascii_whitespace())
        {
            return token(&t[i + 3..]);
        }
        if let Some(i) = find_ascii_ci(t, "message accepted for delivery")
            && i > 0
        {
            return token(&t[..i]);
        }
        None
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// Length of the first complete reply in `buf`, `None` if incomplete.
/// Validates every line, including a partial last line as far as it goes,
/// so a server speaking garbage fails fast instead of at the timeout.
pub(crate) fn complete_len(buf: &[u8]) -> Result<Option<usize>, ReplyError> {
    let mut pos = 0;
    let mut first: Option<u16> = None;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            check_prefix(rest)?;
            if buf.len() > MAX_REPLY_BYTES {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        let line = strip_cr(&rest[..nl]);
        let code = code_of(line).ok_or_else(|| bad_line(line))?;
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(bad_line(line)),
        };
        match first {
            Some(f) if f != code => {
                return Err(ReplyError::MixedCodes {
                    first: f,
                    then: code,
                });
            }
            _ => first = Some(code),
        }
        pos += nl + 1;
        if pos > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        if last {
            return Ok(Some(pos));
        }
    }
}

/// The text part of each line of a complete reply (after "250-"/"250 ").
pub(crate) fn lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|&b| b == b'\n')
        .map(strip_cr)
        .filter(|l| l.len() >= 3)
        .map(|l| l.get(4..).unwrap_or(&[]))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn code_of(line: &[u8]) -> Option<u16> {
    match line {
        [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fn check_prefix(partial: &[u8]) -> Result<(), ReplyError> {
    let ok = partial.iter().take(4).enumerate().all(|(i, &b)| match i {
        0 => (b'1'..=b'5').contains(&b),
        1 | 2 => b.is_ascii_digit(),
        _ => b == b' ' || b == b'-' || b == b'\r',
    });
    if ok { Ok(()) } else { Err(bad_line(partial)) }
}

fn bad_line(line: &[u8]) -> ReplyError {
    let shown = &line[..line.len().min(64)];
    ReplyError::BadLine(String::from_utf8_lossy(shown).into_owned())
}

/// Splits a leading "x.y.z " off `text` when its class matches the reply
/// code's class, as RFC 3463 requires.
fn split_enhanced(text: &[u8], code: u16) -> (Option<EnhancedStatus>, &[u8]) {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let mut parts = text[..end].split(|&b| b == b'.');
    let (Some(c), Some(s), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, text);
    };
    let num = |p: &[u8], max_len: usize| -> Option<u16> {
        if p.is_empty() || p.len() > max_len || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        p.iter()
            .try_fold(0u16, |n, &b| Some(n * 10 + u16::from(b - b'0')))
    };
    match (num(c, 1), num(s, 3), num(d, 3)) {
        (Some(class), Some(subject), Some(detail))
            if matches!(class, 2 | 4 | 5) && class == code / 100 =>
        {
            let status = EnhancedStatus {
                class: class as u8,
                subject,
                detail,
            };
            (Some(status), &text[end..])
        }
        _ => (None, text),
    }
}

fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn token(s: &str) -> Option<&str> {
    let t = s.split_whitespace().next()?;
    let t = t.trim_matches(|c: char| "<>()[].,;:".contains(c));
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(s: &str) -> Reply {
        let (r, n) = Reply::parse(s.as_bytes()).unwrap().unwrap();
        assert_eq!(n, s.len());
        r
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = parse_one("250 2.1.0 Ok\r\n");
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced.unwrap().to_string(), "2.1.0");
        assert_eq!(r.text, "Ok");
        assert_eq!(r.to_string(), "250 2.1.0 Ok");
    }

    #[test]
    fn multi_line_joined_and_repeated_code_dropped() {
        let r = parse_one("550-5.1.1 <a@b>: Recipient rejected\r\n550 5.1.1 User unknown\r\n");
        assert_eq!(r.code, 550);
        assert_eq!(
            r.enhanced,
            Some(EnhancedStatus {
                class: 5,
                subject: 1,
                detail: 1
            })
        );
        assert_eq!(r.text, "<a@b>: Recipient rejected User unknown");
    }

    #[test]
    fn keeps_bytes_after_first_reply() {
        let buf = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go";
        let (r1, n1) = Reply::parse(buf).unwrap().unwrap();
        assert_eq!((r1.code, n1), (250, 14));
        let (r2, n2) = Reply::parse(&buf[n1..]).unwrap().unwrap();
        assert_eq!((r2.code, r2.enhanced.unwrap().detail), (250, 5));
        assert_eq!(Reply::parse(&buf[n1 + n2..]).unwrap(), None);
    }

    #[test]
    fn incomplete_multi_line_needs_more() {
        assert_eq!(Reply::parse(b"250-mx\r\n250-PIPELINING\r\n").unwrap(), None);
        assert_eq!(Reply::parse(b"25").unwrap(), None);
        assert_eq!(Reply::parse(b"").unwrap(), None);
    }

    #[test]
    fn bare_code_and_lf_only() {
        let r = parse_one("250\n");
        assert_eq!((r.code, r.enhanced, r.text.as_str()), (250, None, ""));
    }

    #[test]
    fn enhanced_code_must_match_class_and_be_a_token() {
        assert_eq!(parse_one("250 5.1.1 odd\r\n").enhanced, None);
        assert_eq!(parse_one("250 2.3.4.5 ip\r\n").enhanced, None);
        assert_eq!(
            parse_one("451 4.3.0\r\n").enhanced.unwrap().to_string(),
            "4.3.0"
        );
        assert_eq!(parse_one("250 mx.example ESMTP\r\n").enhanced, None);
    }

    #[test]
    fn garbage_is_rejected_early() {
        assert!(matches!(
            Reply::parse(b"hello\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(
            Reply::parse(b"HTTP/1.1"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(
            Reply::parse(b"250x ok\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(
            Reply::parse(b"650 ok\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert_eq!(
            Reply::parse(b"250-a\r\n550 b\r\n"),
            Err(ReplyError::MixedCodes {
                first: 250,
                then: 550
            })
        );
    }

    #[test]
    fn endless_reply_is_bounded() {
        let mut buf = Vec::new();
        while buf.len() <= MAX_REPLY_BYTES {
            buf.extend_from_slice(b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
        assert_eq!(Reply::parse(&buf), Err(ReplyError::TooLong));
    }

    #[test]
    fn text_is_capped() {
        let long = "x".repeat(300);
        let raw = format!("550-{long}\r\n550-{long}\r\n550 {long}\r\n");
        let r = parse_one(&raw);
        assert!(r.text.len() <= MAX_TEXT, "{}", r.text.len());
        assert!(r.text.len() > 300);
    }

    #[test]
    fn queue_ids() {
        let id = |s: &str| parse_one(s).queue_id().map(str::to_owned);
        assert_eq!(
            id("250 2.0.0 Ok: queued as 4Bq1Xz3gK9z9sR5\r\n").as_deref(),
            Some("4Bq1Xz3gK9z9sR5")
        );
        assert_eq!(
            id("250 OK id=1rX2aB-000Abc-3Z\r\n").as_deref(),
            Some("1rX2aB-000Abc-3Z")
        );
        assert_eq!(
            id("250 2.0.0 x1ABCD123 Message accepted for delivery\r\n").as_deref(),
            Some("x1ABCD123")
        );
        assert_eq!(id("250 2.0.0 Ok\r\n"), None);
        assert_eq!(id("550 5.7.1 queued as NOPE\r\n"), None);
        assert_eq!(id("250 2.6.0 [InternalId=123] Queued mail\r\n"), None);
    }

    #[test]
    fn ehlo_lines() {
        let raw = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n";
        let got: Vec<&[u8]> = lines(raw).collect();
        assert_eq!(got, vec![&b"mx.example"[..], b"PIPELINING", b"SIZE 1000"]);
    }
}
