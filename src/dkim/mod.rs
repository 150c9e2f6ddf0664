//! DKIM signing (RFC 6376): rsa-sha256 and ed25519-sha256 (RFC 8463), relaxed/relaxed, on
//! aws-lc-rs (keys, hashes, signatures).
//!
//! Messages are signed in the feeder, on the render threads (`Renderer::render` calls
//! [`Dkim::sign`]), so relays need no milter and signing scales with the render threads.
//!
//! # Why not mail-auth
//!
//! mail-send uses mail-auth; blast does not, measured on Rust 1.95 (the pinned toolchain):
//! - mail-auth 0.14 / 0.15 do not build: `mail-parser@1.0.1 requires rustc 1.98`.
//! - mail-auth 0.7.5 (the newest with a `ring` backend) builds, but adds 30 crates to blast's
//!   tree for a job that needs none of them: an alpha DNS resolver (hickory 0.26.0-alpha.1) with
//!   a moka cache, a second mail-builder (0.4.4 next to our 2.0.1), flate2, uuid, url,
//!   mail-parser as a normal dependency. Signing needs SHA-256, RSA PKCS#1 v1.5 and Ed25519.
//!
//! # Why aws-lc-rs
//!
//! Ed25519 signing is most of what DKIM costs a send (issue: ed25519 ≤ 15 % of throughput).
//! Measured on this project's 2-core machine (AMD EPYC), one Ed25519 signature of a 32-byte
//! hash: ring 0.17 17.1 µs, curve25519-dalek 5 with batched point compression (what blast used
//! before) 10.1 µs, aws-lc-rs 1.19 5.4 µs (AWS-LC's s2n-bignum fixed-base multiplication). So
//! aws-lc-rs is the one crypto library of the build: DKIM, the journal's list fingerprint and
//! rustls's provider (its default) all use it, and ring and curve25519-dalek are gone. RSA-2048
//! signing got faster too: 216 µs per message (ring: 420 µs).
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
