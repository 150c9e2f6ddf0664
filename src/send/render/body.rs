//! A body's transfer encoding: ASCII text with short lines goes as 7bit (CRLF line ends),
//! anything else as quoted-printable, chosen and written in one pass ([`encode`]), into buffers
//! each render thread reuses ([`BODIES`]).

/// Encoded bodies of one message, per render thread: the buffers keep their capacity from
/// message to message.
#[derive(Default)]
pub(super) struct Bodies {
    pub(super) text: Vec<u8>,
    pub(super) html: Vec<u8>,
}

thread_local! {
    pub(super) static BODIES: std::cell::RefCell<Bodies> = std::cell::RefCell::new(Bodies::default());
}

/// Longest line sent as 7bit; longer ones go quoted-printable (RFC 5322's 78 with CRLF, the
/// limit mail-builder uses too).
const SEVEN_BIT_LINE: usize = 76;

/// Turns CRLF and bare CR into LF (the encoders write every LF as CRLF).
fn normalise_line_ends(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.push(b'\n');
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Whether `body` (LF line ends) can go as 7bit unchanged: printable ASCII and tabs only, no
/// line over [`SEVEN_BIT_LINE`], no white space at a line end (relays may strip it).
fn seven_bit_ok(body: &[u8]) -> bool {
    // Branch-free over blocks, so it vectorises; most bodies fail here on their first non-ASCII
    // byte's block.
    for block in body.chunks(64) {
        let mut bad = false;
        for &b in block {
            bad |= (b >= 0x7f) | ((b < 0x20) & (b != b'\t') & (b != b'\n'));
        }
        if bad {
            return false;
        }
    }
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
        let line = &body[start..end];
        if line.len() > SEVEN_BIT_LINE || matches!(line.last(), Some(b' ' | b'\t')) {
            return false;
        }
        start = end + 1;
    }
    true
}

/// `body` with every LF written as CRLF.
fn crlf_lines(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 32);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body) {
        out.extend_from_slice(&body[start..end]);
        out.extend_from_slice(b"\r\n");
        start = end + 1;
    }
    out.extend_from_slice(&body[start..]);
}

/// Encodes a rendered body into `encoded` (cleared first): its Content-Transfer-Encoding.
/// Bare CRs become line breaks: RFC 5322 forbids them and some relays treat them as line ends.
pub(super) fn encode(mut raw: Vec<u8>, encoded: &mut Vec<u8>) -> &'static str {
    if memchr::memchr(b'\r', &raw).is_some() {
        raw = normalise_line_ends(&raw);
    }
    encoded.clear();
    if seven_bit_ok(&raw) {
        crlf_lines(&raw, encoded);
        "7bit"
    } else {
        encodify::qp::BODY.encode_append(&raw[..], encoded);
        "quoted-printable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_encoding_choice() {
        let line = "x".repeat(SEVEN_BIT_LINE);
        assert!(seven_bit_ok(
            format!("Hello,\n\tthere\n{line}\n").as_bytes()
        ));
        assert!(seven_bit_ok(b""));
        // A line too long, white space at a line end or the very end, 8-bit, controls.
        assert!(!seven_bit_ok(format!("{line}x\nshort").as_bytes()));
        assert!(!seven_bit_ok(b"trailing \nspace"));
        assert!(!seven_bit_ok(b"ends with a tab\t"));
        assert!(!seven_bit_ok("Zo\u{eb}".as_bytes()));
        assert!(!seven_bit_ok(b"bell\x07"));
        assert!(!seven_bit_ok(b"del\x7f"));
        let mut out = Vec::new();
        crlf_lines(b"a\nb\n\nc", &mut out);
        assert_eq!(out, b"a\r\nb\r\n\r\nc");
        assert_eq!(normalise_line_ends(b"a\r\nb\rc\r"), b"a\nb\nc\n");
    }
}
