//! VERP tokens: the per-recipient envelope sender that lets a bounce name its recipient.
//!
//! A token is `{campaign}-{row}-{tag}{mac}`: the campaign id, the row number in base 36, eight
//! base32 characters (40 bits) of an HMAC over the recipient's address (the address tag), and
//! ten base32 characters (50 bits) of HMAC-SHA256 over campaign, row and tag, keyed with the
//! campaign secret. The bounce sink recomputes the MAC, so a forged or altered bounce address
//! is rejected instead of suppressing somebody else; and since every recipient can read their
//! own token from Return-Path, the sink acts on a report only for the address the token was
//! made for: the one the tag binds ([`VerpKey::is_bound_to`]), checked without the journal.
//! Tokens are lowercase and decoded case-insensitively because some MTAs fold the case of local
//! parts; the tag is over the lowercased address for the same reason. The same key also makes
//! the `unsubscribe_token` template variable, under a different MAC domain so one can never
//! pass for the other.
//!
//! The tag and the MAC are two keyed passes on purpose: the MAC must be computable from the
//! token alone (the sink authenticates a token before it knows which address to hold it to,
//! and tells a forged token from a genuine one for another address), so it cannot come from
//! the same HMAC output as the tag, which needs the address; and tokens already out in
//! Return-Paths must keep verifying. The tag's HMAC costs about 180 ns per message.
//!
//! Tokens of messages sent before addresses were bound (`{campaign}-{row}-{mac}`, ten
//! characters after the last `-`) still verify; they bind no address ([`VerpToken::binds_address`]
//! is false), so the sink acts on them only through the journal's address for the row.

use sha2::{Digest, Sha256};

/// Characters of MAC in a token (5 bits each).
const MAC_CHARS: usize = 10;
/// Characters of address tag in a token (5 bits each): a report naming another address than
/// the token's passes the check with probability 2^-40.
const TAG_CHARS: usize = 8;
/// Characters after a bound token's last `-`: tag and MAC.
const BOUND_CHARS: usize = TAG_CHARS + MAC_CHARS;
/// `u64::MAX` in base 36.
const MAX_ROW_CHARS: usize = 13;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// MAC domains: one byte before every MAC input, so no MAC can pass for another kind.
const DOMAIN_TOKEN: u8 = b'v';
const DOMAIN_ADDRESS: u8 = b'a';
const DOMAIN_UNSUBSCRIBE: u8 = b'u';
/// The MAC of tokens that bind no address (before the address tag existed).
const DOMAIN_UNBOUND_TOKEN: u8 = b'b';

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

/// An authenticated token: what [`VerpKey::verify`] read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerpToken {
    pub campaign: String,
    pub row: u64,
    /// The address tag; None for a token that binds no address.
    tag: Option<String>,
}

impl VerpToken {
    /// Whether the token binds its recipient's address (see [`VerpKey::is_bound_to`]).
    pub fn binds_address(&self) -> bool {
        self.tag.is_some()
    }
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

    /// Appends `chars` base32 characters of HMAC(domain ‖ campaign ‖ 0 ‖ row ‖ extra) to `out`;
    /// `lowercase` folds the ASCII case of `extra` first.
    fn mac_chars(
        &self,
        domain: u8,
        (campaign, row): (&str, u64),
        (extra, lowercase): (&[u8], bool),
        chars: usize,
        out: &mut String,
    ) {
        let mut h = self.inner.clone();
        h.update([domain]);
        h.update(campaign.as_bytes());
        h.update([0]);
        h.update(row.to_be_bytes());
        if lowercase {
            let mut buf = [0u8; 64];
            for chunk in extra.chunks(buf.len()) {
                let buf = &mut buf[..chunk.len()];
                buf.copy_from_slice(chunk);
                buf.make_ascii_lowercase();
                h.update(&*buf);
            }
        } else {
            h.update(extra);
        }
        let inner = h.finalize();
        let mut h = self.outer.clone();
        h.update(inner);
        let tag = h.finalize();
        push_base32(&tag[..8], chars, out);
    }

    fn mac(&self, domain: u8, campaign: &str, row: u64, extra: &str, out: &mut String) {
        self.mac_chars(
            domain,
            (campaign, row),
            (extra.as_bytes(), false),
            MAC_CHARS,
            out,
        );
    }

    /// Appends the address tag of `address` (case-insensitive) for `campaign`/`row` to `out`.
    fn address_tag(&self, campaign: &str, row: u64, address: &str, out: &mut String) {
        self.mac_chars(
            DOMAIN_ADDRESS,
            (campaign, row),
            (address.trim().as_bytes(), true),
            TAG_CHARS,
            out,
        );
    }

    /// Appends the VERP token of `row` of `campaign`, sent to `address`, to `out`.
    pub fn encode_into(&self, campaign: &str, row: u64, address: &str, out: &mut String) {
        out.push_str(campaign);
        out.push('-');
        push_base36(row, out);
        out.push('-');
        let tag_at = out.len();
        self.address_tag(campaign, row, address, out);
        let mut mac = String::with_capacity(MAC_CHARS);
        self.mac(DOMAIN_TOKEN, campaign, row, &out[tag_at..], &mut mac);
        out.push_str(&mac);
    }

    pub fn encode(&self, campaign: &str, row: u64, address: &str) -> String {
        let mut s = String::with_capacity(max_token_len(campaign));
        self.encode_into(campaign, row, address, &mut s);
        s
    }

    /// Decodes and authenticates a token, returning (campaign id, row). Whose address it was
    /// made for is [`VerpKey::verify`]'s and [`VerpKey::is_bound_to`]'s business.
    pub fn decode(&self, token: &str) -> Result<(String, u64), VerpError> {
        self.verify(token).map(|t| (t.campaign, t.row))
    }

    /// Decodes and authenticates a token (bound to an address or not).
    pub fn verify(&self, token: &str) -> Result<VerpToken, VerpError> {
        let token = token.to_ascii_lowercase();
        let mut parts = token.rsplitn(3, '-');
        let (Some(last), Some(row), Some(campaign)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(VerpError::Malformed);
        };
        if !matches!(last.len(), MAC_CHARS | BOUND_CHARS)
            || !last.is_ascii()
            || campaign.is_empty()
            || row.is_empty()
            || row.len() > MAX_ROW_CHARS
        {
            return Err(VerpError::Malformed);
        }
        let row = u64::from_str_radix(row, 36).map_err(|_| VerpError::Malformed)?;
        let (tag, mac) = last.split_at(last.len() - MAC_CHARS);
        let mut expected = String::with_capacity(MAC_CHARS);
        if tag.is_empty() {
            self.mac(DOMAIN_UNBOUND_TOKEN, campaign, row, "", &mut expected);
        } else {
            self.mac(DOMAIN_TOKEN, campaign, row, tag, &mut expected);
        }
        if constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            Ok(VerpToken {
                campaign: campaign.to_string(),
                row,
                tag: Some(tag.to_string()).filter(|t| !t.is_empty()),
            })
        } else {
            Err(VerpError::BadMac)
        }
    }

    /// Whether `token` was made for `address` (ASCII case ignored): Some(true) or Some(false),
    /// or None if the token binds no address.
    pub fn is_bound_to(&self, token: &VerpToken, address: &str) -> Option<bool> {
        let tag = token.tag.as_deref()?;
        let mut expected = String::with_capacity(TAG_CHARS);
        self.address_tag(&token.campaign, token.row, address, &mut expected);
        Some(constant_time_eq(expected.as_bytes(), tag.as_bytes()))
    }

    /// The token put into unsubscribe links: `{row}-{mac}` with the MAC over campaign, row and
    /// address, so the receiving web endpoint can verify it against the journal's address.
    pub fn unsubscribe_token(&self, campaign: &str, row: u64, address: &str) -> String {
        let mut s = String::with_capacity(MAX_ROW_CHARS + 1 + MAC_CHARS);
        push_base36(row, &mut s);
        s.push('-');
        self.mac(DOMAIN_UNSUBSCRIBE, campaign, row, address, &mut s);
        s
    }
}

/// Compares MACs without an early exit, so timing reveals nothing about a forged token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Longest token a campaign id can produce.
pub fn max_token_len(campaign: &str) -> usize {
    campaign.len() + 1 + MAX_ROW_CHARS + 1 + TAG_CHARS + MAC_CHARS
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
            let t = k.encode("spring-2026", row, "Ann@Example.org");
            assert!(t.len() <= max_token_len("spring-2026"));
            assert_eq!(k.decode(&t).unwrap(), ("spring-2026".to_string(), row));
            assert_eq!(k.decode(&t.to_uppercase()).unwrap().1, row);
            let v = k.verify(&t.to_uppercase()).unwrap();
            assert!(v.binds_address());
            assert_eq!(k.is_bound_to(&v, "ann@example.org"), Some(true));
            assert_eq!(k.is_bound_to(&v, " ANN@EXAMPLE.ORG "), Some(true));
            assert_eq!(k.is_bound_to(&v, "bob@example.org"), Some(false));
        }
        assert_eq!(
            k.encode("spring-2026", u64::MAX, "a@b.test").len(),
            max_token_len("spring-2026")
        );
    }

    /// Issue 13, item 1: the token binds its recipient's address, for its campaign and row only.
    #[test]
    fn token_binds_the_address_of_its_row() {
        let k = key();
        let t = k.verify(&k.encode("spring", 7, "a@x.test")).unwrap();
        assert_eq!(k.is_bound_to(&t, "a@x.test"), Some(true));
        for other in ["b@x.test", "a@x.tes", "a@x.test.", ""] {
            assert_eq!(k.is_bound_to(&t, other), Some(false), "{other:?}");
        }
        // The same address on another row or campaign has another tag.
        let tag = |c: &str, row: u64| {
            let s = k.encode(c, row, "a@x.test");
            s[s.len() - BOUND_CHARS..s.len() - MAC_CHARS].to_string()
        };
        assert_ne!(tag("spring", 7), tag("spring", 8));
        assert_ne!(tag("spring", 7), tag("autumn", 7));
        // Another token's tag spliced in breaks the MAC.
        let mine = k.encode("spring", 7, "a@x.test");
        let theirs = k.encode("spring", 7, "b@x.test");
        let cut = mine.len() - MAC_CHARS;
        let spliced = format!("{}{}", &theirs[..cut], &mine[cut..]);
        assert_eq!(k.verify(&spliced), Err(VerpError::BadMac));
    }

    /// Tokens made before addresses were bound (`{campaign}-{row}-{mac}`) still verify, bound to
    /// no address.
    #[test]
    fn unbound_tokens_still_verify() {
        let k = key();
        let mut t = String::from("spring-16-");
        k.mac(DOMAIN_UNBOUND_TOKEN, "spring", 42, "", &mut t);
        let v = k.verify(&t).unwrap();
        assert_eq!((v.campaign.as_str(), v.row), ("spring", 42));
        assert!(!v.binds_address());
        assert_eq!(k.is_bound_to(&v, "a@x.test"), None);
        // A bound token's MAC domain does not verify as an unbound token.
        let mut other = String::from("spring-16-");
        k.mac(DOMAIN_TOKEN, "spring", 42, "", &mut other);
        assert_eq!(k.verify(&other), Err(VerpError::BadMac));
    }

    #[test]
    fn forged_tokens_are_rejected() {
        let k = key();
        let t = k.encode("spring", 42, "a@x.test");
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
        // Non-ASCII where tag and MAC go: malformed, no panic.
        assert_eq!(
            k.decode("a-1-\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"),
            Err(VerpError::Malformed)
        );
        assert_eq!(
            k.decode("a-1-\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"),
            Err(VerpError::Malformed)
        );
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
