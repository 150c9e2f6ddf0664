//! `campaign.toml` exactly as written: serde types that mirror the file one to one, with the
//! spans of the values problems point at. Unknown keys are rejected, so a typo never silently
//! falls back to a default. The sections of other modules' settings (`[dkim]`, `[dns]`,
//! `[direct]`) are defined beside their validation, in this module's `dkim`, `dns` and
//! `direct` files.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::direct::DirectSection;
use super::dkim::DkimSection;
use super::dns::DnsSection;
use super::values::{Dur, Rate, Size, TlsSetting};

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
    pub dkim: Option<Spanned<DkimSection>>,
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
    pub dns: DnsSection,
    /// Direct-to-MX delivery settings (with `delivery = "direct"`).
    #[serde(default)]
    pub direct: Option<Spanned<DirectSection>>,
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
    /// Longest field, in bytes as written in the file (quotes included), e.g. "64KB" (the
    /// default). A row with a longer field is rejected (`too_large`) without being held in
    /// memory whole; the list goes on.
    #[serde(default)]
    pub max_field_size: Option<Spanned<Size>>,
    /// Longest record (row), in bytes as written in the file, e.g. "1MB" (the default). A longer
    /// row is rejected (`too_large`) the same way.
    #[serde(default)]
    pub max_record_size: Option<Spanned<Size>>,
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
    /// Largest output of one template render (subject, To name, each body, each unsubscribe
    /// target), e.g. "1MB" (the default). A template that writes more fails: at `blast check`,
    /// or at send time as a render error of that row only. Template execution is also bounded
    /// (minijinja fuel), so a runaway loop fails instead of running for ever.
    #[serde(default)]
    pub max_part_size: Option<Spanned<Size>>,
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
    /// The reply after the end of a message. Default "120s". A whole transaction ends within
    /// `command_timeout + data_timeout` (and the recipient's `max_age`).
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

/// `[suppression]`: the list of addresses `blast send` skips (see the `suppression` module).
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

/// Longest list of problems reading the file reports (each found by one more pass).
const MAX_READ_PROBLEMS: usize = 50;

/// Reads the TOML into [`CampaignFile`], finding every unknown key and wrongly typed value, not
/// only the first: serde stops at the first, so each one found is taken out of the parsed
/// document and the rest read again (a file has few). Returns the file read without the bad
/// entries (their defaults in their place, so the values can still be validated) when that is
/// possible, and every problem with the span it points at.
pub(super) fn read(text: &str) -> (Option<CampaignFile>, Vec<(Range<usize>, String)>) {
    use serde::Deserialize as _;
    let (mut root, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let problems = syntax
            .iter()
            .map(|e| (e.span().unwrap_or(0..0), toml_message(e)))
            .collect();
        return (None, problems);
    }
    let mut problems = Vec::new();
    let mut taken_out: Vec<String> = Vec::new();
    while problems.len() < MAX_READ_PROBLEMS {
        let e = match CampaignFile::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(f) => return (Some(f), problems),
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let message = toml_message(&e);
        // A required key taken out for its type is reported once, not as missing too.
        if taken_out
            .iter()
            .any(|k| message.starts_with(&format!("missing field `{k}`")))
        {
            break;
        }
        problems.push((span.clone(), message));
        match take_out(root.get_mut(), &span) {
            Some(key) => taken_out.push(key),
            None => break,
        }
    }
    (None, problems)
}

/// Removes the entry whose key or value is at `span`, anywhere in the document; its key.
fn take_out(table: &mut toml::de::DeTable<'_>, span: &Range<usize>) -> Option<String> {
    let mut hit = None;
    for (key, value) in table.iter_mut() {
        if key.span() == *span || value.span() == *span {
            hit = Some(key.get_ref().to_string());
            break;
        }
        let found = match value.get_mut() {
            toml::de::DeValue::Table(t) => take_out(t, span),
            toml::de::DeValue::Array(items) => {
                items.iter_mut().find_map(|item| match item.get_mut() {
                    toml::de::DeValue::Table(t) => take_out(t, span),
                    _ => None,
                })
            }
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    let key = hit?;
    table.remove(key.as_str());
    Some(key)
}

/// toml's message is multi-line with a snippet; keep the first meaningful line.
pub(super) fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    let msg = msg.lines().next().unwrap_or(msg).to_string();
    if msg.starts_with("unknown field") {
        format!("{msg} (check the spelling; see campaigns/example.toml for every field)")
    } else {
        msg
    }
}
