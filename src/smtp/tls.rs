//! rustls client configuration.
//!
//! Verification is always on: relays are addressed by IP, so the expected
//! name comes from `tls_server_name`, and private CAs are added through a PEM
//! file rather than by turning verification off.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use super::SmtpError;

/// Largest `ca_file` read (a whole public CA bundle is about 250 KB).
const MAX_CA_FILE: u64 = 1 << 20;

/// Builds the (costly) client config: webpki roots plus `ca_file`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, SmtpError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let err = |what: String| SmtpError::TlsConfig(format!("{}: {what}", path.display()));
        let pem = read_ca_file(path)
            .map_err(|what| SmtpError::TlsConfig(format!("CA file {} {what}", path.display())))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(err("no PEM certificates found".into()));
        }
    }
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SmtpError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CA file's bytes: a regular file (a directory or a device such as `/dev/zero` is refused
/// before anything is read, a FIFO before it is opened) of at most [`MAX_CA_FILE`] bytes. The
/// error is a phrase to follow the path.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let regular = |meta: std::fs::Metadata| {
        if meta.is_dir() {
            Err("is a directory, not a file".to_string())
        } else if !meta.is_file() {
            Err("is not a regular file".to_string())
        } else {
            Ok(())
        }
    };
    let cannot = |e: std::io::Error| format!("cannot be read: {e}");
    regular(std::fs::metadata(path).map_err(cannot)?)?;
    let file = File::open(path).map_err(cannot)?;
    regular(file.metadata().map_err(cannot)?)?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(cannot)?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(format!("is larger than {} KB", MAX_CA_FILE >> 10));
    }
    Ok(pem)
}
