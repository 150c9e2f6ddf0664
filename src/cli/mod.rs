//! Subcommands and exit codes: the edge where library errors get `anyhow` context.
//!
//! Exit codes (also in the README):
//! - 0: done; every recipient accepted (or nothing to do).
//! - 1: done, but some recipients failed permanently (5xx, a template that cannot be rendered
//!   for their row, expired retries).
//! - 2: bad input: campaign file, template, recipient list header, or command line; templates
//!   changed under an unfinished run, or the list already sent under another sharding
//!   (without `--force`).
//! - 70: internal error (a bug or an unexpected I/O failure).
//! - 75: temporary failure: try again later (campaign locked by another sender, no node
//!   reachable, too late in the day for `not_after`).
//! - 130 / 143: interrupted by SIGINT / SIGTERM after a clean stop.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::campaign::{CampaignError, TimeOfDay};
use crate::send::plan::PlanError;

mod bounce;
mod check;
mod prepare;
mod send;
mod status;

pub use prepare::{Purpose, load_key, prepare, source_options};
pub use send::{exit_code, summary};

pub mod exit {
    pub const OK: u8 = 0;
    pub const SOME_FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const INTERNAL: u8 = 70;
    pub const TEMPFAIL: u8 = 75;
    pub const SIGINT: u8 = 130;
    pub const SIGTERM: u8 = 143;
}

/// An error the operator must fix in their input; exits with [`exit::BAD_INPUT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// A condition that may clear by itself; exits with [`exit::TEMPFAIL`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TempFail(pub String);

pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    let plan = err.downcast_ref::<PlanError>();
    if err.downcast_ref::<BadInput>().is_some()
        || err.downcast_ref::<CampaignError>().is_some()
        || plan.is_some_and(PlanError::is_bad_input)
    {
        exit::BAD_INPUT
    } else if err.downcast_ref::<TempFail>().is_some() || plan.is_some_and(PlanError::is_temporary)
    {
        exit::TEMPFAIL
    } else {
        exit::INTERNAL
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "blast",
    version,
    about = "High-volume bulk-mail campaign sender"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a campaign: config, templates, the list header and the first rows. Lists every
    /// problem found and exits 2 if there is any.
    Check {
        campaign: PathBuf,
        /// How many rows to read and render.
        #[arg(long, default_value_t = 1000)]
        rows: u64,
        /// Check the sending domain's DNS (SPF, DMARC, DKIM keys) through the `[dns]` resolver.
        /// On by default when the campaign has a `[dns]` upstream or servers setting.
        #[arg(long)]
        dns: bool,
    },
    /// Print the exact message (RFC 5322 bytes) one recipient would get.
    Preview {
        campaign: PathBuf,
        /// Row number (1 = first data row).
        #[arg(long, default_value_t = 1)]
        row: u64,
        /// Write the message to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Send a campaign: stream the list, render, and pump it into the node pool.
    Send(SendArgs),
    /// Show the journal of a campaign's current or last run: progress, counts per status, node
    /// and domain, top failure reasons. Read-only; works while a send runs.
    Status {
        campaign: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Read the journal of shard K of N (see `blast send --shard`).
        #[arg(long, value_name = "K/N")]
        shard: Option<crate::send::shard::Shard>,
    },
    /// DKIM keys: `blast keys generate --selector S --domain D` writes a private key and prints
    /// the DNS TXT record to publish.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Bounce tools.
    Bounce {
        #[command(subcommand)]
        command: BounceCommand,
    },
    /// Manage the suppression list (addresses never mailed again).
    Suppress {
        /// The suppression list file.
        #[arg(long, global = true, conflicts_with = "campaign")]
        db: Option<PathBuf>,
        /// Use the campaign's `[suppression] path`.
        #[arg(long, global = true)]
        campaign: Option<PathBuf>,
        #[command(subcommand)]
        command: SuppressCommand,
    },
    /// Run the bounce sink: an SMTP server for the bounce domain(s) that classifies bounces
    /// and complaints and records them in the suppression list. Runs until SIGTERM/SIGINT.
    Sink(SinkArgs),
    /// Write a realistic synthetic recipient list (CSV) for tests and benchmarks.
    #[command(hide = true)]
    GenRecipients {
        #[arg(long, default_value_t = 1_200_000)]
        rows: u64,
        #[arg(long, default_value_t = 50_000)]
        domains: u32,
        #[arg(long, default_value_t = 0)]
        broken_per_million: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `blast send` options.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    pub campaign: PathBuf,
    /// Render everything, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Read only the first N rows.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Send the first valid row to this address only (a test send), then stop.
    #[arg(long, value_name = "ADDRESS")]
    pub to: Option<String>,
    /// Print only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// After SIGINT/SIGTERM, how long running transactions may take to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// Start a new run even if the list's latest run is unfinished or finished.
    #[arg(long)]
    pub new_run: bool,
    /// Resume an unfinished run even though its templates changed since it started; start a
    /// run of a list that a journal of another sharding (a different `--shard` N, or sharded
    /// vs not) already holds a run of, which sends its done rows again.
    #[arg(long)]
    pub force: bool,
    /// Refuse (exit 75) to start or resume a run after this UTC time of day ("HH:MM");
    /// overrides `[schedule] not_after`.
    #[arg(long, value_name = "HH:MM", value_parser = parse_time_of_day)]
    pub not_after: Option<TimeOfDay>,
    /// Send only the rows whose address hash falls in shard K of N (1 ≤ K ≤ N ≤ 1024), with
    /// a journal, lock, delivery log and rejects file of its own: N boxes split one list.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::send::shard::Shard>,
    /// Also write the end-of-run summary as one JSON object to FILE (the same numbers as
    /// the printed summary; see the README for the fields).
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Benchmarking only (scripts/bench-journal): send without a journal — no resume, no
    /// idempotence, no duplicate accounting. The campaign lock is still taken.
    #[arg(long, hide = true)]
    pub no_journal: bool,
}

/// `blast sink` options.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Address to listen on, e.g. 0.0.0.0:25.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Bounce domain accepted in RCPT (repeatable). Anything else gets 550 5.7.1.
    #[arg(long = "domain", required = true)]
    pub domains: Vec<String>,
    /// The suppression list file.
    #[arg(long, default_value = "suppression.sqlite")]
    pub db: PathBuf,
    /// Accept and drop everything (pure sinkhole).
    #[arg(long)]
    pub discard: bool,
    /// Keep messages that cannot be acted upon here.
    #[arg(long)]
    pub quarantine: Option<PathBuf>,
    /// Sessions at once; more clients wait in the listen backlog.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Sessions at once from one client address (IPv6: one /64); more are answered 421.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,
    /// Largest message accepted (advertised as SIZE).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_size: usize,
    /// Environment variable with the VERP HMAC secret.
    #[arg(long, default_value = "BLAST_SECRET")]
    pub secret_env: String,
    /// Soft bounces of an address before it is suppressed (0: never).
    #[arg(long, default_value_t = 3)]
    pub soft_bounce_limit: u32,
    /// Append one JSON line per bounce, delay warning and complaint (with a valid VERP
    /// token) to this file: `{"outcome":"bounced"|"soft_bounced"|"delayed"|"complained",
    /// "campaign", "row", "address", "reason", "status", "hard", "suppressed", …}`.
    #[arg(long, value_name = "PATH")]
    pub bounce_log: Option<PathBuf>,
    /// The campaign journal: the bounced address is the one the VERP token's row was sent
    /// to (its outcome there), else the address the report names.
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
    /// Take the journal path from this campaign file (`[output] journal`).
    #[arg(long, value_name = "FILE", conflicts_with = "journal")]
    pub campaign: Option<PathBuf>,
    /// Longest time from a reply to the end of the next command line, however it is trickled.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration)]
    pub command_timeout: std::time::Duration,
    /// Longest time from a command line's first byte to its end.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub line_timeout: std::time::Duration,
    /// While all --max-connections slots are taken: longest time from a reply to the end of
    /// the next command line, and inside DATA for each 1 KB of the message (idle and
    /// trickling sessions make room for waiting clients).
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    pub busy_timeout: std::time::Duration,
    /// Longest session; a message being received at the limit may finish (--data-timeout).
    #[arg(long, default_value = "10m", value_parser = parse_positive_duration)]
    pub session_timeout: std::time::Duration,
    /// Longest time from the 354 to the final dot.
    #[arg(long, default_value = "10m", value_parser = parse_positive_duration)]
    pub data_timeout: std::time::Duration,
    /// 5xx replies in a row a session may collect; one more is answered 421 and closes it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_errors: u32,
}

/// `blast keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new DKIM private key (PEM, mode 0600) as DIR/DOMAIN.SELECTOR.key.pem, the DNS
    /// record as DIR/DOMAIN.SELECTOR.txt, and print the record. Ed25519 keys are generated by
    /// blast; RSA keys by `openssl genpkey`.
    Generate {
        /// The selector (`s=`), e.g. "s2026".
        #[arg(long)]
        selector: String,
        /// The signing domain (`d=`), e.g. "example.com".
        #[arg(long)]
        domain: String,
        /// ed25519 or rsa. Dual-sign (rsa + ed25519) until every receiver verifies Ed25519.
        #[arg(long, default_value = "ed25519", value_parser = crate::dkim::parse_algorithm)]
        algorithm: crate::dkim::Algorithm,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: u32,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum BounceCommand {
    /// Classify bounce messages (files, or `-` for stdin): one JSON line per reported recipient.
    Classify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SuppressCommand {
    /// Suppress addresses by hand.
    Add {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Take addresses off the list.
    Remove {
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Print the list (CSV, like export).
    List,
    /// Add addresses from CSV (`-` for stdin): the export format, or one address per line.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Write the list as CSV (default stdout).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs one subcommand. Application logs go to stderr until the returned code is final: the
/// log writer is flushed before this returns (see [`init_tracing`]).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _logs = match &args.command {
        Command::Sink(_) | Command::Send(_) => Some(init_tracing()),
        _ => None,
    };
    let result = dispatch(args);
    match &result {
        Ok(code) => tracing::debug!("exiting: {code:?}"),
        Err(e) => tracing::debug!("exiting: {e:#}"),
    }
    result
}

fn dispatch(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Bounce {
            command: BounceCommand::Classify { files },
        } => bounce::cmd_classify(&files),
        Command::Suppress {
            db,
            campaign,
            command,
        } => bounce::cmd_suppress(db, campaign, command),
        Command::Sink(a) => bounce::cmd_sink(a),
        Command::Keys {
            command:
                KeysCommand::Generate {
                    selector,
                    domain,
                    algorithm,
                    bits,
                    out_dir,
                },
        } => {
            let k = crate::dkim::generate_key(&selector, &domain, algorithm, bits, &out_dir)
                .map_err(BadInput)?;
            eprintln!(
                "blast: wrote {} (private, mode 0600) and {}; publish this record, then set [dkim] key_file:",
                k.key_file.display(),
                k.record_file.display()
            );
            println!("{}", k.dns_record);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            campaign,
            rows,
            dns,
        } => check::check(&campaign, rows, dns),
        Command::Preview { campaign, row, out } => check::preview(&campaign, row, out.as_deref()),
        Command::Send(a) => send::send(a),
        Command::Status {
            campaign,
            json,
            shard,
        } => status::status(&campaign, json, shard),
        Command::GenRecipients {
            rows,
            domains,
            broken_per_million,
            seed,
            out,
        } => {
            let opts = crate::generate::GenOptions {
                rows,
                domains,
                broken_per_million,
                seed,
            };
            match out {
                Some(path) => {
                    let f = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    crate::generate::write_recipients(f, &opts)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                None => crate::generate::write_recipients(std::io::stdout().lock(), &opts)
                    .context("cannot write to stdout")?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<crate::campaign::Dur>().map(|d| d.0)
}

/// A duration that must not be zero (a zero limit would cut every session at once).
fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "{s:?} is zero: give a positive duration, e.g. \"30s\""
        )),
        d => Ok(d),
    }
}

fn parse_time_of_day(s: &str) -> Result<TimeOfDay, String> {
    s.parse()
}

/// Application logs (not per-recipient outcomes) go to stderr through a non-blocking writer;
/// `RUST_LOG` sets the level (default: warnings). The returned guard flushes the writer when
/// dropped: hold it until the process is about to exit, or the last lines are lost.
fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    guard
}
