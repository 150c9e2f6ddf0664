//! rustls client configuration.
//!
//! Verification is always on: relays are addressed by IP, so the expected
//! name comes from `tls_server_name`, and private CAs are added through a PEM
//! file rather than by turning verification off.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use super::SmtpError;

/// Builds the (costly) client config: webpki roots plus `ca_file`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, SmtpError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let err = |what: String| SmtpError::TlsConfig(format!("{}: {what}", path.display()));
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
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
