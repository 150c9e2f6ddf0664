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
//! # Layout
//!
//! This file holds the public API: [`Dkim`] (what a campaign signs with) and its [`Signer`]s,
//! plus the base64 and random-number helpers the parts share. `key` loads keys ([`Algorithm`],
//! [`PrivateKey`]) and writes their DNS record, `sign` canonicalises and signs ([`Dkim::sign`],
//! [`body_hash`]), `generate` is `blast keys generate`. Everything is re-exported here, so
//! callers name `crate::dkim::…` only.
//!
//! This module uses nothing of the crate but `address` (domain syntax, in `generate`):
//! configuration sits above it, in `campaign`.

mod generate;
mod key;
mod sign;

use std::fmt;
use std::path::PathBuf;

use aws_lc_rs::rand::SystemRandom;

pub use generate::{GeneratedKey, generate_key, parse_algorithm};
pub use key::{Algorithm, PrivateKey, dns_record};
pub use sign::{SIGNED_HEADERS, body_hash};

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

/// What `[dkim]` asks for, validated (by `campaign`): the loaded keys and the Feedback-ID.
#[derive(Debug)]
pub struct Dkim {
    /// One or two (dual) signatures.
    pub signers: Vec<Signer>,
    /// The Feedback-ID header value, if any.
    pub feedback_id: Option<String>,
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

/// The system random source, made once: RSA signing and key generation use it.
fn rng() -> &'static SystemRandom {
    static RNG: std::sync::OnceLock<SystemRandom> = std::sync::OnceLock::new();
    RNG.get_or_init(SystemRandom::new)
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
}
