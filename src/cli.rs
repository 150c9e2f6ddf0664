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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};

use crate::campaign::{Campaign, CampaignError, NodeAddress, Problem, TimeOfDay};
use crate::clock::unix_now;
use crate::journal::{CampaignLock, Journal, JournalError, LockError, RowSet, RunState};
use crate::render::Renderer;
use crate::source::{Source, SourceOptions};
use crate::verp::VerpKey;

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
    if err.downcast_ref::<BadInput>().is_some() || err.downcast_ref::<CampaignError>().is_some() {
        exit::BAD_INPUT
    } else if err.downcast_ref::<TempFail>().is_some() {
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
    Send {
        campaign: PathBuf,
        /// Render everything, send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Read only the first N rows.
        #[arg(long)]
        limit: Option<u64>,
        /// Send the first valid row to this address only (a test send), then stop.
        #[arg(long, value_name = "ADDRESS")]
        to: Option<String>,
        /// Print only the summary.
        #[arg(long, short)]
        quiet: bool,
        /// After SIGINT/SIGTERM, how long running transactions may take to finish.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Start a new run even if the list's latest run is unfinished or finished.
        #[arg(long)]
        new_run: bool,
        /// Resume an unfinished run even though its templates changed since it started; start a
        /// run of a list that a journal of another sharding (a different `--shard` N, or sharded
        /// vs not) already holds a run of, which sends its done rows again.
        #[arg(long)]
        force: bool,
        /// Refuse (exit 75) to start or resume a run after this UTC time of day ("HH:MM");
        /// overrides `[schedule] not_after`.
        #[arg(long, value_name = "HH:MM", value_parser = parse_time_of_day)]
        not_after: Option<TimeOfDay>,
        /// Send only the rows whose address hash falls in shard K of N (1 ≤ K ≤ N ≤ 1024), with
        /// a journal, lock, delivery log and rejects file of its own: N boxes split one list.
        #[arg(long, value_name = "K/N")]
        shard: Option<crate::shard::Shard>,
        /// Benchmarking only (scripts/bench-journal): send without a journal — no resume, no
        /// idempotence, no duplicate accounting. The campaign lock is still taken.
        #[arg(long, hide = true)]
        no_journal: bool,
    },
    /// Show the journal of a campaign's current or last run: progress, counts per status, node
    /// and domain, top failure reasons. Read-only; works while a send runs.
    Status {
        campaign: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Read the journal of shard K of N (see `blast send --shard`).
        #[arg(long, value_name = "K/N")]
        shard: Option<crate::shard::Shard>,
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
    Sink {
        /// Address to listen on, e.g. 0.0.0.0:25.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Bounce domain accepted in RCPT (repeatable). Anything else gets 550 5.7.1.
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// The suppression list file.
        #[arg(long, default_value = "suppression.sqlite")]
        db: PathBuf,
        /// Accept and drop everything (pure sinkhole).
        #[arg(long)]
        discard: bool,
        /// Keep messages that cannot be acted upon here.
        #[arg(long)]
        quarantine: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        max_connections: usize,
        /// Largest message accepted (advertised as SIZE).
        #[arg(long, default_value_t = 10 * 1024 * 1024)]
        max_size: usize,
        /// Environment variable with the VERP HMAC secret.
        #[arg(long, default_value = "BLAST_SECRET")]
        secret_env: String,
        /// Soft bounces of an address before it is suppressed (0: never).
        #[arg(long, default_value_t = 3)]
        soft_bounce_limit: u32,
        /// Append one JSON line per bounce, delay warning and complaint (with a valid VERP
        /// token) to this file: `{"outcome":"bounced"|"soft_bounced"|"delayed"|"complained",
        /// "campaign", "row", "address", "reason", "status", "hard", "suppressed", …}`.
        #[arg(long, value_name = "PATH")]
        bounce_log: Option<PathBuf>,
        /// The campaign journal: the bounced address is the one the VERP token's row was sent
        /// to (its outcome there), else the address the report names.
        #[arg(long, value_name = "PATH")]
        journal: Option<PathBuf>,
        /// Take the journal path from this campaign file (`[output] journal`).
        #[arg(long, value_name = "FILE", conflicts_with = "journal")]
        campaign: Option<PathBuf>,
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        command_timeout: std::time::Duration,
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        data_timeout: std::time::Duration,
    },
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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Bounce {
            command: BounceCommand::Classify { files },
        } => crate::sink::cmd_classify(&files),
        Command::Suppress {
            db,
            campaign,
            command,
        } => crate::sink::cmd_suppress(db, campaign, command),
        Command::Sink {
            listen,
            domains,
            db,
            discard,
            quarantine,
            max_connections,
            max_size,
            secret_env,
            soft_bounce_limit,
            bounce_log,
            journal,
            campaign,
            command_timeout,
            data_timeout,
        } => {
            init_tracing();
            let journal = match (journal, campaign) {
                (Some(j), _) => Some(j),
                (None, Some(c)) => Some(
                    crate::campaign::Campaign::load(&c)
                        .map_err(|e| BadInput(e.to_string()))?
                        .output
                        .journal,
                ),
                (None, None) => None,
            };
            let mut o = crate::sink::SinkOptions::new(listen, domains, db);
            o.discard = discard;
            o.quarantine = quarantine;
            o.max_connections = max_connections;
            o.max_size = max_size;
            o.soft_bounce_limit = soft_bounce_limit;
            o.bounce_log = bounce_log;
            o.journal = journal;
            o.command_timeout = command_timeout;
            o.data_timeout = data_timeout;
            crate::sink::cmd_sink(o, &secret_env)
        }
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
        } => check(&campaign, rows, dns),
        Command::Preview { campaign, row, out } => preview(&campaign, row, out.as_deref()),
        Command::Send {
            campaign,
            dry_run,
            limit,
            to,
            quiet,
            grace,
            new_run,
            force,
            not_after,
            shard,
            no_journal,
        } => send(
            &campaign,
            to.as_deref(),
            &crate::send::SendOptions {
                dry_run,
                limit,
                mode: crate::progress::Mode::detect(quiet),
                grace,
                shard,
            },
            &RunFlags {
                new_run,
                force,
                not_after,
                no_journal,
            },
        ),
        Command::Status {
            campaign,
            json,
            shard,
        } => status(&campaign, json, shard),
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

/// The HMAC key from the environment. A campaign whose nodes are all the embedded receiver
/// (nothing leaves the machine) may run without one: it gets a fixed demo key and a warning.
pub fn load_key(campaign: &Campaign) -> Result<VerpKey, String> {
    let name = &campaign.envelope.secret_env;
    match std::env::var(name) {
        Ok(secret) => {
            VerpKey::new(secret.as_bytes()).map_err(|e| format!("environment variable {name}: {e}"))
        }
        Err(_) if campaign.all_embedded() => {
            eprintln!(
                "blast: warning: {name} is not set; using a fixed demo key (fine for the embedded receiver only)"
            );
            Ok(VerpKey::new(b"blast-demo-key-not-secret").expect("long enough"))
        }
        Err(_) => Err(format!(
            "environment variable {name} is not set: it must hold the HMAC secret for VERP and unsubscribe tokens (16+ random bytes, e.g. `export {name}=$(openssl rand -hex 32)`)"
        )),
    }
}

/// Source options for a campaign's list; writes the demo list first when asked to.
pub fn source_options(
    campaign: &Campaign,
    rejects: Option<PathBuf>,
) -> anyhow::Result<SourceOptions> {
    let r = &campaign.recipients;
    if let Some(rows) = r.generate
        && !r.path.exists()
    {
        if let Some(dir) = r.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = r.path.with_extension("csv.tmp");
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        crate::generate::write_recipients(
            std::io::BufWriter::new(f),
            &crate::generate::GenOptions {
                rows,
                ..Default::default()
            },
        )
        .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &r.path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), r.path.display()))?;
    }
    Ok(SourceOptions {
        path: r.path.clone(),
        delimiter: r.delimiter,
        has_header: r.header,
        columns: r.columns.clone(),
        address_column: r.address_column.clone(),
        dedupe: r.dedupe,
        rejects_path: rejects,
    })
}

/// Loads the campaign and everything needed to render it, collecting every problem.
/// Returns the campaign, the open source and the renderer, or all problems found.
pub fn prepare(
    path: &Path,
    rejects: Option<PathBuf>,
) -> Result<(Campaign, Source, Renderer), Vec<String>> {
    let campaign = Campaign::load(path).map_err(|e| lines(e.problems()))?;
    let mut problems = Vec::new();
    let key = load_key(&campaign).map_err(|e| problems.push(format!("{}: {e}", path.display())));
    for node in &campaign.nodes {
        if let Some(auth) = &node.auth
            && std::env::var_os(&auth.password_env).is_none()
        {
            problems.push(format!(
                "{}: node {:?}: environment variable {} (its AUTH password) is not set",
                path.display(),
                node.name,
                auth.password_env
            ));
        }
    }
    let source = source_options(&campaign, rejects)
        .map_err(|e| format!("{e:#}"))
        .and_then(|o| Source::open(o).map_err(|e| e.to_string()));
    let source = match source {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let renderer = match (&source, key) {
        (Some(s), Ok(key)) => match Renderer::new(&campaign, s.columns().clone(), key) {
            Ok(r) => Some(r),
            Err(errors) => {
                problems.extend(errors.iter().map(|e| e.to_string()));
                None
            }
        },
        _ => None,
    };
    match (source, renderer) {
        (Some(s), Some(r)) if problems.is_empty() => Ok((campaign, s, r)),
        _ => Err(problems),
    }
}

fn lines(problems: Vec<Problem>) -> Vec<String> {
    problems.iter().map(|p| p.to_string()).collect()
}

fn report_problems(problems: &[String]) -> ExitCode {
    let n = problems.len();
    eprintln!("blast: {n} problem{} found:", if n == 1 { "" } else { "s" });
    for p in problems {
        eprintln!("  {p}");
    }
    ExitCode::from(exit::BAD_INPUT)
}

fn check(path: &Path, sample: u64, dns: bool) -> anyhow::Result<ExitCode> {
    let (campaign, mut source, renderer) = match prepare(path, None) {
        Ok(t) => t,
        Err(problems) => return Ok(report_problems(&problems)),
    };
    let mut problems = Vec::new();
    let now = unix_now();
    let mut rendered = 0u64;
    let mut bytes = 0u64;
    while source.stats().rows < sample {
        let Some(r) = source
            .next_recipient()
            .context("reading the recipient list")?
        else {
            break;
        };
        match renderer.render(r, now) {
            Ok(m) => {
                rendered += 1;
                bytes += m.bytes.len() as u64;
            }
            Err(e) => {
                if problems.len() < 20 {
                    problems.push(e.to_string());
                }
            }
        }
    }
    let stats = source.finish().context("reading the recipient list")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "campaign   {} ({})", campaign.id, campaign.name)?;
    writeln!(out, "file       {}", campaign.path.display())?;
    writeln!(
        out,
        "list       {} — columns: {}",
        campaign.recipients.path.display(),
        renderer_columns(&renderer)
    )?;
    writeln!(
        out,
        "sampled    {} rows: {} accepted, {} rejected, {} rendered (avg {} bytes)",
        stats.rows,
        stats.accepted,
        stats.rejected,
        rendered,
        bytes.checked_div(rendered).unwrap_or(0)
    )?;
    for (kind, n) in stats.rejected_by_kind().filter(|(_, n)| *n > 0) {
        writeln!(out, "  rejected {n:>8}  {kind}")?;
    }
    for n in &campaign.nodes {
        let addr = match &n.address {
            NodeAddress::Remote { host, port } => format!("{host}:{port}"),
            NodeAddress::Embedded => "embedded receiver".to_string(),
        };
        writeln!(
            out,
            "node       {} {} tls={:?} weight={} connections={} per-connection={}{}{}",
            n.name,
            addr,
            n.tls,
            n.weight,
            n.max_connections,
            n.messages_per_connection,
            n.rate.map(|r| format!(" rate={r}")).unwrap_or_default(),
            if n.fallback { " fallback" } else { "" }
        )?;
    }
    if let Some(d) = &campaign.dkim {
        for s in &d.signers {
            writeln!(
                out,
                "dkim       d={} s={} a={} ({} bits, {}); DNS: {}._domainkey.{}",
                s.domain,
                s.selector,
                s.key.algorithm(),
                s.key.bits(),
                s.key_file.display(),
                s.selector,
                s.domain
            )?;
        }
        if let Some(f) = &d.feedback_id {
            writeln!(out, "feedback   Feedback-ID: {f}")?;
        }
    }
    for w in crate::campaign::alignment_warnings(&campaign) {
        eprintln!("blast: warning: {w}");
    }
    let configured = std::fs::read_to_string(path).is_ok_and(|t| {
        toml::from_str::<toml::Table>(&t).is_ok_and(|t| {
            t.get("dns")
                .and_then(|d| d.as_table())
                .is_some_and(|d| d.contains_key("servers") || d.contains_key("upstream"))
        })
    });
    if dns || configured {
        for w in crate::dns::sender_checks(&campaign) {
            eprintln!("blast: warning: {w}");
        }
    }
    if !problems.is_empty() {
        return Ok(report_problems(&problems));
    }
    writeln!(out, "ok")?;
    Ok(ExitCode::SUCCESS)
}

fn renderer_columns(r: &Renderer) -> String {
    r.columns().names().join(", ")
}

fn preview(path: &Path, row: u64, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (_campaign, mut source, renderer) = match prepare(path, None) {
        Ok(t) => t,
        Err(problems) => return Ok(report_problems(&problems)),
    };
    let recipient = loop {
        match source
            .next_recipient()
            .context("reading the recipient list")?
        {
            Some(r) if r.row == row => break r,
            Some(r) if r.row > row => {
                return Err(BadInput(format!(
                    "row {row} was rejected (see `blast check`; the rejects file names the reason)"
                ))
                .into());
            }
            Some(_) => continue,
            None => {
                let rows = source.stats().rows;
                return Err(anyhow!(BadInput(format!(
                    "row {row} not found: the list has {rows} rows{}",
                    if rows >= row {
                        " (that row was rejected)"
                    } else {
                        ""
                    }
                ))));
            }
        }
    };
    let message = renderer
        .render(recipient, unix_now())
        .map_err(|e| BadInput(e.to_string()))?;
    match out {
        Some(p) => std::fs::write(p, &message.bytes)
            .with_context(|| format!("cannot write {}", p.display()))?,
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(&message.bytes)?;
            o.flush()?;
        }
    }
    eprintln!(
        "blast: row {} → {} (MAIL FROM:<{}>, Message-ID <{}>)",
        message.row, message.rcpt, message.mail_from, message.message_id
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<crate::campaign::Dur>().map(|d| d.0)
}

fn parse_time_of_day(s: &str) -> Result<TimeOfDay, String> {
    s.parse()
}

/// How `blast send` picks its run.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub new_run: bool,
    pub force: bool,
    pub not_after: Option<TimeOfDay>,
    /// `--no-journal` (hidden, for benchmarks).
    pub no_journal: bool,
}

/// Which run a `blast send` works on, decided from the journal before anything is read.
enum RunChoice {
    /// The list's latest run is finished: nothing to do.
    Finished(crate::journal::RunInfo),
    Resume(crate::journal::RunInfo),
    New,
}

fn send(
    path: &Path,
    to: Option<&str>,
    opts: &crate::send::SendOptions,
    flags: &RunFlags,
) -> anyhow::Result<ExitCode> {
    init_tracing();
    let journaled = to.is_none() && !opts.dry_run && !flags.no_journal;
    let mut loaded = Campaign::load(path).map_err(|e| BadInput(e.to_string()))?;
    // The journal path without `--shard`: every sharding's journal is named after it.
    let base_journal = loaded.output.journal.clone();
    shard_outputs(&mut loaded, opts.shard);
    // One sender per campaign: the lock comes before anything is written (rejects, journal).
    let _lock = if to.is_none() && !opts.dry_run {
        Some(lock_campaign(&loaded)?)
    } else {
        None
    };
    let mut plan = None;
    if journaled {
        let journal_path = &loaded.output.journal;
        // A first send creates the journal only once the resharding guard let it start.
        let journal = if journal_path.exists() {
            Some(Journal::open(journal_path)?)
        } else {
            None
        };
        let list = &loaded.recipients.path;
        // The demo list is generated by `prepare`; fingerprint it once it exists.
        if list.exists() {
            let (choice, list_fp, tpl_fp) = choose_run(journal.as_ref(), &loaded, flags)?;
            if let RunChoice::Finished(r) = &choice {
                println!(
                    "run {} already finished at {}, nothing to do",
                    r.id,
                    r.ended_at.as_deref().unwrap_or("?")
                );
                return Ok(ExitCode::SUCCESS);
            }
            if matches!(choice, RunChoice::New) && !flags.force {
                check_sharding(&base_journal, &loaded, opts.shard, &list_fp)?;
            }
            check_not_after(&loaded, flags, &choice)?;
            let journal = match journal {
                Some(j) => j,
                None => Journal::open(journal_path)?,
            };
            plan = Some((journal, choice, list_fp, tpl_fp));
        } else {
            check_not_after(&loaded, flags, &RunChoice::New)?;
            let journal = match journal {
                Some(j) => j,
                None => Journal::open(journal_path)?,
            };
            plan = Some((journal, RunChoice::New, String::new(), String::new()));
        }
    }
    let rejects = (to.is_none() && !opts.dry_run).then(|| loaded.output.rejects.clone());
    let (mut campaign, source, renderer) = match prepare(path, rejects) {
        Ok(t) => t,
        Err(problems) => return Ok(report_problems(&problems)),
    };
    shard_outputs(&mut campaign, opts.shard);
    if let Some(to) = to {
        crate::source::check_address(to).map_err(|e| BadInput(format!("--to {to:?}: {e}")))?;
        let line = crate::send::send_one(&campaign, source, renderer, to)?;
        println!("{line}");
        return Ok(ExitCode::SUCCESS);
    }
    let Some((journal, choice, mut list_fp, tpl_fp)) = plan else {
        let report = crate::send::run(&campaign, source, renderer, opts)
            .with_context(|| format!("sending {}", path.display()))?;
        println!("{}", report.summary());
        return Ok(ExitCode::from(report.exit_code()));
    };
    if list_fp.is_empty() {
        // A list generated just now (the demo): same guard as above.
        list_fp = crate::journal::list_fingerprint(&campaign.recipients.path)
            .with_context(|| format!("reading {}", campaign.recipients.path.display()))?;
        if !flags.force {
            check_sharding(&base_journal, &campaign, opts.shard, &list_fp)?;
        }
    }
    let tpl_fp = if tpl_fp.is_empty() {
        crate::journal::template_fingerprint(&campaign)
    } else {
        tpl_fp
    };
    let (run_id, skip, unconfirmed) = match choice {
        RunChoice::Resume(r) => {
            let loading = std::time::Instant::now();
            let finals = journal.final_rows(r.id)?;
            let unconfirmed = journal.unconfirmed_rows(r.id, &finals)?;
            journal.resume_run(r.id, &tpl_fp)?;
            eprintln!(
                "blast: resuming run {} (started {}): {} rows already final, {} attempted without an outcome (re-sent, possibly duplicated); journal read in {} ms",
                r.id,
                r.started_at,
                finals.len(),
                unconfirmed.len(),
                loading.elapsed().as_millis()
            );
            (r.id, finals, unconfirmed)
        }
        _ => {
            let id =
                journal.create_run(&campaign.id, &list_fp, &tpl_fp, &campaign.recipients.path)?;
            (id, RowSet::new(), RowSet::new())
        }
    };
    let mut writer = journal.writer(run_id, 65_536)?;
    writer.set_unconfirmed(unconfirmed);
    let result = crate::send::run_with(
        &campaign,
        source,
        renderer,
        opts,
        Some(crate::send::Journaling { writer, skip }),
    );
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = journal.end_run(run_id, RunState::Stopped);
            return Err(e).with_context(|| format!("sending {}", path.display()));
        }
    };
    let finished = report.end == crate::dispatch::End::Done
        && report.signal.is_none()
        && report.list_complete
        // Rows that cannot be rendered are final `failed` outcomes, counted in `j.outcomes`.
        // Rows final in earlier sessions are counted apart (`source.done`), not as accepted.
        && report.suppressed
            + report.shard.map_or(0, |(_, other)| other)
            + report.journal.map_or(0, |j| j.outcomes)
            == report.source.accepted;
    let state = if finished {
        RunState::Finished
    } else {
        RunState::Stopped
    };
    journal.end_run(run_id, state)?;
    if let Some(d) = &report.dns
        && let Err(e) = journal.record_dns(run_id, d)
    {
        tracing::warn!("{e}: the DNS counters of this session are not in the journal");
    }
    println!("{}", report.summary());
    println!(
        "run        {run_id} {}{}",
        state.as_str(),
        if finished {
            String::new()
        } else {
            format!("; `blast send {}` resumes it", campaign.path.display())
        }
    );
    Ok(ExitCode::from(report.exit_code()))
}

/// `--shard K/N`: the shard's own journal (and so lock), delivery log and rejects file.
fn shard_outputs(campaign: &mut Campaign, shard: Option<crate::shard::Shard>) {
    if let Some(s) = shard {
        let o = &mut campaign.output;
        o.journal = s.path(&o.journal);
        o.delivery_log = s.path(&o.delivery_log);
        o.rejects = s.path(&o.rejects);
    }
}

fn lock_campaign(campaign: &Campaign) -> anyhow::Result<CampaignLock> {
    match CampaignLock::acquire(&campaign.output.journal) {
        Ok(l) => Ok(l),
        Err(LockError::Held { pid }) => Err(TempFail(format!(
            "campaign {} is being sent by another blast ({})",
            campaign.id,
            pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"))
        ))
        .into()),
        Err(LockError::Io(e)) => Err(anyhow::Error::new(e).context(format!(
            "cannot take the lock {}",
            crate::journal::lock_path(&campaign.output.journal).display()
        ))),
    }
}

/// The resharding guard. Which journal a row's outcome lands in depends on the sharding
/// (`--shard K/N`, or none), so a list already sent under another one (a different N, or sharded
/// vs unsharded) has its done rows in journals this send does not read: it would send them
/// again. Refuses (exit 2) to start a run when a journal of another sharding beside this one
/// holds a run of `campaign` over the same list bytes; `--force` skips the check.
fn check_sharding(
    base_journal: &Path,
    campaign: &Campaign,
    shard: Option<crate::shard::Shard>,
    list_fp: &str,
) -> anyhow::Result<()> {
    let other_scheme = |s: Option<crate::shard::Shard>| match (s, shard) {
        (None, None) => false,
        (Some(a), Some(b)) => a.count() != b.count(),
        _ => true,
    };
    let siblings = crate::shard::existing(base_journal)
        .with_context(|| format!("listing the journals beside {}", base_journal.display()))?;
    let mut found = Vec::new();
    let mut schemes: Vec<String> = Vec::new();
    for (sharding, file) in siblings {
        if !other_scheme(sharding) {
            continue;
        }
        let runs = Journal::open_read_only(&file)
            .and_then(|j| j.runs_of_list(&campaign.id, list_fp))
            .with_context(|| {
                format!(
                    "reading {} to check that this list was not sent under another sharding (--force skips the check)",
                    file.display()
                )
            })?;
        let Some((run, finals)) = runs.last() else {
            continue;
        };
        found.push(format!(
            "{} ({}: run {} {}, {} rows final)",
            file.display(),
            crate::shard::describe(sharding),
            run.id,
            run.state.as_str(),
            finals
        ));
        let scheme = match sharding {
            Some(s) => format!("--shard K/{}", s.count()),
            None => "no --shard".to_string(),
        };
        if !schemes.contains(&scheme) {
            schemes.push(scheme);
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(BadInput(format!(
        "campaign {}: the list {} was already sent under another sharding, recorded in {}. This send ({}, journal {}) does not read those journals and would send their rows again. Send it with the sharding it was started with ({}), or pass --force to start anyway (rows already sent there get the message again)",
        campaign.id,
        campaign.recipients.path.display(),
        found.join("; "),
        crate::shard::describe(shard),
        campaign.output.journal.display(),
        schemes.join(" or "),
    ))
    .into())
}

/// Finds the run to work on: the latest run of this campaign over the same list bytes.
fn choose_run(
    journal: Option<&Journal>,
    campaign: &Campaign,
    flags: &RunFlags,
) -> anyhow::Result<(RunChoice, String, String)> {
    let list_fp = crate::journal::list_fingerprint(&campaign.recipients.path)
        .with_context(|| format!("reading {}", campaign.recipients.path.display()))?;
    let tpl_fp = crate::journal::template_fingerprint(campaign);
    let latest = match journal {
        Some(j) if !flags.new_run => j.latest_run(&campaign.id, &list_fp)?,
        _ => None,
    };
    let choice = match latest {
        None => RunChoice::New,
        Some(r) if r.state == RunState::Finished => RunChoice::Finished(r),
        Some(r) => {
            if r.template_fingerprint != tpl_fp && !flags.force {
                return Err(BadInput(format!(
                    "run {} of campaign {} is unfinished and its templates (subject, bodies, unsubscribe, From or headers) changed since it started: resuming would send different messages to the rest of the list. Restore them, or pass --force to resume with the new templates, or --new-run to start over",
                    r.id, campaign.id
                ))
                .into());
            }
            RunChoice::Resume(r)
        }
    };
    Ok((choice, list_fp, tpl_fp))
}

/// `not_after` (campaign or `--not-after`): no run starts or resumes after that time of day.
fn check_not_after(
    campaign: &Campaign,
    flags: &RunFlags,
    choice: &RunChoice,
) -> anyhow::Result<()> {
    let Some(limit) = flags.not_after.or(campaign.schedule.not_after) else {
        return Ok(());
    };
    let now = TimeOfDay::now_utc();
    if now > limit {
        let what = match choice {
            RunChoice::Resume(r) => format!("resume run {}", r.id),
            _ => "start a new run".to_string(),
        };
        return Err(TempFail(format!(
            "not_after {limit} UTC: it is {now} UTC, too late to {what} of campaign {}; it will run at the next scheduled time (or pass --not-after to override)",
            campaign.id
        ))
        .into());
    }
    Ok(())
}

fn status(path: &Path, json: bool, shard: Option<crate::shard::Shard>) -> anyhow::Result<ExitCode> {
    let mut campaign = Campaign::load(path).map_err(|e| BadInput(e.to_string()))?;
    shard_outputs(&mut campaign, shard);
    let journal_path = &campaign.output.journal;
    let journal = match Journal::open_read_only(journal_path) {
        Ok(j) => Some(j),
        Err(JournalError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let run = match &journal {
        Some(j) => j.last_run(&campaign.id)?,
        None => None,
    };
    let (Some(journal), Some(run)) = (journal, run) else {
        if json {
            println!(
                "{}",
                serde_json::json!({"campaign": campaign.id, "journal": journal_path.display().to_string(), "run": null})
            );
        } else {
            println!(
                "campaign {}: no run yet (journal {})",
                campaign.id,
                journal_path.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let report = journal.status(&run, CampaignLock::holder(journal_path))?;
    // Bounces come from the suppression list next to the campaign (what `blast sink` recorded).
    let bounces = if campaign.suppression.path.exists() {
        Some(
            crate::suppression::Suppressions::open(&campaign.suppression.path)?
                .bounce_report(&campaign.id)?,
        )
    } else {
        None
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["campaign"] = serde_json::Value::from(campaign.id.clone());
        v["bounces"] = serde_json::to_value(bounces.unwrap_or_default())?;
        if let Some(s) = shard {
            v["shard"] = serde_json::Value::from(s.to_string());
        }
        println!("{v}");
    } else {
        println!("campaign   {} ({})", campaign.id, campaign.name);
        if let Some(s) = shard {
            println!("shard      {s} (journal {})", journal_path.display());
        }
        println!("{}", report.text());
        if let Some(b) = bounces.filter(|b| !b.text().is_empty()) {
            print!("{}", b.text());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Application logs (not per-recipient outcomes) go to stderr through a non-blocking writer;
/// `RUST_LOG` sets the level (default: warnings).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    // The guard flushes on drop; the process exits right after `send` returns.
    std::mem::forget(guard);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
