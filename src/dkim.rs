//! DKIM signing (RFC 6376): rsa-sha256 and ed25519-sha256 (RFC 8463), relaxed/relaxed, on
//! aws-lc-rs (keys, hashes, signatures).
//!
//! Messages are signed in the feeder, on the render threads (`Renderer::render` calls
//! [`Dkim::sign`]), so relays need no milter and signing scales with the render threads.
//!
//! # Why not mail-auth
//!
//! mail-send uses mail-auth; blast does not. Signing needs SHA-256, RSA PKCS#1 v1.5 and
//! Ed25519, which aws-lc-rs (already in blast's tree for rustls and the journal's list
//! fingerprint) provides, so this signer adds no crate. mail-auth's crypto is a backend feature
//! (`ring` or `aws-lc-rs` since 0.8; 0.7.5 has `ring` and RustCrypto only), but each version
//! brings flate2 and a second mail-builder, and with either backend hickory-resolver (and its
//! moka cache in 0.8). Measured on Rust 1.95 (the
//! pinned toolchain), in scratch crates under /tmp, crates counted with
//! `cargo tree --prefix none -e normal,build | sed 's/ (\*)//' | sort -u` (root excluded) and
//! clean builds timed with `CARGO_TARGET_DIR=… /usr/bin/time cargo build --release` on this
//! project's 2-core machine while other builds ran (load average 5–10: wall times inflated,
//! user+sys CPU the fairer comparison):
//! - `aws-lc-rs = "1"` alone: 13 crates (4 without build-dependencies); 97 s wall, 53 s CPU.
//! - `mail-auth = { version = "0.8", default-features = false, features = ["aws-lc-rs"] }`:
//!   133 crates (124); 295 s wall, 179 s CPU. It cannot be added to blast at all: it pins
//!   `hickory-resolver = "=0.26.0-alpha.1"`, blast uses hickory-resolver 0.26, and cargo finds
//!   no version that satisfies both (0.7.5 pins the same alpha).
//! - mail-auth 0.13.3, the newest that resolves and builds next to blast's dependencies
//!   (0.14 and 0.15 need mail-parser 1.0, whose rust-version is 1.98), with only `aws-lc-rs`:
//!   141 crates (131); 347 s wall, 207 s CPU. Added to blast's own tree it brings 17 more
//!   crates (flate2 and its deflate back ends, mail-builder 1.0 next to blast's 2.0, lru-cache,
//!   similar, encoding_rs, rustls-platform-verifier, rustls-native-certs, openssl-probe, …)
//!   and turns on hickory's DNSSEC and DNS-over-TLS code.
//!
//! # Why aws-lc-rs
//!
//! Ed25519 signing is most of what DKIM costs a send. One Ed25519 signature of a 32-byte input
//! on this project's 2-core machine (AMD EPYC): aws-lc-rs 1.19 5.4 µs (AWS-LC's s2n-bignum
//! fixed-base multiplication), curve25519-dalek 5 10.1 µs, ring 0.17 17.1 µs — a one-off
//! comparison made when the library was chosen; no script in the repository reruns it. So
//! aws-lc-rs is the crypto library of the build: DKIM, the journal's list fingerprint and
//! rustls's provider (its default) use it. Per message, with hashing and canonicalisation,
//! `scripts/bench-dkim --skip-pipeline` measures the current cost (last figures in the README).
//!
//! This module is the whole signer: relaxed header and body canonicalisation (RFC 6376
//! §3.4.2, §3.4.4), the body hash, the DKIM-Signature header. It is checked against an
//! independent verifier (Python's dkimpy) in `tests/dkim.rs`.
//!
//! # Keys
//!
//! Keys are PEM files: PKCS#8 (`BEGIN PRIVATE KEY`, RSA or Ed25519) or PKCS#1
//! (`BEGIN RSA PRIVATE KEY`). They are loaded once, when the campaign is loaded (the `[dkim]`
//! section and its validation are `campaign`'s, which builds the [`Dkim`] signer with
//! [`PrivateKey::load`]), so a missing or malformed key is a `blast check` problem at the
//! `key_file` line. `blast keys generate` makes both kinds with aws-lc-rs (PKCS#8 v1 PEM, what
//! `openssl genpkey` writes).
//!
//! This module uses nothing of the crate but `address` (domain syntax): configuration sits
//! above it, in `campaign`.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

use crate::address::valid_domain;

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

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl Algorithm {
    /// The `a=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` value of the DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        }
    }

    /// The algorithm an `a=` value (and `[dkim] algorithm`) names.
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "rsa-sha256" => Some(Algorithm::RsaSha256),
            "ed25519-sha256" => Some(Algorithm::Ed25519Sha256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A loaded private key.
pub enum PrivateKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl PrivateKey {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrivateKey::Rsa(_) => Algorithm::RsaSha256,
            PrivateKey::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// Key size in bits (256 for Ed25519).
    pub fn bits(&self) -> usize {
        match self {
            PrivateKey::Rsa(k) => k.public_modulus_len() * 8,
            PrivateKey::Ed25519(_) => 256,
        }
    }

    /// The `p=` value: base64 of the SubjectPublicKeyInfo (RSA) or of the raw 32-byte key
    /// (Ed25519, RFC 8463).
    pub fn public_key_base64(&self) -> String {
        let mut s = String::new();
        match self {
            PrivateKey::Rsa(k) => base64(&rsa_spki(k.public_key().as_ref()), &mut s),
            PrivateKey::Ed25519(k) => base64(k.public_key().as_ref(), &mut s),
        }
        s
    }

    /// The DKIM key record (the TXT value), e.g. `v=DKIM1; k=ed25519; p=…`.
    pub fn txt_value(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().key_type(),
            self.public_key_base64()
        )
    }

    /// Parses a PEM private key: PKCS#8 (RSA or Ed25519) or PKCS#1 (RSA).
    pub fn from_pem(pem: &[u8]) -> Result<PrivateKey, String> {
        let mut reader = pem;
        let mut saw_other = None;
        loop {
            let item = rustls_pemfile::read_one(&mut reader)
                .map_err(|e| format!("not a valid PEM file: {e}"))?;
            match item {
                None => break,
                Some(rustls_pemfile::Item::Pkcs1Key(k)) => {
                    return RsaKeyPair::from_der(k.secret_pkcs1_der())
                        .map(PrivateKey::Rsa)
                        .map_err(|e| rsa_rejected(&e));
                }
                Some(rustls_pemfile::Item::Pkcs8Key(k)) => {
                    let der = k.secret_pkcs8_der();
                    if contains(der, OID_ED25519) {
                        return Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                            .map_err(|e| format!("invalid Ed25519 key: {e}"))
                            .map(PrivateKey::Ed25519);
                    }
                    if contains(der, OID_RSA) {
                        return RsaKeyPair::from_pkcs8(der)
                            .map(PrivateKey::Rsa)
                            .map_err(|e| rsa_rejected(&e));
                    }
                    return Err(
                        "the PKCS#8 key is neither RSA nor Ed25519 (DKIM knows only those two)"
                            .to_string(),
                    );
                }
                Some(rustls_pemfile::Item::Sec1Key(_)) => {
                    saw_other = Some("an EC (SEC1) key: DKIM signs with RSA or Ed25519 only");
                }
                Some(_) => {
                    saw_other.get_or_insert("no private key (a certificate or public key?)");
                }
            }
        }
        Err(saw_other
            .unwrap_or(
                "no PEM private key found (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)",
            )
            .to_string())
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<PrivateKey, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PrivateKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }
}

const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn rsa_rejected(e: &aws_lc_rs::error::KeyRejected) -> String {
    match e.to_string().as_str() {
        "TooSmall" => "the RSA key is shorter than 2048 bits; mailbox providers ignore such DKIM signatures: generate a new key with `blast keys generate --algorithm rsa`".to_string(),
        "TooLarge" => "the RSA key is longer than 8192 bits (the most aws-lc-rs supports)".to_string(),
        other => format!("invalid RSA key ({other})"),
    }
}

/// SubjectPublicKeyInfo around a PKCS#1 RSAPublicKey: what `p=` holds for `k=rsa`.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    fn der_len(n: usize, out: &mut Vec<u8>) {
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend_from_slice(&[0x81, n as u8]);
        } else {
            out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        }
    }
    // AlgorithmIdentifier { rsaEncryption, NULL }
    let mut alg = vec![0x30, 0x0d];
    alg.extend_from_slice(OID_RSA);
    alg.extend_from_slice(&[0x05, 0x00]);
    let mut bits = vec![0x03];
    der_len(rsa_public_key.len() + 1, &mut bits);
    bits.push(0x00);
    bits.extend_from_slice(rsa_public_key);
    let mut out = vec![0x30];
    der_len(alg.len() + bits.len(), &mut out);
    out.extend_from_slice(&alg);
    out.extend_from_slice(&bits);
    out
}

// ---------------------------------------------------------------------------------------------
// The signer.
// ---------------------------------------------------------------------------------------------

/// One signature to put on every message.
pub struct Signer {
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
    pub key: PrivateKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.key.algorithm())
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The zone-file line to publish: `S._domainkey.D. IN TXT "v=DKIM1; k=…; p=…"`.
    pub fn dns_record(&self) -> String {
        dns_record(&self.selector, &self.domain, &self.key)
    }
}

/// The zone-file line for a key: TXT strings are at most 255 octets, so a long value (RSA) is
/// split into several quoted strings, which resolvers join.
pub fn dns_record(selector: &str, domain: &str, key: &PrivateKey) -> String {
    let value = key.txt_value();
    let mut s = format!("{selector}._domainkey.{domain}. IN TXT");
    for chunk in value.as_bytes().chunks(255) {
        s.push_str(" \"");
        s.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        s.push('"');
    }
    s
}

/// What `[dkim]` asks for, validated (by `campaign`): the loaded keys and the Feedback-ID.
#[derive(Debug)]
pub struct Dkim {
    /// One or two (dual) signatures.
    pub signers: Vec<Signer>,
    /// The Feedback-ID header value, if any.
    pub feedback_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Signing.
// ---------------------------------------------------------------------------------------------

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

fn rng() -> &'static SystemRandom {
    static RNG: std::sync::OnceLock<SystemRandom> = std::sync::OnceLock::new();
    RNG.get_or_init(SystemRandom::new)
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

/// Standard base64 with padding, appended to `out`.
pub fn base64(input: &[u8], out: &mut String) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
}

// ---------------------------------------------------------------------------------------------
// `blast keys generate`.
// ---------------------------------------------------------------------------------------------

/// What `blast keys generate` wrote.
#[derive(Debug)]
pub struct GeneratedKey {
    pub key_file: PathBuf,
    pub record_file: PathBuf,
    pub dns_record: String,
}

/// Writes a new private key (PEM, mode 0600) as `DIR/DOMAIN.SELECTOR.key.pem` and the DNS
/// record as `DIR/DOMAIN.SELECTOR.txt`. Never overwrites a key.
pub fn generate_key(
    selector: &str,
    domain: &str,
    algorithm: Algorithm,
    rsa_bits: u32,
    out_dir: &Path,
) -> Result<GeneratedKey, String> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if !valid_domain(&domain) || !domain.contains('.') {
        return Err(format!(
            "--domain {domain:?} is not a domain name, e.g. example.com"
        ));
    }
    if !valid_domain(selector) {
        return Err(format!(
            "--selector {selector:?} must be letters, digits, '-' and '.', e.g. s2026"
        ));
    }
    let pem = match algorithm {
        Algorithm::Ed25519Sha256 => {
            let doc = Ed25519KeyPair::generate_pkcs8(rng())
                .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
            pem_encode("PRIVATE KEY", &ed25519_pkcs8_v1(doc.as_ref())?)
        }
        Algorithm::RsaSha256 => {
            use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
            use aws_lc_rs::rsa::KeySize;
            let size = match rsa_bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                _ => return Err(format!("--bits {rsa_bits}: use 2048, 3072 or 4096")),
            };
            let pair =
                RsaKeyPair::generate(size).map_err(|_| "cannot generate an RSA key".to_string())?;
            let der: Pkcs8V1Der = pair
                .as_der()
                .map_err(|_| "cannot encode the RSA key".to_string())?;
            pem_encode("PRIVATE KEY", der.as_ref())
        }
    };
    let key = PrivateKey::from_pem(pem.as_bytes())?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let key_file = out_dir.join(format!("{domain}.{selector}.key.pem"));
    let record_file = out_dir.join(format!("{domain}.{selector}.txt"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    format!(
                        "{} exists; blast never overwrites a key (remove it or pick another selector)",
                        key_file.display()
                    )
                } else {
                    format!("cannot create {}: {e}", key_file.display())
                }
            })?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    }
    let dns_record = dns_record(selector, &domain, &key);
    std::fs::write(&record_file, format!("{dns_record}\n"))
        .map_err(|e| format!("cannot write {}: {e}", record_file.display()))?;
    Ok(GeneratedKey {
        key_file,
        record_file,
        dns_record,
    })
}

/// aws-lc-rs writes Ed25519 keys as PKCS#8 v2 (RFC 5958, with the public key), which OpenSSL 3
/// and most DKIM signers cannot read; operators expect the RFC 8410 v1 form `openssl genpkey
/// -algorithm ed25519` writes. Both hold the same 32-byte seed.
fn ed25519_pkcs8_v1(v2: &[u8]) -> Result<Vec<u8>, String> {
    const V1_PREFIX: &[u8] = &[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    // SEQUENCE { INTEGER 1, AlgorithmIdentifier ed25519, OCTET STRING { OCTET STRING seed }, ... }
    if v2.len() < 48
        || v2[0] != 0x30
        || v2[2..5] != [0x02, 0x01, 0x01]
        || v2[5..16] != V1_PREFIX[5..]
    {
        return Err("unexpected PKCS#8 layout from aws-lc-rs".to_string());
    }
    let mut v1 = V1_PREFIX.to_vec();
    v1.extend_from_slice(&v2[16..48]);
    Ok(v1)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let mut b = String::new();
    base64(der, &mut b);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Parses `--algorithm`: "ed25519" / "ed25519-sha256" or "rsa" / "rsa-sha256".
pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    match s {
        "ed25519" | "ed25519-sha256" => Ok(Algorithm::Ed25519Sha256),
        "rsa" | "rsa-sha256" => Ok(Algorithm::RsaSha256),
        _ => Err(format!("{s:?}: use ed25519 or rsa")),
    }
}

/// Verifies `sig` of `data`; for unit tests of this module.
#[cfg(test)]
fn verify_ed25519(public: &[u8], data: &[u8], sig: &[u8]) -> bool {
    use aws_lc_rs::signature;
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(data, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn base64_padding() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            let mut s = String::new();
            base64(i.as_bytes(), &mut s);
            assert_eq!(s, o);
        }
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

    /// A key written as PKCS#8 v2 (what aws-lc-rs generates) or v1 (what `blast keys generate`
    /// writes) loads as the same key: same public key, same (deterministic) signatures, which
    /// verify.
    #[test]
    fn ed25519_pkcs8_versions_load_the_same_key() {
        for _ in 0..4 {
            let doc = Ed25519KeyPair::generate_pkcs8(rng()).unwrap();
            let reference = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
            let v1 = ed25519_pkcs8_v1(doc.as_ref()).unwrap();
            for der in [doc.as_ref(), v1.as_slice()] {
                let key = match PrivateKey::from_pem(pem_encode("PRIVATE KEY", der).as_bytes()) {
                    Ok(PrivateKey::Ed25519(k)) => k,
                    _ => panic!("not an Ed25519 key"),
                };
                let public = key.public_key().as_ref();
                assert_eq!(public, reference.public_key().as_ref());
                for msg in [&b""[..], b"abc", &[7u8; 32]] {
                    let sig = key.sign(msg);
                    assert_eq!(sig.as_ref(), reference.sign(msg).as_ref());
                    assert!(verify_ed25519(public, msg, sig.as_ref()));
                    assert!(!verify_ed25519(public, b"other", sig.as_ref()));
                }
            }
        }
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
