//! `campaign.toml`: the campaign definition, parsed strictly and validated before anything is
//! sent. This module owns every configuration section of the file, its own and the settings
//! other modules run on (`[dkim]`, `[dns]`, `[direct]`).
//!
//! The way through it: [`Campaign::load`] parses the file into [`CampaignFile`], which mirrors
//! the TOML one to one with the spans of its values (`file`; unknown keys are rejected, so a
//! typo never silently falls back to a default), then validates it (`validate`, with `message`,
//! `nodes` and the section files `dkim`, `dns`, `direct`) into the model the rest of blast
//! reads ([`Campaign`], `model`). Validation collects *all* problems, each with the file, line
//! and column it comes from and a hint that says what would fix it. Relative paths are taken
//! relative to the campaign file, so a campaign directory can be moved as a whole. Values
//! written the way people write them (rates, durations, times of day) are in `values`. The
//! files are private; what they make public is re-exported here (`campaign::Campaign`,
//! `campaign::DnsConfig`, …).
//!
//! # Dependencies
//!
//! campaign sits low in the module graph: the modules that run a campaign (dispatch, render,
//! send, dns, direct, journal, cli, …) read it; it reads none of them. It may use `address`
//! (address and domain syntax), `clock` (the time of day), `dkim` (key loading and the signer
//! it builds, nothing else), `verp` (token lengths) and the `smtp` settings types; nothing
//! above it.

mod direct;
mod dkim;
mod dns;
mod file;
mod message;
mod model;
mod nodes;
mod validate;
mod values;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

pub use direct::{DirectConfig, DirectSection, DirectTls, Rule, RuleSection};
pub use dkim::{DEFAULT_FEEDBACK_ID, DkimSection, DualSection, alignment_warnings};
pub use dns::{DnsConfig, DnsSection, Prevalidate};
pub use file::{
    CampaignFile, EnvelopeSection, FromSection, LimitsSection, MessageSection, NodeSection,
    OutputSection, RecipientsSection, RetrySection, ScheduleSection, SmtpSection,
    SuppressionSection, UnsubscribeSection,
};
pub use model::{
    Campaign, Envelope, Limits, Mailbox, Node, NodeAddress, NodeAuth, Outputs, RecipientsOptions,
    RetryPolicy, Schedule, SmtpOptions, SuppressionOptions, TemplateSource, Templates, Unsubscribe,
};
pub use validate::line_col;
pub use values::{Dur, Rate, Size, TimeOfDay, TlsSetting, check_range, check_size};

/// Longest campaign id, so that a VERP local part always fits in 64 octets (the bound is the
/// token format's).
pub use crate::verp::MAX_CAMPAIGN_ID_LEN as MAX_ID_LEN;

/// Default `[limits] max_part_size`: the largest output of one template render.
pub const DEFAULT_MAX_PART_SIZE: usize = 1 << 20;
/// Default `[recipients] max_field_size`.
pub const DEFAULT_MAX_FIELD_SIZE: usize = 64 << 10;
/// Default `[recipients] max_record_size`.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 1 << 20;
/// Largest template file (`text_file`, `html_file`) blast reads; a larger one is a problem.
pub const MAX_TEMPLATE_FILE: u64 = 1 << 20;

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
    /// Not read: missing, unreadable, a directory or device, larger than
    /// [`MAX_INPUT_FILE`](crate::private::MAX_INPUT_FILE), not UTF-8.
    #[error("campaign file {path} {cause}")]
    Read {
        path: PathBuf,
        cause: crate::private::ReadProblem,
    },
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

impl CampaignError {
    /// Every problem found (a read error is reported as a single problem at 1:1).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            CampaignError::Read { path, cause } => vec![Problem {
                file: path.clone(),
                line: 1,
                column: 1,
                message: match cause {
                    crate::private::ReadProblem::Io(e) => format!("cannot read: {e}"),
                    _ => format!("the campaign file {cause}"),
                },
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

/// What a section's validation found wrong: the span each problem points at and its message
/// (made into [`Problem`]s, with line and column, by the validator).
type SectionProblems = Vec<(Range<usize>, String)>;
