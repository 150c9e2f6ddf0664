//! DKIM keys: the [`Algorithm`] a key signs with, [`PrivateKey`] loading from PEM (PKCS#8 RSA
//! or Ed25519, PKCS#1 RSA) with the reasons a key is refused, and the public half as the DNS
//! record to publish ([`dns_record`]).

use std::fmt;
use std::path::Path;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};

use super::base64;

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

    /// Reads and parses a key file: a regular file of at most
    /// [`MAX_INPUT_FILE`](crate::private::MAX_INPUT_FILE) bytes.
    pub fn load(path: &Path) -> Result<PrivateKey, String> {
        use crate::private::{MAX_INPUT_FILE, ReadProblem, read_regular};
        let pem = read_regular(path, MAX_INPUT_FILE).map_err(|p| match p {
            ReadProblem::Io(e) => format!("cannot read {}: {e}", path.display()),
            _ => format!("{} {p}", path.display()),
        })?;
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
