//! `blast keys generate`: a new key with aws-lc-rs, written as PKCS#8 v1 PEM (what `openssl
//! genpkey` writes, mode 0600, never over an existing key) next to its DNS record.

use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{Ed25519KeyPair, RsaKeyPair};

use crate::address::valid_domain;

use super::{Algorithm, PrivateKey, base64, dns_record, rng};

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

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::KeyPair;

    use super::super::verify_ed25519;
    use super::*;

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
}
