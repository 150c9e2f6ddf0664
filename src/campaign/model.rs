//! The validated campaign: what `Campaign::load` returns and the rest of blast reads. Every
//! value here has been checked; defaults are filled in and relative paths resolved.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::dkim::Dkim;

use super::direct::DirectConfig;
use super::dns::DnsConfig;
use super::values::{Rate, TimeOfDay, TlsSetting};

/// A name and an address, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: String,
}

/// Where a template's text came from, so template errors point into the right file and line.
#[derive(Debug, Clone)]
pub struct TemplateSource {
    /// Name used by the template engine; `.html` names get HTML auto-escaping.
    pub name: String,
    pub text: String,
    /// The file that holds the text.
    pub file: PathBuf,
    /// Line in `file` where the text starts (1 for template files).
    pub first_line: usize,
}

/// Subject and bodies.
#[derive(Debug, Clone)]
pub struct Templates {
    pub subject: TemplateSource,
    pub to_name: Option<TemplateSource>,
    pub text: Option<TemplateSource>,
    pub html: Option<TemplateSource>,
}

#[derive(Debug, Clone)]
pub struct Envelope {
    /// Part of the local part before `{token}`.
    pub verp_prefix: String,
    /// Part of the local part after `{token}`.
    pub verp_suffix: String,
    /// The bounce domain, lowercased.
    pub verp_domain: String,
    /// Environment variable holding the HMAC secret.
    pub secret_env: String,
}

#[derive(Debug, Clone)]
pub struct Unsubscribe {
    pub mailto: Option<TemplateSource>,
    pub url: Option<TemplateSource>,
    pub one_click: bool,
}

#[derive(Debug, Clone)]
pub struct RecipientsOptions {
    pub path: PathBuf,
    pub delimiter: u8,
    pub header: bool,
    pub columns: Option<Vec<String>>,
    pub address_column: String,
    pub dedupe: bool,
    pub generate: Option<u64>,
    /// Longest field in bytes (`max_field_size`).
    pub max_field_size: usize,
    /// Longest record in bytes (`max_record_size`).
    pub max_record_size: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub rate: Option<Rate>,
    pub queue_depth: usize,
    pub render_threads: usize,
    /// Largest output of one template render, in bytes (`max_part_size`).
    pub max_part_size: usize,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub max_age: Duration,
    pub fallback_after: u32,
    pub all_nodes_down: Duration,
}

#[derive(Debug, Clone)]
pub struct SmtpOptions {
    pub helo: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub pipelining: bool,
    pub ca_file: Option<PathBuf>,
}

/// Scheduling guards.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// Do not start or resume a run after this UTC time of day.
    pub not_after: Option<TimeOfDay>,
}

/// The suppression list settings.
#[derive(Debug, Clone)]
pub struct SuppressionOptions {
    pub path: PathBuf,
    pub soft_bounce_limit: u32,
}

#[derive(Debug, Clone)]
pub struct Outputs {
    pub delivery_log: PathBuf,
    pub rejects: PathBuf,
    pub journal: PathBuf,
}

/// Where a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddress {
    /// A relay reachable over TCP.
    Remote { host: String, port: u16 },
    /// blast's in-process receiver.
    Embedded,
}

#[derive(Debug, Clone)]
pub struct NodeAuth {
    pub user: String,
    /// Name of the environment variable with the password (never the password itself).
    pub password_env: String,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub address: NodeAddress,
    pub weight: u32,
    pub max_connections: u32,
    pub messages_per_connection: u32,
    pub rate: Option<Rate>,
    pub tls: TlsSetting,
    pub tls_server_name: String,
    pub auth: Option<NodeAuth>,
    pub fallback: bool,
}

/// A validated campaign.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// The campaign file.
    pub path: PathBuf,
    pub id: String,
    pub name: String,
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    pub headers: Vec<(String, String)>,
    pub envelope: Envelope,
    pub templates: Templates,
    pub recipients: RecipientsOptions,
    pub unsubscribe: Option<Unsubscribe>,
    /// DKIM keys (loaded) and Feedback-ID; `None` without `[dkim]`.
    pub dkim: Option<Arc<Dkim>>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub smtp: SmtpOptions,
    pub output: Outputs,
    pub schedule: Schedule,
    pub suppression: SuppressionOptions,
    pub nodes: Vec<Node>,
    /// `[dns]`, validated.
    pub dns: DnsConfig,
    /// `Some` with `delivery = "direct"`: no relay pool, straight to the MX hosts.
    pub direct: Option<DirectConfig>,
}

impl Campaign {
    /// Directory of the campaign file: the base of relative paths.
    pub fn dir(&self) -> &Path {
        base_dir(&self.path)
    }

    /// True when every node is blast's embedded receiver (nothing leaves the machine).
    pub fn all_embedded(&self) -> bool {
        self.direct.is_none()
            && self
                .nodes
                .iter()
                .all(|n| n.address == NodeAddress::Embedded)
    }
}

/// The directory of a file (`.` for a bare file name): the base of its relative paths.
pub(super) fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
