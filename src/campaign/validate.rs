//! The validator: from the file as written ([`CampaignFile`]) to a [`Campaign`]. It checks
//! every field and the relations between them and collects *all* problems, each with the file,
//! line and column it comes from and a hint that says what would fix it.
//!
//! The parts of a message are checked in `message`, the relay pool in `nodes`, and the
//! sections of other modules' settings in `dkim`, `dns` and `direct` (which report their
//! problems as spans and messages, turned into [`Problem`]s here).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::address::{domain_of, valid_domain};
use crate::dkim::Dkim;

use super::direct::{self, DirectConfig};
use super::dkim::{self, DkimSection};
use super::dns::{self, DnsConfig, DnsSection};
use super::file::{
    CampaignFile, LimitsSection, OutputSection, RetrySection, ScheduleSection, SmtpSection,
    SuppressionSection,
};
use super::message::{envelope, headers, mailbox, recipients, templates, unsubscribe};
use super::model::{
    Campaign, Limits, Outputs, RetryPolicy, Schedule, SmtpOptions, SuppressionOptions, base_dir,
};
use super::nodes::nodes;
use super::values::{Dur, Size, TimeOfDay, check_range, check_size};
use super::{CampaignError, DEFAULT_MAX_PART_SIZE, MAX_ID_LEN, Problem, SectionProblems};

impl Campaign {
    /// Reads and validates a campaign file, reporting every problem found.
    /// The file must be a regular file of at most [`MAX_INPUT_FILE`] bytes.
    ///
    /// [`MAX_INPUT_FILE`]: crate::private::MAX_INPUT_FILE
    pub fn load(path: &Path) -> Result<Campaign, CampaignError> {
        use crate::private::{MAX_INPUT_FILE, ReadProblem, read_regular};
        let read_error = |cause| CampaignError::Read {
            path: path.to_path_buf(),
            cause,
        };
        let bytes = read_regular(path, MAX_INPUT_FILE).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            read_error(ReadProblem::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.utf8_error(),
            )))
        })?;
        Campaign::parse(path, &text)
    }

    /// Validates campaign text as if read from `path` (used for errors and relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Campaign, CampaignError> {
        let mut ctx = Ctx {
            file: path.to_path_buf(),
            text,
            problems: Vec::new(),
        };
        let (file, problems) = super::file::read(text);
        ctx.report(problems);
        let Some(file) = file else {
            ctx.problems.sort_by_key(|p| (p.line, p.column));
            return Err(CampaignError::Invalid(ctx.problems));
        };
        let campaign = validate(&mut ctx, file);
        // In file order (the reader finds them in key order, the validator section by section).
        ctx.problems.sort_by_key(|p| (p.line, p.column));
        if ctx.problems.is_empty() {
            Ok(campaign.expect("validation without problems yields a campaign"))
        } else {
            Err(CampaignError::Invalid(ctx.problems))
        }
    }
}

/// Collects problems with their locations.
pub(super) struct Ctx<'a> {
    /// The campaign file.
    pub(super) file: PathBuf,
    /// Its text, which spans point into.
    pub(super) text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Every problem a section's validation found, in order.
    fn report(&mut self, problems: SectionProblems) {
        for (span, message) in problems {
            self.error(span, message);
        }
    }

    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    /// A path written in the file, relative to the campaign file's directory.
    pub(super) fn path(&self, p: &str) -> PathBuf {
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

/// The whole file, section by section (the order problems are reported in).
fn validate(ctx: &mut Ctx<'_>, f: CampaignFile) -> Option<Campaign> {
    let id = campaign_id(ctx, &f.id);
    let name = f.name.clone().unwrap_or_else(|| id.clone());
    let from = mailbox(ctx, f.from.name.as_ref(), &f.from.address, "from.address");
    let reply_to = f
        .from
        .reply_to
        .as_ref()
        .map(|r| mailbox(ctx, None, r, "from.reply_to"));
    let headers = headers(ctx, &f.headers);
    let envelope = envelope(ctx, &f.envelope, &id);
    let templates = templates(ctx, &f.message);
    let recipients = recipients(ctx, &f.recipients);
    let unsubscribe = f
        .unsubscribe
        .as_ref()
        .map(|u| unsubscribe(ctx, u.get_ref(), u.span()));
    let dkim = f
        .dkim
        .as_ref()
        .and_then(|d| signing(ctx, d.get_ref(), f.from.address.get_ref(), &id));
    let limits = limits(ctx, &f.limits);
    let retry = retry(ctx, &f.retry);
    let smtp = smtp(ctx, &f.smtp);
    let (output, suppression) = outputs(ctx, &f.output, &f.suppression, &id);
    let schedule = schedule(ctx, &f.schedule);
    let nodes = nodes(ctx, &f.nodes);
    let dns = dns_config(ctx, &f.dns);
    let direct = delivery(ctx, &f);
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

fn campaign_id(ctx: &mut Ctx<'_>, id: &Spanned<String>) -> String {
    let value = id.get_ref().clone();
    if !valid_id(&value) {
        ctx.error(
            id.span(),
            format!(
                "invalid campaign id {value:?}: use 1-{MAX_ID_LEN} lowercase letters, digits and '-', starting with a letter or digit (e.g. \"spring-sale-2026\")"
            ),
        );
    }
    value
}

/// `[dkim]` with its keys loaded; `None` when it has problems.
fn signing(ctx: &mut Ctx<'_>, d: &DkimSection, from_address: &str, id: &str) -> Option<Arc<Dkim>> {
    let from_domain = domain_of(from_address).trim().to_ascii_lowercase();
    let base = base_dir(&ctx.file).to_path_buf();
    match dkim::validate(d, &base, id, &from_domain) {
        Ok(d) => Some(Arc::new(d)),
        Err(problems) => {
            ctx.report(problems);
            None
        }
    }
}

fn limits(ctx: &mut Ctx<'_>, l: &LimitsSection) -> Limits {
    Limits {
        rate: l.rate.as_ref().map(|r| *r.get_ref()),
        queue_depth: bounded(
            ctx,
            l.queue_depth.as_ref(),
            1000,
            1,
            1_000_000,
            "queue_depth",
        ) as usize,
        render_threads: bounded(
            ctx,
            l.render_threads.as_ref(),
            default_render_threads() as u64,
            1,
            64,
            "render_threads",
        ) as usize,
        max_part_size: sized(
            ctx,
            l.max_part_size.as_ref(),
            DEFAULT_MAX_PART_SIZE,
            1 << 10,
            64 << 20,
            "limits.max_part_size",
        ),
    }
}

fn retry(ctx: &mut Ctx<'_>, r: &RetrySection) -> RetryPolicy {
    let policy = RetryPolicy {
        attempts: bounded(ctx, r.attempts.as_ref(), 5, 1, 100, "retry.attempts") as u32,
        backoff: dur_or(r.backoff.as_ref(), Duration::from_secs(30)),
        max_backoff: dur_or(r.max_backoff.as_ref(), Duration::from_secs(600)),
        max_age: dur_or(r.max_age.as_ref(), Duration::from_secs(4 * 3600)),
        fallback_after: bounded(
            ctx,
            r.fallback_after.as_ref(),
            2,
            1,
            100,
            "retry.fallback_after",
        ) as u32,
        all_nodes_down: dur_or(r.all_nodes_down.as_ref(), Duration::from_secs(300)),
    };
    if let (Some(b), Some(m)) = (&r.backoff, &r.max_backoff)
        && b.get_ref().0 > m.get_ref().0
    {
        ctx.error(
            m.span(),
            "retry.max_backoff is shorter than retry.backoff; raise max_backoff or lower backoff",
        );
    }
    policy
}

fn smtp(ctx: &mut Ctx<'_>, s: &SmtpSection) -> SmtpOptions {
    let options = SmtpOptions {
        helo: s
            .helo
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_else(system_hostname),
        connect_timeout: dur_or(s.connect_timeout.as_ref(), Duration::from_secs(10)),
        command_timeout: dur_or(s.command_timeout.as_ref(), Duration::from_secs(60)),
        data_timeout: dur_or(s.data_timeout.as_ref(), Duration::from_secs(120)),
        pipelining: s.pipelining.unwrap_or(true),
        ca_file: s.ca_file.as_ref().map(|c| {
            let p = ctx.path(c.get_ref());
            let problem = match std::fs::metadata(&p) {
                Ok(meta) => crate::private::not_regular(&meta),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some("does not exist".to_string())
                }
                Err(e) => Some(format!("cannot be read: {e}")),
            };
            if let Some(problem) = problem {
                ctx.error(c.span(), format!("CA file {} {problem}", p.display()));
            }
            p
        }),
    };
    if let Some(h) = &s.helo
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
    for t in [&s.connect_timeout, &s.command_timeout, &s.data_timeout]
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
    options
}

/// The files blast writes and the suppression list: beside the campaign file and named after
/// it unless given.
fn outputs(
    ctx: &Ctx<'_>,
    o: &OutputSection,
    s: &SuppressionSection,
    id: &str,
) -> (Outputs, SuppressionOptions) {
    let stem = ctx
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.to_string());
    let out = |p: &Option<String>, suffix: &str| match p {
        Some(p) => base_dir(&ctx.file).join(p),
        None => base_dir(&ctx.file).join(format!("{stem}.{suffix}")),
    };
    let output = Outputs {
        delivery_log: out(&o.delivery_log, "delivery.jsonl"),
        rejects: out(&o.rejects, "rejects.csv"),
        journal: out(&o.journal, "journal.sqlite"),
    };
    let suppression = SuppressionOptions {
        path: out(&s.path, "suppression.sqlite"),
        soft_bounce_limit: s.soft_bounce_limit.unwrap_or(3),
    };
    (output, suppression)
}

fn schedule(ctx: &mut Ctx<'_>, s: &ScheduleSection) -> Schedule {
    Schedule {
        not_after: s.not_after.as_ref().and_then(|t| {
            t.get_ref()
                .parse::<TimeOfDay>()
                .map_err(|e| ctx.error(t.span(), e))
                .ok()
        }),
    }
}

fn dns_config(ctx: &mut Ctx<'_>, s: &DnsSection) -> DnsConfig {
    dns::validate(s).unwrap_or_else(|problems| {
        ctx.report(problems);
        DnsConfig::default()
    })
}

/// `delivery` and `[direct]`: `Some` for direct delivery. A relay pool is required exactly when
/// delivery is not direct.
fn delivery(ctx: &mut Ctx<'_>, f: &CampaignFile) -> Option<DirectConfig> {
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
        match direct::validate(section.unwrap_or(&Default::default())) {
            Ok(c) => Some(c),
            Err(problems) => {
                ctx.report(problems);
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
    direct
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

/// A number within `min..=max` (`default` when absent); out of range is a problem (and the
/// default).
pub(super) fn bounded(
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

/// A size within `min..=max` bytes (`default` when absent); out of range is a problem (and the
/// default).
pub(super) fn sized(
    ctx: &mut Ctx<'_>,
    v: Option<&Spanned<Size>>,
    default: usize,
    min: usize,
    max: usize,
    what: &str,
) -> usize {
    let size = |n: usize| Size(n as u64);
    check_size(v, size(default), size(min), size(max), what)
        .map(|s| s.0 as usize)
        .unwrap_or_else(|(span, message)| {
            ctx.error(span, message);
            default
        })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

pub(super) fn valid_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

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
