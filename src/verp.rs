//! VERP tokens: the per-recipient envelope sender that lets a bounce name its recipient.
//!
//! A token is `{campaign}-{row}-{mac}`: the campaign id, the row number in base 36 and ten
//! base32 characters (50 bits) of HMAC-SHA256 over both, keyed with the campaign secret. The
//! bounce sink recomputes the MAC, so a forged or altered bounce address is rejected instead of
//! suppressing somebody else. Tokens are lowercase and decoded case-insensitively because some
//! MTAs fold the case of local parts. The same key also makes the `unsubscribe_token` template
//! variable, under a different MAC domain so one can never pass for the other.

use sha2::{Digest, Sha256};

/// Characters of MAC in a token (5 bits each).
const MAC_CHARS: usize = 10;
/// `u64::MAX` in base 36.
const MAX_ROW_CHARS: usize = 13;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Longest campaign id. Every token carries the id, so this bounds [`max_token_len`] and keeps a
/// VERP local part with a few characters around `{token}` within 64 octets; `campaign`
/// validates ids against it (as `campaign::MAX_ID_LEN`) and checks the actual pattern.
pub const MAX_CAMPAIGN_ID_LEN: usize = 24;

/// Minimum secret length: shorter keys are guessable.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerpError {
    #[error("the secret is {0} bytes; use at least {MIN_SECRET_LEN} random bytes")]
    ShortSecret(usize),
    #[error("not a blast VERP token")]
    Malformed,
    #[error("the token's signature does not match (forged or altered)")]
    BadMac,
}

/// The HMAC-SHA256 key for VERP and unsubscribe tokens, kept as the hash states after the
/// inner and outer padded key blocks (RFC 2104), so a MAC costs two short hashes and no key
/// set-up. Two MACs per message made ring's general-purpose HMAC (context copies, incremental
/// buffering) about 8 % of rendering CPU in `scripts/bench-render`; this takes about half that.
#[derive(Clone)]
pub struct VerpKey {
    inner: Sha256,
    outer: Sha256,
}

impl std::fmt::Debug for VerpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerpKey(<redacted>)")
    }
}

impl VerpKey {
    pub fn new(secret: &[u8]) -> Result<VerpKey, VerpError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(VerpError::ShortSecret(secret.len()));
        }
        let mut block = [0u8; 64];
        if secret.len() > block.len() {
            block[..32].copy_from_slice(&Sha256::digest(secret));
        } else {
            block[..secret.len()].copy_from_slice(secret);
        }
        let pad = |byte: u8| {
            let mut h = Sha256::new();
            h.update(block.map(|b| b ^ byte));
            h
        };
        Ok(VerpKey {
            inner: pad(0x36),
            outer: pad(0x5c),
        })
    }

    fn mac(&self, domain: u8, campaign: &str, row: u64, extra: &str, out: &mut String) {
        let mut h = self.inner.clone();
        h.update([domain]);
        h.update(campaign.as_bytes());
        h.update([0]);
        h.update(row.to_be_bytes());
        h.update(extra.as_bytes());
        let inner = h.finalize();
        let mut h = self.outer.clone();
        h.update(inner);
        let tag = h.finalize();
        push_base32(&tag[..8], MAC_CHARS, out);
    }

    /// Appends the VERP token for `campaign`/`row` to `out`.
    pub fn encode_into(&self, campaign: &str, row: u64, out: &mut String) {
        out.push_str(campaign);
        out.push('-');
        push_base36(row, out);
        out.push('-');
        self.mac(b'b', campaign, row, "", out);
    }

    pub fn encode(&self, campaign: &str, row: u64) -> String {
        let mut s = String::with_capacity(max_token_len(campaign));
        self.encode_into(campaign, row, &mut s);
        s
    }

    /// Decodes and authenticates a token, returning (campaign id, row).
    pub fn decode(&self, token: &str) -> Result<(String, u64), VerpError> {
        let token = token.to_ascii_lowercase();
        let mut parts = token.rsplitn(3, '-');
        let (Some(mac), Some(row), Some(campaign)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(VerpError::Malformed);
        };
        if mac.len() != MAC_CHARS
            || campaign.is_empty()
            || row.is_empty()
            || row.len() > MAX_ROW_CHARS
        {
            return Err(VerpError::Malformed);
        }
        let row = u64::from_str_radix(row, 36).map_err(|_| VerpError::Malformed)?;
        let mut expected = String::with_capacity(MAC_CHARS);
        self.mac(b'b', campaign, row, "", &mut expected);
        if constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            Ok((campaign.to_string(), row))
        } else {
            Err(VerpError::BadMac)
        }
    }

    /// The token put into unsubscribe links: `{row}-{mac}` with the MAC over campaign, row and
    /// address, so the receiving web endpoint can verify it against the journal's address.
    pub fn unsubscribe_token(&self, campaign: &str, row: u64, address: &str) -> String {
        let mut s = String::with_capacity(MAX_ROW_CHARS + 1 + MAC_CHARS);
        push_base36(row, &mut s);
        s.push('-');
        self.mac(b'u', campaign, row, address, &mut s);
        s
    }
}

/// Compares MACs without an early exit, so timing reveals nothing about a forged token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Longest token a campaign id can produce.
pub fn max_token_len(campaign: &str) -> usize {
    campaign.len() + 1 + MAX_ROW_CHARS + 1 + MAC_CHARS
}

fn push_base36(mut n: u64, out: &mut String) {
    let mut buf = [0u8; MAX_ROW_CHARS];
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (n % 36) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ascii"));
}

fn push_base32(bytes: &[u8], chars: usize, out: &mut String) {
    let mut acc: u64 = 0;
    for &b in bytes.iter().take(8) {
        acc = (acc << 8) | b as u64;
    }
    for i in 0..chars {
        let shift = 64 - 5 * (i + 1);
        out.push(BASE32[((acc >> shift) & 31) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VerpKey {
        VerpKey::new(b"0123456789abcdef-test").unwrap()
    }

    /// The precomputed-pad HMAC equals aws-lc-rs's HMAC-SHA256 for every key length class.
    #[test]
    fn mac_is_hmac_sha256() {
        use aws_lc_rs::hmac;
        for secret in [
            &b"0123456789abcdef"[..],
            &[7u8; 64],
            &[9u8; 65],
            &[1u8; 200],
        ] {
            let ours = VerpKey::new(secret).unwrap();
            let reference = hmac::Key::new(hmac::HMAC_SHA256, secret);
            for (campaign, row, extra) in [("c", 0, ""), ("spring-2026", 1_234_567, "a@b.test")] {
                let mut input = vec![b'u'];
                input.extend_from_slice(campaign.as_bytes());
                input.push(0);
                input.extend_from_slice(&u64::to_be_bytes(row));
                input.extend_from_slice(extra.as_bytes());
                let mut expected = String::new();
                push_base32(
                    &hmac::sign(&reference, &input).as_ref()[..8],
                    MAC_CHARS,
                    &mut expected,
                );
                let mut got = String::new();
                ours.mac(b'u', campaign, row, extra, &mut got);
                assert_eq!(got, expected, "key of {} bytes", secret.len());
            }
        }
    }

    #[test]
    fn round_trip() {
        let k = key();
        for row in [1, 35, 36, 1_200_000, u64::MAX] {
            let t = k.encode("spring-2026", row);
            assert!(t.len() <= max_token_len("spring-2026"));
            assert_eq!(k.decode(&t).unwrap(), ("spring-2026".to_string(), row));
            assert_eq!(k.decode(&t.to_uppercase()).unwrap().1, row);
        }
    }

    #[test]
    fn forged_tokens_are_rejected() {
        let k = key();
        let t = k.encode("spring", 42);
        // Another row with the same MAC.
        let forged = t.replacen("-16-", "-17-", 1);
        assert_ne!(forged, t);
        assert_eq!(k.decode(&forged), Err(VerpError::BadMac));
        // Another campaign.
        assert_eq!(k.decode(&format!("x{t}")), Err(VerpError::BadMac));
        // Another key.
        let other = VerpKey::new(b"another-secret-key!").unwrap();
        assert_eq!(other.decode(&t), Err(VerpError::BadMac));
        assert_eq!(k.decode("nodashes"), Err(VerpError::Malformed));
        assert_eq!(k.decode("a-zz-short"), Err(VerpError::Malformed));
    }

    #[test]
    fn short_secret_is_refused() {
        assert_eq!(
            VerpKey::new(b"short").unwrap_err(),
            VerpError::ShortSecret(5)
        );
    }

    #[test]
    fn unsubscribe_token_differs_from_verp_and_binds_the_address() {
        let k = key();
        let u1 = k.unsubscribe_token("c", 7, "a@x.test");
        let u2 = k.unsubscribe_token("c", 7, "b@x.test");
        assert_ne!(u1, u2);
        assert!(k.decode(&format!("c-{u1}")).is_err());
    }

    #[test]
    fn worst_case_local_part_fits() {
        let id = "a".repeat(MAX_CAMPAIGN_ID_LEN);
        assert!(max_token_len(&id) + "b-".len() <= 64);
    }
}
