//! Signing: relaxed header and body canonicalisation (RFC 6376 §3.4.2, §3.4.4), the body hash,
//! the DKIM-Signature header built as written and as signed, and [`Dkim::sign`], which puts
//! one signature per signer on a rendered message.

use std::cell::RefCell;

use aws_lc_rs::digest;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;

use super::{Dkim, PrivateKey, Signer, base64, rng};

/// Headers signed when present, in this order. From, To, Subject, Date, Message-ID, the
/// unsubscribe pair and Feedback-ID are what mailbox providers look at; MIME-Version and
/// Content-Type keep the body's interpretation fixed.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "MIME-Version",
    "Content-Type",
];

thread_local! {
    /// Per render thread: the canonicalised header data being signed (reused, no allocation).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(2048));
}

impl Dkim {
    /// Prepends one DKIM-Signature header per signer to `message` (RFC 5322 bytes with CRLF
    /// line ends: header fields, an empty line, the body). `time` is the `t=` tag (Unix seconds).
    pub fn sign(&self, message: &mut Vec<u8>, time: i64) {
        let parts = Parts::new(message);
        let mut head = Vec::with_capacity(600 * self.signers.len() + message.len());
        SCRATCH.with_borrow_mut(|data| {
            for s in &self.signers {
                let h = parts.header(s, time);
                parts.canonical(message, &h, data);
                match &s.key {
                    PrivateKey::Rsa(k) => {
                        let mut sig = vec![0u8; k.public_modulus_len()];
                        k.sign(&RSA_PKCS1_SHA256, rng(), data, &mut sig)
                            .expect("RSA signing with a loaded key");
                        push_signature(&mut head, &h, &sig);
                    }
                    PrivateKey::Ed25519(k) => {
                        // RFC 8463: Ed25519 signs the SHA-256 hash of the data.
                        let hash = digest::digest(&digest::SHA256, data);
                        push_signature(&mut head, &h, k.sign(hash.as_ref()).as_ref());
                    }
                }
            }
        });
        head.extend_from_slice(message);
        *message = head;
    }
}

/// What signing needs of one message: where the header block ends, the body hash, and where
/// the signed header fields are.
struct Parts {
    /// Length of the header block, its final CRLF included.
    header_len: usize,
    bh: String,
    fields: [Option<(usize, usize)>; SIGNED_HEADERS.len()],
}

impl Parts {
    fn new(message: &[u8]) -> Parts {
        let (headers, body) = match find(message, b"\r\n\r\n") {
            Some(i) => (&message[..i + 2], &message[i + 4..]),
            None => (message, &b""[..]),
        };
        let mut bh = String::with_capacity(44);
        base64(body_hash(body).as_ref(), &mut bh);
        Parts {
            header_len: headers.len(),
            bh,
            fields: signed_fields(headers),
        }
    }

    /// The DKIM-Signature header for signer `s`, up to and including `b=` (empty while signing),
    /// folded at tag boundaries: as written, and in relaxed canonical form (what is signed),
    /// built side by side rather than canonicalised back.
    fn header(&self, s: &Signer, time: i64) -> SignatureHeader {
        let mut h = SignatureHeader {
            wire: String::with_capacity(256),
            canonical: String::with_capacity(256),
        };
        h.wire.push_str("DKIM-Signature: ");
        h.canonical.push_str("dkim-signature:");
        h.push("v=1; a=");
        h.push(s.key.algorithm().as_str());
        h.push("; c=relaxed/relaxed; d=");
        h.push(&s.domain);
        h.push("; s=");
        h.push(&s.selector);
        h.push(";");
        h.fold();
        h.push("t=");
        h.push(&time.to_string());
        h.push("; h=");
        let mut line = 14;
        let mut first = true;
        for (name, _) in SIGNED_HEADERS
            .iter()
            .zip(&self.fields)
            .filter(|(_, f)| f.is_some())
        {
            if !first {
                h.push(":");
                line += 1;
                if line + name.len() > 74 {
                    h.fold();
                    line = 1;
                }
            }
            first = false;
            h.push(name);
            line += name.len();
        }
        h.push(";");
        h.fold();
        h.push("bh=");
        h.push(&self.bh);
        h.push(";");
        h.fold();
        h.push("b=");
        h
    }

    /// The data a signature covers (RFC 6376 §3.7): the signed fields, canonicalised, then the
    /// signature header itself without a final CRLF.
    fn canonical(&self, message: &[u8], header: &SignatureHeader, data: &mut Vec<u8>) {
        let headers = &message[..self.header_len];
        data.clear();
        for &(a, b) in self.fields.iter().flatten() {
            relaxed_header(&headers[a..b], data);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(header.canonical.as_bytes());
    }
}

/// A DKIM-Signature header being built, as written and as signed.
struct SignatureHeader {
    wire: String,
    canonical: String,
}

impl SignatureHeader {
    fn push(&mut self, s: &str) {
        self.wire.push_str(s);
        self.canonical.push_str(s);
    }

    /// A fold: CRLF TAB on the wire, which relaxed canonicalisation turns into one space.
    fn fold(&mut self) {
        self.wire.push_str("\r\n\t");
        self.canonical.push(' ');
    }
}

/// Appends a finished DKIM-Signature field: `header` (ending in `b=`) and the signature in
/// base64, folded every 72 characters (the verifier drops the folding white space).
fn push_signature(out: &mut Vec<u8>, header: &SignatureHeader, sig: &[u8]) {
    out.extend_from_slice(header.wire.as_bytes());
    let mut b = String::with_capacity(sig.len() * 4 / 3 + 4);
    base64(sig, &mut b);
    for (i, chunk) in b.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n\t");
        }
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(b"\r\n");
}

/// Where each of [`SIGNED_HEADERS`] is in the header block (the last instance, as verifiers
/// pick bottom-up), as a byte range without the final CRLF.
fn signed_fields(headers: &[u8]) -> [Option<(usize, usize)>; SIGNED_HEADERS.len()] {
    let mut found = [None; SIGNED_HEADERS.len()];
    let mut start = 0;
    while start < headers.len() {
        // A field ends at a CRLF not followed by white space (folding).
        let mut end = start;
        loop {
            match find(&headers[end..], b"\r\n") {
                Some(i) => {
                    end += i + 2;
                    if end < headers.len() && matches!(headers[end], b' ' | b'\t') {
                        continue;
                    }
                    break;
                }
                None => {
                    end = headers.len();
                    break;
                }
            }
        }
        let field = &headers[start..end];
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            let name = trim_wsp_end(&field[..colon]);
            if let Some(i) = SIGNED_HEADERS
                .iter()
                .position(|h| h.as_bytes().eq_ignore_ascii_case(name))
            {
                let stop = if field.ends_with(b"\r\n") {
                    end - 2
                } else {
                    end
                };
                found[i] = Some((start, stop));
            }
        }
        start = end;
    }
    found
}

/// Relaxed header canonicalisation (RFC 6376 §3.4.2) of one raw field (name, colon, value,
/// folding included, no final CRLF): lowercase name, unfolded value, white-space runs to one
/// space, none around the colon or at the end.
fn relaxed_header(field: &[u8], out: &mut Vec<u8>) {
    let colon = memchr::memchr(b':', field).unwrap_or(field.len());
    out.extend(
        trim_wsp_end(&field[..colon])
            .iter()
            .map(u8::to_ascii_lowercase),
    );
    out.push(b':');
    let value = field.get(colon + 1..).unwrap_or_default();
    // Most fields are one line with single spaces: only the ends change, copy the rest.
    let trimmed = trim_wsp_end(trim_wsp_start(value));
    let mut folded_or_runs = false;
    let next = trimmed.iter().skip(1).chain(std::iter::once(&b'x'));
    for (&b, &n) in trimmed.iter().zip(next) {
        folded_or_runs |= (b == b'\r') | (b == b'\n') | (b == b'\t') | ((b == b' ') & (n == b' '));
    }
    if !folded_or_runs {
        out.extend_from_slice(trimmed);
        return;
    }
    let mut space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = started,
            _ => {
                if space {
                    out.push(b' ');
                    space = false;
                }
                out.push(b);
                started = true;
            }
        }
    }
}

fn trim_wsp_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// SHA-256 of the relaxed-canonicalised body (RFC 6376 §3.4.4): trailing white space of each
/// line removed, runs of white space to one space, empty lines at the end removed, and a
/// non-empty body ending in CRLF. Fed to the hash in slices, without a copy of the body.
pub fn body_hash(body: &[u8]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    if !needs_relaxing(body) {
        // No tab, no white-space run, no white space at a line end: canonicalising only drops
        // the empty lines at the end and ends a non-empty body with CRLF. Hashed in one piece
        // (a rendered, quoted-printable body is like this).
        let mut end = body.len();
        while end >= 2 && &body[end - 2..end] == b"\r\n" {
            end -= 2;
        }
        if end > 0 {
            ctx.update(&body[..end]);
            ctx.update(b"\r\n");
        }
        return ctx.finish();
    }
    BODY.with_borrow_mut(|canonical| {
        relaxed_body(body, canonical);
        ctx.update(canonical);
    });
    ctx.finish()
}

thread_local! {
    /// The canonical body being hashed: hashing it in one piece is several times faster than
    /// feeding the hash word by word.
    static BODY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Relaxed body canonicalisation into `out`: white-space runs become one space, white space
/// before a line end goes, empty lines at the end go, and a non-empty body ends with CRLF.
/// Stretches that need no change (most of a body: HTML indentation is what usually needs it)
/// are found 32 bytes at a time with a branch-free test and copied whole.
fn relaxed_body(body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(body.len() + 2);
    let wsp = |b: u8| b == b' ' || b == b'\t';
    // The end of the body counts as a line end (white space there goes).
    let starts_change =
        |i: usize| relaxing_changes(body[i], body.get(i + 1).copied().unwrap_or(b'\r'));
    let mut copied = 0; // body[..copied] is in `out`
    let mut i = 0;
    while i < body.len() {
        if i + 33 <= body.len() {
            let (chunk, next) = (&body[i..i + 32], &body[i + 1..i + 33]);
            let mut change = false;
            for (&b, &n) in chunk.iter().zip(next) {
                change |= relaxing_changes(b, n);
            }
            if !change {
                i += 32;
                continue;
            }
        }
        let end = (i + 32).min(body.len());
        let Some(at) = (i..end).find(|&j| starts_change(j)) else {
            i = end;
            continue;
        };
        // A white-space run: one space, or nothing at a line end or the end of the body.
        out.extend_from_slice(&body[copied..at]);
        let mut k = at;
        while k < body.len() && wsp(body[k]) {
            k += 1;
        }
        if k < body.len() && !(body[k] == b'\r' && body.get(k + 1) == Some(&b'\n')) {
            out.push(b' ');
        }
        copied = k;
        i = k;
    }
    out.extend_from_slice(&body[copied..]);
    while out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
    if !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
}

/// [`body_hash`] line by line, relaxing white space: the reference the fast paths are tested
/// against.
#[cfg(test)]
fn relaxed_body_hash(body: &[u8], mut ctx: digest::Context) -> digest::Digest {
    let mut pending_crlf = 0usize;
    let mut wrote = false;
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = match find(rest, b"\r\n") {
            Some(i) => (&rest[..i], &rest[i + 2..]),
            None => (rest, &b""[..]),
        };
        rest = next;
        let line = trim_wsp_end(line);
        if line.is_empty() {
            pending_crlf += 1;
            continue;
        }
        for _ in 0..pending_crlf {
            ctx.update(b"\r\n");
        }
        pending_crlf = 1;
        wrote = true;
        if !line
            .iter()
            .zip(&line[1..])
            .any(|(&a, &b)| b == b'\t' || (a == b' ' && b == b' '))
            && line[0] != b'\t'
        {
            ctx.update(line);
            continue;
        }
        // Collapse white-space runs to a single space.
        let mut i = 0;
        while i < line.len() {
            let word_end = line[i..]
                .iter()
                .position(|&b| b == b' ' || b == b'\t')
                .map_or(line.len(), |p| i + p);
            ctx.update(&line[i..word_end]);
            if word_end == line.len() {
                break;
            }
            ctx.update(b" ");
            i = word_end;
            while i < line.len() && matches!(line[i], b' ' | b'\t') {
                i += 1;
            }
        }
    }
    if wrote {
        // Something was written: end with exactly one CRLF.
        ctx.update(b"\r\n");
    }
    ctx.finish()
}

/// Whether relaxed body canonicalisation changes anything inside the lines of `body`: a tab, a
/// space followed by a space, a tab or CR (a run, or white space at a line end), or white space
/// at the very end. Branch-free over 64-byte blocks, so it vectorises.
fn needs_relaxing(body: &[u8]) -> bool {
    let Some((&last, _)) = body.split_last() else {
        return false;
    };
    let (cur, next) = (&body[..body.len() - 1], &body[1..]);
    for (c, n) in cur.chunks(64).zip(next.chunks(64)) {
        let mut bad = false;
        for (&x, &y) in c.iter().zip(n) {
            bad |= relaxing_changes(x, y);
        }
        if bad {
            return true;
        }
    }
    matches!(last, b' ' | b'\t')
}

/// Whether relaxed body canonicalisation changes byte `b` followed by `next`: a tab, or a space
/// before white space or CR (a run, or white space at a line end). Branch-free, so the loops
/// over blocks that use it vectorise.
#[inline(always)]
fn relaxing_changes(b: u8, next: u8) -> bool {
    (b == b'\t') | ((b == b' ') & ((next == b' ') | (next == b'\t') | (next == b'\r')))
}

fn trim_wsp_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// First occurrence of `needle` (non-empty): scan for its first byte, then compare.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(needle[0], &hay[from..]) {
        let at = from + i;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

    use super::super::generate::pem_encode;
    use super::super::verify_ed25519;
    use super::*;

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn relaxed_body() {
        // RFC 6376 §3.4.6 example: " C \r\nD \t E\r\n\r\n\r\n" -> " C\r\nD E\r\n".
        let got = body_hash(b" C \r\nD \t E\r\n\r\n\r\n");
        let want = digest::digest(&digest::SHA256, b" C\r\nD E\r\n");
        assert_eq!(hex(got.as_ref()), hex(want.as_ref()));
        // No final CRLF gets one; empty body hashes as empty.
        assert_eq!(
            hex(body_hash(b"a\r\n\r\nb").as_ref()),
            hex(digest::digest(&digest::SHA256, b"a\r\n\r\nb\r\n").as_ref())
        );
        assert_eq!(
            hex(body_hash(b"\r\n\r\n").as_ref()),
            hex(digest::digest(&digest::SHA256, b"").as_ref())
        );
    }

    #[test]
    fn relaxed_body_fast_path_matches() {
        // The one-piece hash (no white space to relax) against the line-by-line path.
        for body in [
            &b""[..],
            b"\r\n",
            b"a",
            b"a\r\n",
            b"a\r\n\r\n\r\n",
            b"a\r\n\r\nb",
            b"a\r\n\n",
            b"a \nb\r\n",
            b"a b=20\r\n\r\nc d\r\n\r\n",
            b"a  b\r\n",
            b"a\tb\r\n",
            b"a \r\n",
            b"a ",
            b" \r\n\r\n",
            b"x\r\n \t \r\ny\r\n",
        ] {
            let line_by_line = relaxed_body_hash(body, digest::Context::new(&digest::SHA256));
            assert_eq!(
                hex(body_hash(body).as_ref()),
                hex(line_by_line.as_ref()),
                "{body:?}"
            );
        }
        assert!(!needs_relaxing(b"a b\r\nc d\r\n"));
        assert!(needs_relaxing(b"a  b\r\n"));
        // Random bodies over the bytes that matter, against the reference.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            let seed = lcg(&mut seed);
            // Short and long bodies (the fast path works 32 bytes at a time); mostly words.
            let len = (seed >> 55) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| b"a \t\r\n=bcdefghijk"[((seed >> (i % 50)) as usize + i * 7) % 16])
                .collect();
            let line_by_line = relaxed_body_hash(&body, digest::Context::new(&digest::SHA256));
            assert_eq!(
                hex(body_hash(&body).as_ref()),
                hex(line_by_line.as_ref()),
                "{body:?}"
            );
        }
    }

    /// The next value of a 64-bit linear congruential generator: random test input, repeatable.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state
    }

    #[test]
    fn relaxed_headers() {
        let mut out = Vec::new();
        relaxed_header(b"SubJect :  Hello \r\n\t  world  ", &mut out);
        assert_eq!(out, b"subject:Hello world");
        // The one-line fast path against the general rule, on random fields.
        let reference = |field: &[u8]| {
            let colon = field.iter().position(|&b| b == b':').unwrap();
            let mut out: Vec<u8> = trim_wsp_end(&field[..colon])
                .iter()
                .map(u8::to_ascii_lowercase)
                .collect();
            out.push(b':');
            let unfolded: Vec<u8> = field[colon + 1..]
                .iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect();
            let words: Vec<&[u8]> = unfolded
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|w| !w.is_empty())
                .collect();
            out.extend_from_slice(&words.join(&b' '));
            out
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let seed = lcg(&mut seed);
            let len = (seed >> 59) as usize;
            let mut field = b"To: ".to_vec();
            field.extend((0..len).map(|i| b"ab \t\r\n"[((seed >> (i * 2)) as usize) % 6]));
            let mut got = Vec::new();
            relaxed_header(&field, &mut got);
            assert_eq!(got, reference(&field), "{field:?}");
        }
    }

    #[test]
    fn ed25519_signature_covers_headers() {
        let doc = Ed25519KeyPair::generate_pkcs8(rng()).unwrap();
        let pem = pem_encode("PRIVATE KEY", doc.as_ref());
        let key = PrivateKey::from_pem(pem.as_bytes()).unwrap();
        let public = match &key {
            PrivateKey::Ed25519(k) => k.public_key().as_ref().to_vec(),
            PrivateKey::Rsa(_) => unreachable!(),
        };
        let dkim = Dkim {
            signers: vec![Signer {
                domain: "example.com".into(),
                selector: "s1".into(),
                key_file: PathBuf::new(),
                key,
            }],
            feedback_id: None,
        };
        let mut msg = b"From: a@example.com\r\nTo: b@example.org\r\nX-Other: 1\r\nSubject: hi\r\n there\r\n\r\nbody\r\n".to_vec();
        let original = msg.clone();
        dkim.sign(&mut msg, 1_700_000_000);
        assert!(msg.ends_with(&original));
        let header = std::str::from_utf8(&msg[..msg.len() - original.len()]).unwrap();
        assert!(header.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"));
        assert!(header.contains("h=From:To:Subject;"), "{header}");
        // Rebuild the signed data as a verifier would and check the signature.
        let (unsigned, b) = header.split_at(header.rfind("\tb=").unwrap() + 3);
        let sig_b64: String = b.chars().filter(|c| !c.is_whitespace()).collect();
        let mut data = Vec::new();
        data.extend_from_slice(b"from:a@example.com\r\nto:b@example.org\r\nsubject:hi there\r\n");
        relaxed_header(unsigned.as_bytes(), &mut data);
        let hash = digest::digest(&digest::SHA256, &data);
        let sig = decode_b64(&sig_b64);
        assert!(verify_ed25519(&public, hash.as_ref(), &sig));
        assert!(!verify_ed25519(&public, b"other", &sig));
    }

    /// The canonical form built beside the signature header is what relaxed canonicalisation
    /// of the written header gives.
    #[test]
    fn signature_header_canonical_form() {
        let doc = Ed25519KeyPair::generate_pkcs8(rng()).unwrap();
        let key = PrivateKey::from_pem(pem_encode("PRIVATE KEY", doc.as_ref()).as_bytes()).unwrap();
        let signer = Signer {
            domain: "mail.example.com".into(),
            selector: "s2026-long-selector".into(),
            key_file: PathBuf::from("k.pem"),
            key,
        };
        let message = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\nDate: x\r\nMessage-ID: <1@x>\r\nList-Unsubscribe: <https://u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nbody\r\n";
        let parts = Parts::new(message);
        let h = parts.header(&signer, 1_770_000_000);
        assert!(h.wire.contains("\r\n\t"), "folded: {}", h.wire);
        let mut relaxed = Vec::new();
        relaxed_header(h.wire.as_bytes(), &mut relaxed);
        assert_eq!(String::from_utf8(relaxed).unwrap(), h.canonical);
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut n = 0;
        for c in s.bytes().filter(|&c| c != b'=') {
            acc = (acc << 6) | T.iter().position(|&t| t == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((acc >> n) as u8);
            }
        }
        out
    }
}
