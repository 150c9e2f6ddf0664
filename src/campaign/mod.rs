//! `campaign.toml`: the campaign definition, parsed strictly and validated before anything is sent.
//!
//! Parsing happens in two steps. [`CampaignFile`] mirrors the TOML file one to one (unknown keys
//! are rejected, so a typo never silently falls back to a default); [`Campaign::load`] then checks
//! every field and the relations between them and collects *all* problems, each with the file,
//! line and column it comes from and a hint that says what would fix it. Relative paths are taken
//! relative to the campaign file, so a campaign directory can be moved as a whole.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// One problem found in a campaign file, pointing at where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("cannot read campaign file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

impl CampaignError {
    /// Every problem found (a read error is reported as a single problem at 1:1).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            CampaignError::Read { path, source } => vec![Problem {
                file: path.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read: {source}"),
            }],
            CampaignError::Invalid(p) => p.clone(),
        }
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in campaign:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.
// ---------------------------------------------------------------------------------------------

/// `campaign.toml`, exactly as written. See `campaigns/example.toml` for a commented example.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignFile {
    /// Campaign id: 1–24 characters, lowercase ASCII letters, digits and `-`, starting with a
    /// letter or digit. It goes into every VERP token and Message-ID, so it must stay the same for
    /// the life of a campaign; a new id is a new campaign.
    pub id: Spanned<String>,
    /// Human-readable name, shown in progress output and status. Defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// The visible sender.
    pub from: FromSection,
    /// Extra headers added to every message, e.g. `"X-Campaign" = "spring"`. Names must be
    /// printable ASCII without `:`; values are fixed text (no templates, no control characters).
    /// Headers blast writes itself (From, To, Subject, Date, Message-ID, MIME-Version,
    /// Content-*, List-Unsubscribe*, DKIM-Signature, Feedback-ID) cannot be overridden here;
    /// Feedback-ID is set in `[dkim]`.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// The envelope sender (MAIL FROM), where bounces go.
    pub envelope: EnvelopeSection,
    /// Subject and body templates.
    pub message: MessageSection,
    /// The recipient list.
    pub recipients: RecipientsSection,
    /// List-Unsubscribe (RFC 2369) and one-click unsubscribe (RFC 8058).
    #[serde(default)]
    pub unsubscribe: Option<Spanned<UnsubscribeSection>>,
    /// DKIM signing and the Feedback-ID header (see `src/dkim.rs`).
    #[serde(default)]
    pub dkim: Option<Spanned<crate::dkim::DkimSection>>,
    /// Global limits of the pump.
    #[serde(default)]
    pub limits: LimitsSection,
    /// What happens to temporary failures (4xx).
    #[serde(default)]
    pub retry: RetrySection,
    /// SMTP client settings shared by all nodes.
    #[serde(default)]
    pub smtp: SmtpSection,
    /// Where blast writes its files. Relative paths are relative to the campaign file.
    #[serde(default)]
    pub output: OutputSection,
    /// When blast may start sending (for cron and timers).
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// The suppression list: addresses never mailed again (hard bounces, complaints, …).
    #[serde(default)]
    pub suppression: SuppressionSection,
    /// The sender node pool: relay MTAs blast hands messages to. At least one is required
    /// (unless `delivery = "direct"`).
    #[serde(default, rename = "node")]
    pub nodes: Vec<Spanned<NodeSection>>,
    /// "relay" (default): hand every message to the `[[node]]` pool. "direct": deliver to each
    /// recipient domain's MX hosts (see `[direct]` and `src/direct.rs`).
    #[serde(default)]
    pub delivery: Option<Spanned<String>>,
    /// The shared DNS resolver and recipient-domain pre-validation (see `src/dns.rs`).
    #[serde(default)]
    pub dns: crate::dns::DnsSection,
    /// Direct-to-MX delivery settings (with `delivery = "direct"`).
    #[serde(default)]
    pub direct: Option<Spanned<crate::direct::DirectSection>>,
}

/// `[from]`: the From header (and the default Reply-To).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromSection {
    /// Display name, e.g. "Example Shop". Non-ASCII is fine (RFC 2047 encoded).
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Address, e.g. "news@example.com".
    pub address: Spanned<String>,
    /// Optional Reply-To address.
    #[serde(default)]
    pub reply_to: Option<Spanned<String>>,
}

/// `[envelope]`: the per-recipient VERP envelope sender.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSection {
    /// VERP pattern with exactly one `{token}`, on the bounce domain blast receives itself
    /// (`blast sink`), e.g. `"b-{token}@bounce.example.com"`. The token encodes campaign id + row
    /// and an HMAC, so a bounce can be trusted and traced to its recipient.
    pub verp: Spanned<String>,
    /// Name of the environment variable holding the HMAC secret for VERP and unsubscribe tokens
    /// (at least 16 bytes). Secrets never go in the campaign file.
    #[serde(default = "default_secret_env")]
    pub secret_env: Spanned<String>,
}

fn default_secret_env() -> Spanned<String> {
    Spanned::new(0..0, "BLAST_SECRET".to_string())
}

/// `[message]`: templates (minijinja syntax). CSV columns are variables; so are `email`, `row`,
/// `campaign` and `unsubscribe_token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSection {
    /// Subject template, inline. One line; never HTML-escaped.
    pub subject: Spanned<String>,
    /// Display name for the To header, e.g. `"{{ first_name }} {{ last_name }}"`. Without it
    /// To is the bare address.
    #[serde(default)]
    pub to_name: Option<Spanned<String>>,
    /// Plain-text body template, inline. Use either `text` or `text_file`.
    #[serde(default)]
    pub text: Option<Spanned<String>>,
    /// Plain-text body template file (e.g. `templates/spring.txt`).
    #[serde(default)]
    pub text_file: Option<Spanned<String>>,
    /// HTML body template, inline; values are HTML-escaped. Use either `html` or `html_file`.
    #[serde(default)]
    pub html: Option<Spanned<String>>,
    /// HTML body template file (e.g. `templates/spring.html`); values are HTML-escaped.
    #[serde(default)]
    pub html_file: Option<Spanned<String>>,
}

/// `[recipients]`: the CSV list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientsSection {
    /// Path of the CSV file.
    pub path: Spanned<String>,
    /// Field delimiter: one ASCII character. Default ",".
    #[serde(default)]
    pub delimiter: Option<Spanned<String>>,
    /// Whether the first record is a header row naming the columns. Default true.
    #[serde(default = "yes")]
    pub header: bool,
    /// Column names, required when `header = false`; when given with a header row the header
    /// must match (a guard against a reordered export).
    #[serde(default)]
    pub columns: Option<Spanned<Vec<String>>>,
    /// The column holding the recipient address. Default "email".
    #[serde(default = "default_address_column")]
    pub address_column: Spanned<String>,
    /// Drop repeated addresses (case-insensitive). Default true.
    #[serde(default = "yes")]
    pub dedupe: bool,
    /// Write a deterministic demo list of this many rows to `path` when the file is missing.
    /// Meant for the demo campaign.
    #[serde(default)]
    pub generate: Option<u64>,
}

fn default_address_column() -> Spanned<String> {
    Spanned::new(0..0, "email".to_string())
}

fn yes() -> bool {
    true
}

/// `[unsubscribe]`: List-Unsubscribe with per-recipient URLs (templates).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeSection {
    /// mailto address template, e.g. `"unsubscribe+{{ unsubscribe_token }}@example.com"`.
    #[serde(default)]
    pub mailto: Option<Spanned<String>>,
    /// https URL template, e.g. `"https://example.com/u/{{ unsubscribe_token }}"`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Add `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058). Needs an https `url`.
    /// Default true when `url` is set.
    #[serde(default)]
    pub one_click: Option<Spanned<bool>>,
}

/// `[limits]`: global bounds of the pump.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Global send rate over all nodes, e.g. "500/s" or "20000/h". Unlimited when absent.
    #[serde(default)]
    pub rate: Option<Spanned<Rate>>,
    /// Rendered messages waiting for a connection (the dispatch queue). Bounds memory: when it is
    /// full the CSV reader waits. Default 1000.
    #[serde(default)]
    pub queue_depth: Option<Spanned<u64>>,
    /// Threads rendering messages. Default: one per core, minus one for the network side
    /// (at least one).
    #[serde(default)]
    pub render_threads: Option<Spanned<u64>>,
}

/// `[retry]`: temporary failures (4xx, lost connections) are retried with exponential backoff and
/// jitter; 5xx is final and never retried.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Delivery attempts per recipient, the first included. Default 5.
    #[serde(default)]
    pub attempts: Option<Spanned<u64>>,
    /// Delay before the first retry; doubled each time. Default "30s".
    #[serde(default)]
    pub backoff: Option<Spanned<Dur>>,
    /// Upper bound of the delay between two attempts. Default "10m".
    #[serde(default)]
    pub max_backoff: Option<Spanned<Dur>>,
    /// Give up on a recipient this long after its first attempt. Default "4h".
    #[serde(default)]
    pub max_age: Option<Spanned<Dur>>,
    /// After this many deferrals on primary nodes a recipient goes to the `fallback = true`
    /// nodes (if any). Default 2.
    #[serde(default)]
    pub fallback_after: Option<Spanned<u64>>,
    /// When no node at all has been reachable for this long, stop the run with exit code 75
    /// (temporary failure) instead of waiting forever. Default "5m".
    #[serde(default)]
    pub all_nodes_down: Option<Spanned<Dur>>,
}

/// `[smtp]`: client settings shared by all nodes.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    /// Name sent in EHLO. Default: the machine's host name.
    #[serde(default)]
    pub helo: Option<Spanned<String>>,
    /// TCP connect plus greeting. Default "10s".
    #[serde(default)]
    pub connect_timeout: Option<Spanned<Dur>>,
    /// Each reply to a command. Default "60s".
    #[serde(default)]
    pub command_timeout: Option<Spanned<Dur>>,
    /// The reply after the end of a message. Default "120s".
    #[serde(default)]
    pub data_timeout: Option<Spanned<Dur>>,
    /// Use PIPELINING (RFC 2920) when the node offers it. Default true.
    #[serde(default)]
    pub pipelining: Option<bool>,
    /// Extra CA certificate (PEM) trusted for TLS to the nodes; the public web PKI roots are
    /// always trusted. Verification cannot be turned off.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
}

/// `[output]`: files blast writes. Defaults sit beside the campaign file, named after it.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Delivery log, one JSON line per final outcome. Default `<campaign>.delivery.jsonl`.
    #[serde(default)]
    pub delivery_log: Option<String>,
    /// Rejected CSV rows with the reason. Default `<campaign>.rejects.csv`.
    #[serde(default)]
    pub rejects: Option<String>,
    /// The journal (SQLite). Default `<campaign>.journal.sqlite`.
    #[serde(default)]
    pub journal: Option<String>,
}

/// `[suppression]`: the list of addresses `blast send` skips (see `crate::suppression`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SuppressionSection {
    /// The SQLite file, shared with `blast sink --db`. Default `<campaign>.suppression.sqlite`.
    #[serde(default)]
    pub path: Option<String>,
    /// Soft bounces (mailbox full, policy, …) of one address before it is suppressed. Default
    /// 3; 0 never suppresses on soft bounces.
    #[serde(default)]
    pub soft_bounce_limit: Option<u32>,
}

/// `[schedule]`: guards for scheduled sends (cron, systemd timers).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// `"HH:MM"`, UTC: `blast send` refuses (exit 75) to start or resume a run after this time
    /// of day, so a missed 02:00 run does not fire at 11:00 when the machine comes back.
    /// `--not-after HH:MM` overrides it.
    #[serde(default)]
    pub not_after: Option<Spanned<String>>,
}

/// `[[node]]`: one relay MTA of the sender pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Name in progress, logs and status. Default `host:port`.
    #[serde(default)]
    pub name: Option<String>,
    /// Host name or IP address. Required unless `embedded = true`.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// TCP port. Default 25 (465 with `tls = "tls"`).
    #[serde(default)]
    pub port: Option<Spanned<u64>>,
    /// Start blast's built-in receiver on 127.0.0.1 and use it as this node: it accepts and
    /// counts, delivers nothing. For demos and dry runs of the whole pipeline.
    #[serde(default)]
    pub embedded: bool,
    /// Relative share of traffic among healthy nodes of the same kind. Default 1.
    #[serde(default)]
    pub weight: Option<Spanned<u64>>,
    /// Concurrent SMTP connections to this node. Default 4.
    #[serde(default)]
    pub max_connections: Option<Spanned<u64>>,
    /// Messages per connection before QUIT and reconnect. Default 1000.
    #[serde(default)]
    pub messages_per_connection: Option<Spanned<u64>>,
    /// Rate limit for this node, e.g. "200/s". Unlimited when absent.
    #[serde(default)]
    pub rate: Option<Spanned<Rate>>,
    /// "none", "starttls" (required, verified) or "tls" (implicit TLS). Default "starttls".
    #[serde(default)]
    pub tls: Option<Spanned<TlsSetting>>,
    /// Name checked against the node's certificate. Default `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// AUTH user name. Needs `password_env`.
    #[serde(default)]
    pub auth_user: Option<Spanned<String>>,
    /// Name of the environment variable holding the AUTH password.
    #[serde(default)]
    pub password_env: Option<Spanned<String>>,
    /// A fallback node: gets only mail the primaries kept deferring (Exim's `fallback_hosts`).
    #[serde(default)]
    pub fallback: bool,
}

/// TLS towards a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsSetting {
    None,
    Starttls,
    Tls,
}

// ---------------------------------------------------------------------------------------------
// Value types written the way people write them.
// ---------------------------------------------------------------------------------------------

/// A rate written as people write it: `"500/s"`, `"20000/h"`, `"10/m"`, `"100000/d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint =
            "write a rate as COUNT/UNIT with UNIT one of s, m, h, d, e.g. \"500/s\" or \"20000/h\"";
        let (count, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid rate {s:?}: {hint}"))?;
        let count: u32 =
            count.trim().replace('_', "").parse().map_err(|_| {
                format!("invalid rate {s:?}: {count:?} is not a whole number; {hint}")
            })?;
        if count == 0 {
            return Err(format!(
                "invalid rate {s:?}: the count must be at least 1 (leave the rate out for no limit)"
            ));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            other => {
                return Err(format!(
                    "invalid rate {s:?}: unknown unit {other:?}; {hint}"
                ));
            }
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(per),
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A UTC time of day, written `"HH:MM"` (24-hour clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl TimeOfDay {
    /// The current UTC time of day.
    pub fn now_utc() -> TimeOfDay {
        TimeOfDay::of_unix(crate::clock::unix_now())
    }

    /// The UTC time of day of a Unix time.
    pub fn of_unix(t: i64) -> TimeOfDay {
        let secs = t.rem_euclid(86_400);
        TimeOfDay {
            hour: (secs / 3600) as u8,
            minute: (secs % 3600 / 60) as u8,
        }
    }
}

impl std::fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid time of day {s:?}: write \"HH:MM\" (24-hour clock, UTC), e.g. \"06:00\""
            )
        };
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 {
            return Err(bad());
        }
        Ok(TimeOfDay { hour, minute })
    }
}

/// A duration written as people write it: `"250ms"`, `"30s"`, `"5m"`, `"4h"`, `"2d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint =
            "write a duration as a number and a unit (ms, s, m, h, d), e.g. \"30s\" or \"4h\"";
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit; {hint}"))?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: {hint}"))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86_400),
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?}; {hint}"
                ));
            }
        };
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// The validated campaign.
// ---------------------------------------------------------------------------------------------

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
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub rate: Option<Rate>,
    pub queue_depth: usize,
    pub render_threads: usize,
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
    pub dkim: Option<std::sync::Arc<crate::dkim::Dkim>>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub smtp: SmtpOptions,
    pub output: Outputs,
    pub schedule: Schedule,
    pub suppression: SuppressionOptions,
    pub nodes: Vec<Node>,
    /// `[dns]`, validated.
    pub dns: crate::dns::DnsConfig,
    /// `Some` with `delivery = "direct"`: no relay pool, straight to the MX hosts.
    pub direct: Option<crate::direct::DirectConfig>,
}

/// Longest campaign id, so that a VERP local part always fits in 64 octets.
pub const MAX_ID_LEN: usize = 24;

/// Headers blast writes itself; `[headers]` may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "return-path",
    "sender",
    "dkim-signature",
    "feedback-id",
];

impl Campaign {
    /// Reads and validates a campaign file, reporting every problem found.
    pub fn load(path: &Path) -> Result<Campaign, CampaignError> {
        let text = std::fs::read_to_string(path).map_err(|source| CampaignError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Campaign::parse(path, &text)
    }

    /// Validates campaign text as if read from `path` (used for errors and relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Campaign, CampaignError> {
        let ctx = Ctx {
            file: path.to_path_buf(),
            text,
            problems: Vec::new(),
        };
        let file: CampaignFile = match toml::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let mut ctx = ctx;
                let span = e.span().unwrap_or(0..0);
                ctx.error(span, toml_message(&e));
                return Err(CampaignError::Invalid(ctx.problems));
            }
        };
        let mut ctx = ctx;
        let campaign = validate(&mut ctx, file);
        if ctx.problems.is_empty() {
            Ok(campaign.expect("validation without problems yields a campaign"))
        } else {
            Err(CampaignError::Invalid(ctx.problems))
        }
    }

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

fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// toml's message is multi-line with a snippet; keep the first meaningful line.
fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    let msg = msg.lines().next().unwrap_or(msg).to_string();
    if msg.starts_with("unknown field") {
        format!("{msg} (check the spelling; see campaigns/example.toml for every field)")
    } else {
        msg
    }
}

/// Collects problems with their locations.
struct Ctx<'a> {
    file: PathBuf,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        });
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn path(&self, p: &str) -> PathBuf {
        base_dir(&self.file).join(p)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn validate(ctx: &mut Ctx<'_>, f: CampaignFile) -> Option<Campaign> {
    let id = f.id.get_ref().clone();
    if !valid_id(&id) {
        ctx.error(
            f.id.span(),
            format!(
                "invalid campaign id {id:?}: use 1-{MAX_ID_LEN} lowercase letters, digits and '-', starting with a letter or digit (e.g. \"spring-sale-2026\")"
            ),
        );
    }
    let name = f.name.clone().unwrap_or_else(|| id.clone());

    let from = mailbox(ctx, f.from.name.as_ref(), &f.from.address, "from.address");
    let reply_to = f
        .from
        .reply_to
        .as_ref()
        .map(|r| mailbox(ctx, None, r, "from.reply_to"));

    let mut headers = Vec::new();
    for (hname, value) in &f.headers {
        if !valid_header_name(hname) {
            ctx.error(
                value.span(),
                format!(
                    "invalid header name {hname:?}: use printable ASCII letters, digits and '-' (e.g. \"X-Campaign\")"
                ),
            );
        } else if RESERVED_HEADERS.contains(&hname.to_ascii_lowercase().as_str()) {
            ctx.error(
                value.span(),
                format!(
                    "header {hname:?} is written by blast itself and cannot be set in [headers]; remove it"
                ),
            );
        }
        if value.get_ref().chars().any(|c| c.is_control()) {
            ctx.error(
                value.span(),
                format!("header {hname:?} contains a control character (CR, LF, ...); remove it"),
            );
        }
        headers.push((hname.clone(), value.get_ref().clone()));
    }

    let envelope = envelope(ctx, &f.envelope, &id);
    let templates = templates(ctx, &f.message);
    let recipients = recipients(ctx, &f.recipients);
    let unsubscribe = f
        .unsubscribe
        .as_ref()
        .map(|u| unsubscribe(ctx, u.get_ref(), u.span()));
    let dkim = f.dkim.as_ref().and_then(|d| {
        let from_domain = f
            .from
            .address
            .get_ref()
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .trim()
            .to_ascii_lowercase();
        let base = base_dir(&ctx.file).to_path_buf();
        match crate::dkim::validate(d.get_ref(), &base, &id, &from_domain) {
            Ok(d) => Some(std::sync::Arc::new(d)),
            Err(problems) => {
                for (span, message) in problems {
                    ctx.error(span, message);
                }
                None
            }
        }
    });

    let limits = Limits {
        rate: f.limits.rate.as_ref().map(|r| *r.get_ref()),
        queue_depth: bounded(
            ctx,
            f.limits.queue_depth.as_ref(),
            1000,
            1,
            1_000_000,
            "queue_depth",
        ) as usize,
        render_threads: bounded(
            ctx,
            f.limits.render_threads.as_ref(),
            default_render_threads() as u64,
            1,
            64,
            "render_threads",
        ) as usize,
    };

    let retry = RetryPolicy {
        attempts: bounded(ctx, f.retry.attempts.as_ref(), 5, 1, 100, "retry.attempts") as u32,
        backoff: dur_or(f.retry.backoff.as_ref(), Duration::from_secs(30)),
        max_backoff: dur_or(f.retry.max_backoff.as_ref(), Duration::from_secs(600)),
        max_age: dur_or(f.retry.max_age.as_ref(), Duration::from_secs(4 * 3600)),
        fallback_after: bounded(
            ctx,
            f.retry.fallback_after.as_ref(),
            2,
            1,
            100,
            "retry.fallback_after",
        ) as u32,
        all_nodes_down: dur_or(f.retry.all_nodes_down.as_ref(), Duration::from_secs(300)),
    };
    if let (Some(b), Some(m)) = (&f.retry.backoff, &f.retry.max_backoff)
        && b.get_ref().0 > m.get_ref().0
    {
        ctx.error(
            m.span(),
            "retry.max_backoff is shorter than retry.backoff; raise max_backoff or lower backoff",
        );
    }

    let smtp = SmtpOptions {
        helo: f
            .smtp
            .helo
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_else(system_hostname),
        connect_timeout: dur_or(f.smtp.connect_timeout.as_ref(), Duration::from_secs(10)),
        command_timeout: dur_or(f.smtp.command_timeout.as_ref(), Duration::from_secs(60)),
        data_timeout: dur_or(f.smtp.data_timeout.as_ref(), Duration::from_secs(120)),
        pipelining: f.smtp.pipelining.unwrap_or(true),
        ca_file: f.smtp.ca_file.as_ref().map(|c| {
            let p = ctx.path(c.get_ref());
            if !p.is_file() {
                ctx.error(c.span(), format!("CA file {} does not exist", p.display()));
            }
            p
        }),
    };
    if let Some(h) = &f.smtp.helo
        && !valid_domain(h.get_ref())
    {
        ctx.error(
            h.span(),
            format!(
                "invalid EHLO name {:?}: use a fully qualified host name",
                h.get_ref()
            ),
        );
    }
    for t in [
        &f.smtp.connect_timeout,
        &f.smtp.command_timeout,
        &f.smtp.data_timeout,
    ]
    .into_iter()
    .flatten()
    {
        if t.get_ref().0.is_zero() {
            ctx.error(
                t.span(),
                "a timeout of 0 would fail every command; use e.g. \"30s\"",
            );
        }
    }

    let stem = ctx
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.clone());
    let out = |p: &Option<String>, suffix: &str| match p {
        Some(p) => base_dir(&ctx.file).join(p),
        None => base_dir(&ctx.file).join(format!("{stem}.{suffix}")),
    };
    let output = Outputs {
        delivery_log: out(&f.output.delivery_log, "delivery.jsonl"),
        rejects: out(&f.output.rejects, "rejects.csv"),
        journal: out(&f.output.journal, "journal.sqlite"),
    };
    let suppression = SuppressionOptions {
        path: out(&f.suppression.path, "suppression.sqlite"),
        soft_bounce_limit: f.suppression.soft_bounce_limit.unwrap_or(3),
    };

    let schedule = Schedule {
        not_after: f.schedule.not_after.as_ref().and_then(|t| {
            t.get_ref()
                .parse::<TimeOfDay>()
                .map_err(|e| ctx.error(t.span(), e))
                .ok()
        }),
    };

    let nodes = nodes(ctx, &f.nodes);
    let dns = crate::dns::validate(&f.dns).unwrap_or_else(|problems| {
        for (span, message) in problems {
            ctx.error(span, message);
        }
        crate::dns::DnsConfig::default()
    });
    let direct_mode = match &f.delivery {
        None => false,
        Some(d) if d.get_ref() == "relay" => false,
        Some(d) if d.get_ref() == "direct" => true,
        Some(d) => {
            ctx.error(
                d.span(),
                format!(
                    "delivery {:?}: use \"relay\" (the [[node]] pool) or \"direct\" (the recipients' MX hosts)",
                    d.get_ref()
                ),
            );
            false
        }
    };
    let direct = if direct_mode {
        let section = f.direct.as_ref().map(|d| d.get_ref());
        match crate::direct::validate(section.unwrap_or(&Default::default())) {
            Ok(c) => Some(c),
            Err(problems) => {
                for (span, message) in problems {
                    ctx.error(span, message);
                }
                None
            }
        }
    } else {
        if let Some(d) = &f.direct {
            ctx.error(
                d.span(),
                "[direct] is only used with delivery = \"direct\"; set it or remove the section",
            );
        }
        None
    };
    if direct_mode && let Some(n) = f.nodes.first() {
        ctx.error(
            n.span(),
            "delivery = \"direct\" sends to the recipients' MX hosts: remove the [[node]] pool (or use delivery = \"relay\")",
        );
    }
    if f.nodes.is_empty() && !direct_mode {
        ctx.error(
            0..0,
            "no sender nodes: add at least one [[node]] with host and port (or embedded = true for a local demo)",
        );
    }

    Some(Campaign {
        path: ctx.file.clone(),
        id,
        name,
        from: from?,
        reply_to: reply_to.flatten(),
        headers,
        envelope: envelope?,
        templates: templates?,
        recipients: recipients?,
        unsubscribe: unsubscribe.flatten(),
        dkim,
        limits,
        retry,
        smtp,
        output,
        schedule,
        suppression,
        nodes,
        dns,
        direct,
    })
}

fn default_render_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.saturating_sub(1).max(1)
}

fn system_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| valid_domain(s))
        .unwrap_or_else(|| "localhost".to_string())
}

fn dur_or(v: Option<&Spanned<Dur>>, default: Duration) -> Duration {
    v.map_or(default, |d| d.get_ref().0)
}

fn bounded(
    ctx: &mut Ctx<'_>,
    v: Option<&Spanned<u64>>,
    default: u64,
    min: u64,
    max: u64,
    what: &str,
) -> u64 {
    check_range(v, default, min, max, what).unwrap_or_else(|(span, message)| {
        ctx.error(span, message);
        default
    })
}

/// A number setting within `min..=max` (`default` when absent), or the problem: its span and a
/// message naming the key `what`. Shared by every section that validates numbers.
pub fn check_range(
    v: Option<&Spanned<u64>>,
    default: u64,
    min: u64,
    max: u64,
    what: &str,
) -> Result<u64, (Range<usize>, String)> {
    match v {
        None => Ok(default),
        Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err((
            v.span(),
            format!(
                "{what} = {} is out of range: use {min} to {max}",
                v.get_ref()
            ),
        )),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A host name: LDH labels, at least one dot (or `localhost`), each label 1–63 octets.
pub fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    })
}

/// A simple addr-spec check for addresses written by the operator (From, Reply-To): dot-atom
/// local part and a domain. Recipient addresses get the full check in `source`.
fn valid_operator_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && local.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
        })
        && valid_domain(domain)
        && domain.contains('.')
}

fn mailbox(
    ctx: &mut Ctx<'_>,
    name: Option<&Spanned<String>>,
    address: &Spanned<String>,
    what: &str,
) -> Option<Mailbox> {
    let mut ok = true;
    let a = address.get_ref().trim();
    if !valid_operator_address(a) {
        ctx.error(
            address.span(),
            format!("{what}: {a:?} is not a valid address; write it as local@domain.tld"),
        );
        ok = false;
    }
    if let Some(n) = name
        && n.get_ref().chars().any(|c| c.is_control())
    {
        ctx.error(
            n.span(),
            "the display name contains a control character; remove it",
        );
        ok = false;
    }
    ok.then(|| Mailbox {
        name: name.map(|n| n.get_ref().clone()).filter(|n| !n.is_empty()),
        address: lowercase_domain(a),
    })
}

fn lowercase_domain(a: &str) -> String {
    match a.rsplit_once('@') {
        Some((l, d)) => format!("{l}@{}", d.to_ascii_lowercase()),
        None => a.to_string(),
    }
}

fn envelope(ctx: &mut Ctx<'_>, e: &EnvelopeSection, id: &str) -> Option<Envelope> {
    let verp = e.verp.get_ref();
    let span = e.verp.span();
    let Some((local, domain)) = verp.rsplit_once('@') else {
        ctx.error(
            span,
            format!("envelope.verp {verp:?} has no '@domain'; write e.g. \"b-{{token}}@bounce.example.com\""),
        );
        return None;
    };
    if local.matches("{token}").count() != 1 {
        ctx.error(
            span,
            format!("envelope.verp {verp:?} must contain {{token}} exactly once in the local part, e.g. \"b-{{token}}@bounce.example.com\""),
        );
        return None;
    }
    let (prefix, suffix) = local.split_once("{token}").expect("counted above");
    let affix_ok = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+=.".contains(&b))
    };
    if !affix_ok(prefix) || !affix_ok(suffix) {
        ctx.error(
            span,
            "envelope.verp: around {token} use only letters, digits and -_+=.",
        );
        return None;
    }
    if !valid_domain(domain) || !domain.contains('.') {
        ctx.error(
            span,
            format!("envelope.verp: {domain:?} is not a valid bounce domain"),
        );
        return None;
    }
    let longest = prefix.len() + suffix.len() + crate::verp::max_token_len(id);
    if longest > 64 {
        ctx.error(
            span,
            format!(
                "envelope.verp: the local part can reach {longest} octets with campaign id {id:?}, over the 64-octet limit; shorten the text around {{token}} or the id"
            ),
        );
        return None;
    }
    let secret_env = e.secret_env.get_ref();
    if !valid_env_name(secret_env) {
        ctx.error(
            e.secret_env.span(),
            format!("envelope.secret_env {secret_env:?} is not an environment variable name; use e.g. \"BLAST_SECRET\""),
        );
    }
    Some(Envelope {
        verp_prefix: prefix.to_string(),
        verp_suffix: suffix.to_string(),
        verp_domain: domain.to_ascii_lowercase(),
        secret_env: secret_env.clone(),
    })
}

fn valid_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
}

/// An inline template string: its text starts on the line of the TOML value (for `"""`
/// strings the text starts on the next line; the engine's line numbers are added to this).
fn inline(ctx: &Ctx<'_>, name: &str, s: &Spanned<String>) -> TemplateSource {
    let raw = &ctx.text[s.span()];
    let multiline = raw.starts_with("\"\"\"\n")
        || raw.starts_with("'''\n")
        || raw.starts_with("\"\"\"\r\n")
        || raw.starts_with("'''\r\n");
    TemplateSource {
        name: name.to_string(),
        text: s.get_ref().clone(),
        file: ctx.file.clone(),
        first_line: ctx.line_of(&s.span()) + usize::from(multiline),
    }
}

fn template_file(ctx: &mut Ctx<'_>, name: &str, s: &Spanned<String>) -> Option<TemplateSource> {
    let path = ctx.path(s.get_ref());
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(TemplateSource {
            name: name.to_string(),
            text,
            file: path,
            first_line: 1,
        }),
        Err(e) => {
            ctx.error(
                s.span(),
                format!("cannot read template {}: {e}", path.display()),
            );
            None
        }
    }
}

fn body(
    ctx: &mut Ctx<'_>,
    inline_v: &Option<Spanned<String>>,
    file_v: &Option<Spanned<String>>,
    name: &str,
    key: &str,
) -> Result<Option<TemplateSource>, ()> {
    match (inline_v, file_v) {
        (Some(i), Some(_)) => {
            ctx.error(
                i.span(),
                format!("message.{key} and message.{key}_file are both set; keep one"),
            );
            Err(())
        }
        (Some(i), None) => Ok(Some(inline(ctx, name, i))),
        (None, Some(f)) => template_file(ctx, name, f).map(Some).ok_or(()),
        (None, None) => Ok(None),
    }
}

fn templates(ctx: &mut Ctx<'_>, m: &MessageSection) -> Option<Templates> {
    let subject = inline(ctx, "subject.txt", &m.subject);
    let text = body(ctx, &m.text, &m.text_file, "body.txt", "text");
    let html = body(ctx, &m.html, &m.html_file, "body.html", "html");
    let (text, html) = (text.ok()?, html.ok()?);
    if text.is_none() && html.is_none() {
        ctx.error(
            m.subject.span(),
            "the message has no body: set message.text / message.text_file and/or message.html / message.html_file",
        );
        return None;
    }
    Some(Templates {
        subject,
        to_name: m.to_name.as_ref().map(|t| inline(ctx, "to_name.txt", t)),
        text,
        html,
    })
}

fn recipients(ctx: &mut Ctx<'_>, r: &RecipientsSection) -> Option<RecipientsOptions> {
    let path = ctx.path(r.path.get_ref());
    let mut ok = true;
    if r.generate.is_none() && !path.is_file() {
        ctx.error(
            r.path.span(),
            format!(
                "recipient list {} does not exist (paths are relative to the campaign file)",
                path.display()
            ),
        );
        ok = false;
    }
    let delimiter = match &r.delimiter {
        None => b',',
        Some(d) => {
            let v = d.get_ref();
            let v = if v == "\\t" { "\t" } else { v.as_str() };
            if v.len() == 1 && v.is_ascii() && v != "\"" && v != "\n" && v != "\r" {
                v.as_bytes()[0]
            } else {
                ctx.error(
                    d.span(),
                    format!(
                        "recipients.delimiter {v:?} must be one ASCII character other than a quote or line break, e.g. \",\" or \";\" or \"\\t\""
                    ),
                );
                ok = false;
                b','
            }
        }
    };
    if !r.header && r.columns.is_none() {
        ctx.error(
            r.address_column.span().start.max(r.path.span().start)..0,
            "recipients.header = false needs recipients.columns = [\"email\", ...] to name the columns",
        );
        ok = false;
    }
    let columns = r.columns.as_ref().map(|c| c.get_ref().clone());
    if let (Some(cols), Some(spanned)) = (&columns, &r.columns)
        && !cols.iter().any(|c| c == r.address_column.get_ref())
    {
        ctx.error(
            spanned.span(),
            format!(
                "recipients.columns does not contain the address column {:?}",
                r.address_column.get_ref()
            ),
        );
        ok = false;
    }
    ok.then(|| RecipientsOptions {
        path,
        delimiter,
        header: r.header,
        columns,
        address_column: r.address_column.get_ref().clone(),
        dedupe: r.dedupe,
        generate: r.generate,
    })
}

/// `section` is where the `[unsubscribe]` table is, for problems of the section as a whole.
fn unsubscribe(
    ctx: &mut Ctx<'_>,
    u: &UnsubscribeSection,
    section: Range<usize>,
) -> Option<Unsubscribe> {
    let mut ok = true;
    if u.mailto.is_none() && u.url.is_none() {
        ctx.error(
            section,
            "[unsubscribe] needs a mailto and/or a url template (or remove the section)",
        );
        return None;
    }
    if let Some(url) = &u.url
        && !url.get_ref().starts_with("https://")
    {
        ctx.error(
            url.span(),
            "unsubscribe.url must start with https:// (mailbox providers ignore plain http for one-click)",
        );
        ok = false;
    }
    let one_click = match &u.one_click {
        Some(v) if *v.get_ref() && u.url.is_none() => {
            ctx.error(
                v.span(),
                "unsubscribe.one_click = true needs an https unsubscribe.url (RFC 8058)",
            );
            ok = false;
            false
        }
        Some(v) => *v.get_ref(),
        None => u.url.is_some(),
    };
    ok.then(|| Unsubscribe {
        mailto: u
            .mailto
            .as_ref()
            .map(|m| inline(ctx, "unsubscribe_mailto.txt", m)),
        url: u
            .url
            .as_ref()
            .map(|m| inline(ctx, "unsubscribe_url.txt", m)),
        one_click,
    })
}

fn nodes(ctx: &mut Ctx<'_>, nodes: &[Spanned<NodeSection>]) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for n in nodes {
        let span = n.span();
        let n = n.get_ref();
        let tls = n
            .tls
            .as_ref()
            .map_or(TlsSetting::Starttls, |t| *t.get_ref());
        let address = match (&n.host, n.embedded) {
            (Some(h), true) => {
                ctx.error(
                    h.span(),
                    "an embedded node has no host: remove host/port or set embedded = false",
                );
                continue;
            }
            (None, true) => {
                // The embedded receiver picks its own port on 127.0.0.1.
                if let Some(p) = &n.port {
                    ctx.error(
                        p.span(),
                        "an embedded node has no port: remove port or set embedded = false",
                    );
                }
                NodeAddress::Embedded
            }
            (None, false) => {
                ctx.error(
                    span,
                    "[[node]] needs host = \"relay.example.com\" (or embedded = true)",
                );
                continue;
            }
            (Some(h), false) => {
                let host = h.get_ref().trim().to_string();
                if host.parse::<std::net::IpAddr>().is_err() && !valid_domain(&host) {
                    ctx.error(
                        h.span(),
                        format!("node host {host:?} is neither an IP address nor a host name"),
                    );
                }
                let default_port = if tls == TlsSetting::Tls { 465 } else { 25 };
                let port = match &n.port {
                    None => default_port,
                    Some(p) if (1..=65535).contains(p.get_ref()) => *p.get_ref() as u16,
                    Some(p) => {
                        ctx.error(p.span(), format!("port {} is not 1-65535", p.get_ref()));
                        default_port
                    }
                };
                NodeAddress::Remote { host, port }
            }
        };
        if n.embedded
            && tls != TlsSetting::None
            && let Some(t) = &n.tls
        {
            ctx.error(
                t.span(),
                "the embedded receiver speaks plain SMTP: use tls = \"none\" or leave tls out",
            );
        }
        let tls = if n.embedded { TlsSetting::None } else { tls };
        let name = n.name.clone().unwrap_or_else(|| match &address {
            NodeAddress::Remote { host, port } => format!("{host}:{port}"),
            NodeAddress::Embedded => "embedded".to_string(),
        });
        if out.iter().any(|o| o.name == name) {
            ctx.error(
                span.clone(),
                format!("two nodes are named {name:?}; give each [[node]] a distinct name"),
            );
        }
        let auth = match (&n.auth_user, &n.password_env) {
            (Some(u), Some(p)) => {
                if !valid_env_name(p.get_ref()) {
                    ctx.error(
                        p.span(),
                        format!("password_env {:?} is not an environment variable name (the password itself never goes in the file)", p.get_ref()),
                    );
                }
                if tls == TlsSetting::None {
                    ctx.error(
                        u.span(),
                        "AUTH over plain TCP would send the password in clear: set tls = \"starttls\" or \"tls\"",
                    );
                }
                Some(NodeAuth {
                    user: u.get_ref().clone(),
                    password_env: p.get_ref().clone(),
                })
            }
            (Some(u), None) => {
                ctx.error(
                    u.span(),
                    "auth_user needs password_env = \"NAME_OF_ENV_VAR\" holding the password",
                );
                None
            }
            (None, Some(p)) => {
                ctx.error(p.span(), "password_env needs auth_user");
                None
            }
            (None, None) => None,
        };
        let tls_server_name = n.tls_server_name.clone().unwrap_or_else(|| match &address {
            NodeAddress::Remote { host, .. } => host.clone(),
            NodeAddress::Embedded => "localhost".to_string(),
        });
        out.push(Node {
            name,
            address,
            weight: bounded(ctx, n.weight.as_ref(), 1, 1, 1000, "weight") as u32,
            max_connections: bounded(
                ctx,
                n.max_connections.as_ref(),
                4,
                1,
                1000,
                "max_connections",
            ) as u32,
            messages_per_connection: bounded(
                ctx,
                n.messages_per_connection.as_ref(),
                1000,
                1,
                10_000_000,
                "messages_per_connection",
            ) as u32,
            rate: n.rate.as_ref().map(|r| *r.get_ref()),
            tls,
            tls_server_name,
            auth,
            fallback: n.fallback,
        });
    }
    if !out.is_empty() && out.iter().all(|n| n.fallback) {
        // At the first node: that is where the pool is defined.
        ctx.error(
            nodes.first().map_or(0..0, |n| n.span()),
            "every node is a fallback node: at least one [[node]] must have fallback = false",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            "500/s".parse::<Rate>().unwrap(),
            Rate {
                count: 500,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(
            "20000/h".parse::<Rate>().unwrap().per,
            Duration::from_secs(3600)
        );
        assert_eq!("20_000/h".parse::<Rate>().unwrap().count, 20_000);
        assert!("500".parse::<Rate>().is_err());
        assert!("0/s".parse::<Rate>().is_err());
        assert!(
            "5/fortnight"
                .parse::<Rate>()
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("4h".parse::<Dur>().unwrap().0, Duration::from_secs(14400));
        assert!("30".parse::<Dur>().unwrap_err().contains("missing unit"));
        assert!("3 weeks".parse::<Dur>().is_err());
    }

    #[test]
    fn line_and_column() {
        let t = "a\nbc\néd";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 2));
        assert_eq!(line_col(t, t.len()), (3, 3));
    }

    #[test]
    fn ids() {
        assert!(valid_id("spring-2026"));
        assert!(!valid_id("Spring"));
        assert!(!valid_id("-x"));
        assert!(!valid_id(&"a".repeat(25)));
    }
}
