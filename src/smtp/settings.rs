//! Per-node client settings, shared by every connection to that node.
//!
//! Built once through [`ClientSettingsBuilder`] because the rustls config
//! (root store parsing, optional CA file) is costly and must not be redone
//! per connection; connections hold an `Arc<ClientSettings>`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::{SmtpError, tls};

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text; only sensible on loopback or a private link.
    None,
    /// Upgrade after EHLO; fails if the server does not offer STARTTLS
    /// (no silent downgrade).
    StartTls,
    /// Implicit TLS on connect (port 465 style).
    Tls,
    /// STARTTLS when the server offers it (verified like `StartTls`), plain SMTP when it does
    /// not: server-to-server delivery to MX hosts (RFC 3207 §4).
    Opportunistic,
}

/// SMTP AUTH credentials.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }
}

/// Redacts the password: settings end up in logs and error reports.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Settings for connections to one server. Read-only once built.
#[derive(Debug)]
pub struct ClientSettings {
    pub helo_name: String,
    pub tls: TlsMode,
    /// SNI and certificate name: we connect by IP, so it cannot be derived.
    pub tls_server_name: String,
    /// Extra trusted CA (PEM) on top of webpki-roots; verification is
    /// always on.
    pub ca_file: Option<PathBuf>,
    /// AUTH PLAIN if advertised, else LOGIN.
    pub auth: Option<Credentials>,
    /// TCP connect plus greeting (plus handshake for implicit TLS).
    pub connect_timeout: Duration,
    /// Each reply to a command, and each command write.
    pub command_timeout: Duration,
    /// Writing the body and the reply after the final ".". A whole transaction ends within
    /// `command_timeout + data_timeout` (see [`Connection::send_until`]).
    ///
    /// [`Connection::send_until`]: super::Connection::send_until
    pub data_timeout: Duration,
    /// Use PIPELINING when the server advertises it.
    pub pipelining: bool,
    pub(crate) tls_config: Option<Arc<ClientConfig>>,
    pub(crate) server_name: Option<ServerName<'static>>,
}

impl ClientSettings {
    /// A copy for another server with its own TLS name, sharing the built TLS config (for
    /// direct delivery: one settings per MX host without rebuilding the root store).
    pub fn with_server_name(&self, name: &str) -> Result<Arc<ClientSettings>, SmtpError> {
        let server_name = match self.tls {
            TlsMode::None => None,
            _ => Some(
                ServerName::try_from(name.to_string())
                    .map_err(|_| SmtpError::InvalidServerName(name.to_string()))?,
            ),
        };
        Ok(Arc::new(ClientSettings {
            helo_name: self.helo_name.clone(),
            tls: self.tls,
            tls_server_name: name.to_string(),
            ca_file: self.ca_file.clone(),
            auth: self.auth.clone(),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            data_timeout: self.data_timeout,
            pipelining: self.pipelining,
            tls_config: self.tls_config.clone(),
            server_name,
        }))
    }

    /// Starts a builder with conservative defaults: no TLS, no AUTH,
    /// pipelining on, timeouts 30 s connect / 60 s command / 180 s data.
    pub fn builder(helo_name: impl Into<String>) -> ClientSettingsBuilder {
        ClientSettingsBuilder {
            helo_name: helo_name.into(),
            tls: TlsMode::None,
            tls_server_name: String::new(),
            ca_file: None,
            auth: None,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(180),
            pipelining: true,
        }
    }
}

/// Builder for [`ClientSettings`]; [`build`](Self::build) validates names
/// and builds the TLS config.
#[derive(Debug, Clone)]
pub struct ClientSettingsBuilder {
    helo_name: String,
    tls: TlsMode,
    tls_server_name: String,
    ca_file: Option<PathBuf>,
    auth: Option<Credentials>,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
    pipelining: bool,
}

impl ClientSettingsBuilder {
    pub fn tls(mut self, mode: TlsMode, server_name: impl Into<String>) -> Self {
        self.tls = mode;
        self.tls_server_name = server_name.into();
        self
    }

    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    pub fn auth(mut self, credentials: Credentials) -> Self {
        self.auth = Some(credentials);
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    pub fn data_timeout(mut self, d: Duration) -> Self {
        self.data_timeout = d;
        self
    }

    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }

    pub fn build(self) -> Result<Arc<ClientSettings>, SmtpError> {
        let helo_ok =
            !self.helo_name.is_empty() && self.helo_name.bytes().all(|b| b.is_ascii_graphic());
        if !helo_ok {
            return Err(SmtpError::InvalidHeloName(self.helo_name));
        }
        let (tls_config, server_name) = match self.tls {
            TlsMode::None => (None, None),
            TlsMode::StartTls | TlsMode::Tls | TlsMode::Opportunistic => {
                let name = ServerName::try_from(self.tls_server_name.clone())
                    .map_err(|_| SmtpError::InvalidServerName(self.tls_server_name.clone()))?;
                (
                    Some(tls::client_config(self.ca_file.as_deref())?),
                    Some(name),
                )
            }
        };
        Ok(Arc::new(ClientSettings {
            helo_name: self.helo_name,
            tls: self.tls,
            tls_server_name: self.tls_server_name,
            ca_file: self.ca_file,
            auth: self.auth,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            data_timeout: self.data_timeout,
            pipelining: self.pipelining,
            tls_config,
            server_name,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_password() {
        let c = Credentials::new("bob", "hunter2");
        let s = format!("{c:?}");
        assert!(s.contains("bob") && !s.contains("hunter2"), "{s}");
        let settings = ClientSettings::builder("me.example")
            .auth(c)
            .build()
            .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn rejects_bad_names() {
        let r = ClientSettings::builder("me\r\nRCPT TO:<x>").build();
        assert!(matches!(r, Err(SmtpError::InvalidHeloName(_))));
        let r = ClientSettings::builder("me")
            .tls(TlsMode::StartTls, "not a name")
            .build();
        assert!(matches!(r, Err(SmtpError::InvalidServerName(_))));
    }

    #[test]
    fn missing_ca_file_is_an_error() {
        let r = ClientSettings::builder("me")
            .tls(TlsMode::Tls, "relay.example")
            .ca_file("/nonexistent/ca.pem")
            .build();
        assert!(matches!(r, Err(SmtpError::TlsConfig(_))));
    }

    #[test]
    fn a_ca_file_that_is_no_file_is_refused_unread() {
        for (path, what) in [
            ("/", "CA file / is a directory, not a file"),
            ("/dev/zero", "CA file /dev/zero is not a regular file"),
        ] {
            let r = ClientSettings::builder("me")
                .tls(TlsMode::Tls, "relay.example")
                .ca_file(path)
                .build();
            match r {
                Err(SmtpError::TlsConfig(m)) => assert_eq!(m, what),
                other => panic!("{path}: {other:?}"),
            }
        }
    }
}
