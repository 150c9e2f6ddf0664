//! `blast sink`: the MX of the bounce domain. It receives bounces, complaints and auto-replies
//! on the embedded receiver's SMTP dialogue (with a [`ReceiverPolicy`]), classifies them with
//! [`crate::bounce::dsn`] and records hard bounces and complaints in the suppression list.
//!
//! - RCPT is accepted only for the bounce domain(s); anything else gets `550 5.7.1` (never an
//!   open relay). The null sender is accepted (bounces use it). SIZE is advertised and
//!   enforced; sessions are bounded by a semaphore taken before `accept` and per client address;
//!   slow clients are cut off by absolute command, line, session and data limits (tighter while
//!   every slot is taken), and a client making error after error is dropped; VRFY is disabled.
//! - Accepted messages go through a bounded queue (full → `451 4.3.0`, the sender retries) to
//!   one worker thread that owns the SQLite connection, so memory stays bounded.
//! - Trust: a message is acted upon only if its RCPT carries a valid VERP token (HMAC checked).
//!   A forged or altered token is accepted at the SMTP level — refusing would tell a prober
//!   which tokens are valid, and a real MTA's bounce must not bounce back — but it never
//!   suppresses anything: it is logged (`"token":"forged"`). A bounce without any token is
//!   logged and quarantined, not acted on.
//! - A valid token authorises action on its own row's address only, never on whatever the
//!   report names: every recipient can read their own token from Return-Path and mail a
//!   "bounce" naming somebody else. With the journal's address for the row, that address is
//!   acted on (the reported recipient that is it, or the single reported recipient of a
//!   forwarded mailbox); without it, only a reported recipient whose address the token binds
//!   ([`VerpKey::is_bound_to`]). Other reported recipients are logged
//!   (`"action":"ignored_not_token_address"`) and the message is quarantined; a report in
//!   which no recipient is the token's is quarantined and acts on nothing. A journal address
//!   the token does not bind (the row went elsewhere in another run of the campaign) is not
//!   used.
//! - A message that is unparseable, not a bounce, or a bounce naming no recipient goes to the
//!   quarantine directory (if given; else it is logged with its size) — never silently dropped.
//! - `--discard`: accept and drop (pure sinkhole), nothing classified or stored.
//! - `--journal PATH` / `--campaign FILE`: the address acted on is the one the token's row was
//!   sent to, read (read-only) from the campaign journal's outcomes; a row the journal lacks
//!   (another campaign, not committed yet) falls back to the reported recipient the token
//!   binds. The log line says which (`"address_source": "journal" | "token"`; `"report"` for
//!   recipients not acted on).
//!
//! One JSON log line per reported recipient on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver as MpscReceiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde_json::json;

use crate::bounce::dsn::{BouncedRecipient, Classification, Kind, classify, with_verp_address};
use crate::bounce::suppression::{BounceEvent, Entry, Source, Suppressions};
use crate::smtp::receiver::{Receiver, ReceiverHandle, ReceiverOptions, ReceiverPolicy};
use crate::verp::{VerpError, VerpKey, VerpToken};

/// Messages waiting for the worker, at most.
const QUEUE: usize = 16;

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    /// Bounce domains, lowercased.
    pub domains: Vec<String>,
    pub db: PathBuf,
    pub discard: bool,
    pub quarantine: Option<PathBuf>,
    pub max_connections: usize,
    /// Sessions at once from one address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    pub max_size: usize,
    pub command_timeout: Duration,
    /// A command line must arrive whole within this of its first byte.
    pub line_timeout: Duration,
    /// While every connection slot is taken, a command line must arrive whole within this of
    /// the previous reply.
    pub busy_timeout: Duration,
    /// Longest session (a DATA phase under way may finish under `data_timeout`).
    pub session_timeout: Duration,
    pub data_timeout: Duration,
    /// 5xx replies in a row before the session is closed with 421.
    pub max_errors: u32,
    /// None: no secret configured; no token can be verified, nothing is suppressed.
    pub key: Option<VerpKey>,
    pub soft_bounce_limit: u32,
    /// Append one JSON line per acted-on report here (see [`append_bounce_log`]).
    pub bounce_log: Option<PathBuf>,
    /// The campaign journal: a valid token's (campaign, row) is looked up in its outcomes to
    /// find the address that row was sent to, which beats the address the report names (a
    /// forwarded or rewritten recipient). Not found (or no journal): the report's address.
    pub journal: Option<PathBuf>,
}

impl SinkOptions {
    pub fn new(listen: SocketAddr, domains: Vec<String>, db: PathBuf) -> SinkOptions {
        SinkOptions {
            listen,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            db,
            discard: false,
            quarantine: None,
            max_connections: 64,
            max_connections_per_ip: 8,
            max_size: 10 * 1024 * 1024,
            command_timeout: Duration::from_secs(300),
            line_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(1),
            session_timeout: Duration::from_secs(600),
            data_timeout: Duration::from_secs(600),
            max_errors: 10,
            key: None,
            soft_bounce_limit: 3,
            bounce_log: None,
            journal: None,
        }
    }
}

/// What the worker did, for tests and the final report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkStats {
    pub messages: u64,
    pub suppressed: u64,
    pub soft: u64,
    /// Delay warnings (`Action: delayed`): logged, never counted as bounces.
    pub delayed: u64,
    pub forged: u64,
    pub quarantined: u64,
}

struct Job {
    rcpts: Vec<String>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Policy {
    domains: Vec<String>,
    discard: bool,
    tx: SyncSender<Job>,
}

impl ReceiverPolicy for Policy {
    fn rcpt(&self, address: &str) -> Result<(), String> {
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        if self.domains.contains(&domain) {
            Ok(())
        } else {
            Err("550 5.7.1 Relaying denied: not a bounce address".into())
        }
    }

    fn message(&self, _mail_from: &str, rcpts: &[String], data: Vec<u8>) -> Result<(), String> {
        if self.discard {
            return Ok(());
        }
        match self.tx.try_send(Job {
            rcpts: rcpts.to_vec(),
            data,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err("451 4.3.0 Busy, try again later".into()),
            Err(TrySendError::Disconnected(_)) => Err("421 4.3.0 Shutting down".into()),
        }
    }
}

/// A running sink.
pub struct SinkHandle {
    receiver: ReceiverHandle,
    worker: std::thread::JoinHandle<SinkStats>,
}

impl SinkHandle {
    pub fn addr(&self) -> SocketAddr {
        self.receiver.addr()
    }

    /// Stops accepting, ends the sessions, lets the worker finish the queue.
    pub async fn shutdown(self) -> SinkStats {
        self.receiver.shutdown().await;
        tokio::task::spawn_blocking(move || self.worker.join().unwrap_or_default())
            .await
            .unwrap_or_default()
    }
}

/// Starts the sink (the suppression list is opened first, so a bad path fails here).
pub async fn start(opts: SinkOptions) -> anyhow::Result<SinkHandle> {
    let list = if opts.discard {
        None
    } else {
        Some(Suppressions::open(&opts.db)?)
    };
    if let Some(q) = &opts.quarantine {
        crate::private::create_dir_all(q)?;
    }
    let (tx, rx) = sync_channel::<Job>(QUEUE);
    let worker = {
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("blast-sink".into())
            .spawn(move || work(rx, list, &opts))?
    };
    let receiver = Receiver::start(ReceiverOptions {
        listen: opts.listen,
        pipelining: true,
        max_message_size: opts.max_size,
        policy: Some(Arc::new(Policy {
            domains: opts.domains.clone(),
            discard: opts.discard,
            tx,
        })),
        max_connections: Some(opts.max_connections),
        max_connections_per_ip: Some(opts.max_connections_per_ip),
        command_timeout: opts.command_timeout,
        line_timeout: opts.line_timeout,
        busy_timeout: Some(opts.busy_timeout),
        session_timeout: Some(opts.session_timeout),
        data_timeout: opts.data_timeout,
        max_errors: Some(opts.max_errors),
        ..ReceiverOptions::default()
    })
    .await?;
    Ok(SinkHandle { receiver, worker })
}

/// The token check of one bounce address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Valid(VerpToken),
    Forged,
    Missing,
}

/// Finds a VERP token in the local part (after any prefix such as `b-`): tries every suffix
/// that starts after a `-`, `+` or `=`. Any valid one wins; a well-formed one with a bad MAC
/// makes the address forged.
pub fn check_token(key: Option<&VerpKey>, address: &str) -> Token {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let Some(key) = key else {
        return Token::Missing;
    };
    let mut forged = false;
    let starts = std::iter::once(0).chain(
        local
            .char_indices()
            .filter(|(_, c)| matches!(c, '-' | '+' | '='))
            .map(|(i, _)| i + 1),
    );
    for i in starts {
        match key.verify(&local[i..]) {
            Ok(token) => return Token::Valid(token),
            Err(VerpError::BadMac) => forged = true,
            Err(_) => {}
        }
    }
    if forged {
        Token::Forged
    } else {
        Token::Missing
    }
}

/// Row → address lookups in the campaign journal, opened read-only on first use (and again
/// after a failure: the journal may not exist yet when the sink starts).
struct RowAddresses {
    path: Option<PathBuf>,
    journal: Option<crate::journal::Journal>,
}

impl RowAddresses {
    fn new(path: Option<PathBuf>) -> RowAddresses {
        RowAddresses {
            path,
            journal: None,
        }
    }

    fn lookup(&mut self, campaign: &str, row: u64) -> Option<String> {
        let path = self.path.as_ref()?;
        if self.journal.is_none() {
            match crate::journal::Journal::open_read_only(path) {
                Ok(j) => self.journal = Some(j),
                Err(err) => {
                    tracing::warn!("journal {}: {err}", path.display());
                    return None;
                }
            }
        }
        match self.journal.as_ref()?.row_address(campaign, row) {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!("journal {}: {err}", path.display());
                self.journal = None;
                None
            }
        }
    }
}

fn work(rx: MpscReceiver<Job>, list: Option<Suppressions>, opts: &SinkOptions) -> SinkStats {
    let mut stats = SinkStats::default();
    let mut rows = RowAddresses::new(opts.journal.clone());
    while let Ok(job) = rx.recv() {
        stats.messages += 1;
        handle(&job, list.as_ref(), &mut rows, opts, &mut stats);
    }
    stats
}

fn handle(
    job: &Job,
    list: Option<&Suppressions>,
    rows: &mut RowAddresses,
    opts: &SinkOptions,
    stats: &mut SinkStats,
) {
    let reported = classify(&job.data);
    for address in &job.rcpts {
        let rcpt = Rcpt::read(address, opts.key.as_ref(), rows);
        if rcpt.token == Token::Forged {
            stats.forged += 1;
        }
        let scope = Scope::of(&reported, &rcpt, opts.key.as_ref());
        if needs_quarantine(&scope.c, &rcpt.token) || scope.names_others() {
            quarantine_job(job, &rcpt, &scope.c, opts, stats);
        }
        let c = &scope.c;
        for r in &c.recipients {
            let outcome = outcome(c, r);
            let action = match list {
                Some(list) if rcpt.token_str == "valid" => {
                    act(list, &rcpt, c, r, outcome, opts, stats)
                }
                _ if rcpt.token == Token::Forged => "ignored_forged_token",
                _ => "logged",
            };
            log_recipient(&rcpt, c, r, action, scope.source);
        }
        for r in &scope.ignored {
            log_recipient(&rcpt, c, r, "ignored_not_token_address", "report");
        }
    }
}

/// One RCPT of a received message: what its VERP token says.
struct Rcpt<'a> {
    address: &'a str,
    token: Token,
    /// `token` in the log: `valid`, `forged` or `missing`.
    token_str: &'static str,
    campaign: Option<String>,
    row: Option<u64>,
    /// The address the token's row was sent to, if the journal knows it and the token binds it
    /// (or binds no address).
    sent_to: Option<String>,
}

impl<'a> Rcpt<'a> {
    /// Checks the token of RCPT `address` and looks its row up in the journal.
    fn read(address: &'a str, key: Option<&VerpKey>, rows: &mut RowAddresses) -> Rcpt<'a> {
        let token = check_token(key, address);
        let (token_str, campaign, row) = match &token {
            Token::Valid(t) => ("valid", Some(t.campaign.clone()), Some(t.row)),
            Token::Forged => ("forged", None, None),
            Token::Missing => ("missing", None, None),
        };
        let sent_to = match (&token, key) {
            (Token::Valid(t), Some(key)) => rows
                .lookup(&t.campaign, t.row)
                .filter(|a| match key.is_bound_to(t, a) {
                    Some(false) => {
                        tracing::warn!(
                            "journal: row {} of campaign {} went to another address than the token's (another run?); not used",
                            t.row,
                            t.campaign
                        );
                        false
                    }
                    _ => true,
                }),
            _ => None,
        };
        Rcpt {
            address,
            token,
            token_str,
            campaign,
            row,
            sent_to,
        }
    }
}

/// The reported recipients one RCPT's token lets the sink act on (see the module doc).
struct Scope {
    /// The report, with only the recipients to act on, each under the address acted on.
    c: Classification,
    /// Where their address comes from: `journal`, `token` (a reported recipient the token
    /// binds), or `report` (no valid token: nothing is acted on).
    source: &'static str,
    /// Reported recipients that are not the token's: logged, never acted on.
    ignored: Vec<BouncedRecipient>,
}

impl Scope {
    fn of(reported: &Classification, rcpt: &Rcpt, key: Option<&VerpKey>) -> Scope {
        let (Token::Valid(token), Some(key)) = (&rcpt.token, key) else {
            return Scope {
                c: reported.clone(),
                source: "report",
                ignored: Vec::new(),
            };
        };
        // The token's own address: the journal's for its row, else the one its tag binds.
        let is_own = |a: &str| match &rcpt.sent_to {
            Some(sent_to) => a.trim().eq_ignore_ascii_case(sent_to.trim()),
            None => key.is_bound_to(token, a) == Some(true),
        };
        let source = if rcpt.sent_to.is_some() {
            "journal"
        } else {
            "token"
        };
        let (own, ignored): (Vec<_>, Vec<_>) = reported
            .recipients
            .iter()
            .cloned()
            .partition(|r| is_own(&r.address));
        let c = match (&rcpt.sent_to, own.into_iter().next()) {
            // The token's address, once (a report naming it twice counts once).
            (_, Some(r)) => Classification {
                kind: reported.kind,
                recipients: vec![r],
            },
            // A forwarded mailbox (the report names its target) or a report naming nobody: the
            // journal's address.
            (Some(sent_to), None) if reported.recipients.len() <= 1 => {
                return Scope {
                    c: with_verp_address(reported.clone(), sent_to),
                    source,
                    ignored: Vec::new(),
                };
            }
            (_, None) => Classification {
                kind: reported.kind,
                recipients: Vec::new(),
            },
        };
        Scope { c, source, ignored }
    }

    /// Whether the report named recipients that are not the token's (kept for a human).
    fn names_others(&self) -> bool {
        !self.ignored.is_empty() && matches!(self.c.kind, Kind::Bounce | Kind::Complaint)
    }
}

/// Whether nothing can be done with the message for this RCPT, so it is kept in the quarantine:
/// unparseable, not a bounce, a bounce naming no recipient, or a bounce or complaint without a
/// token.
fn needs_quarantine(c: &Classification, token: &Token) -> bool {
    matches!(c.kind, Kind::Unparseable | Kind::NotBounce)
        || (c.kind == Kind::Bounce && c.recipients.is_empty())
        || (matches!(token, Token::Valid(_))
            && c.kind == Kind::Complaint
            && c.recipients.is_empty())
        || (*token == Token::Missing && matches!(c.kind, Kind::Bounce | Kind::Complaint))
}

/// Writes the message to the quarantine directory (if any) and logs it.
fn quarantine_job(
    job: &Job,
    rcpt: &Rcpt,
    c: &Classification,
    opts: &SinkOptions,
    stats: &mut SinkStats,
) {
    let file = quarantine(opts, &job.data);
    if file.is_some() {
        stats.quarantined += 1;
    }
    log(json!({
        "rcpt": rcpt.address, "token": rcpt.token_str, "kind": c.kind.as_str(),
        "action": "quarantined", "file": file, "size": job.data.len(),
    }));
}

/// What the report means for the address (the bounce log's `outcome`).
fn outcome(c: &Classification, r: &BouncedRecipient) -> Option<&'static str> {
    match c.kind {
        Kind::Complaint => Some("complained"),
        Kind::Bounce if r.action == "delayed" => Some("delayed"),
        // Hard: suppressed now. A delay warning never suppresses, whatever its reason.
        Kind::Bounce if c.suppresses(r) => Some("bounced"),
        Kind::Bounce => Some("soft_bounced"),
        _ => None,
    }
}

/// Acts on a report for reported recipient `r` of a valid token: suppresses the address (hard
/// bounce, complaint), counts a delay warning or a soft bounce, and records the event for the
/// token's campaign. Returns the action logged.
fn act(
    list: &Suppressions,
    rcpt: &Rcpt,
    c: &Classification,
    r: &BouncedRecipient,
    outcome: Option<&'static str>,
    opts: &SinkOptions,
    stats: &mut SinkStats,
) -> &'static str {
    let mut action = "logged";
    if c.suppresses(r) && outcome != Some("delayed") {
        action = suppress(list, rcpt, c, r, stats);
    } else if outcome == Some("delayed") {
        // A delay warning: the MTA is still trying. Not a bounce; not counted.
        stats.delayed += 1;
        action = "delay_warning";
    } else if outcome == Some("soft_bounced") {
        action = count_soft(list, r, opts, stats);
    }
    if let (Some(outcome), Some(campaign)) = (outcome, &rcpt.campaign) {
        record_event(list, campaign, rcpt.row, r, outcome, action, opts);
    }
    action
}

/// Adds a hard bounce or a complaint to the suppression list.
fn suppress(
    list: &Suppressions,
    rcpt: &Rcpt,
    c: &Classification,
    r: &BouncedRecipient,
    stats: &mut SinkStats,
) -> &'static str {
    let mut e = Entry::new(
        &r.address,
        if c.kind == Kind::Complaint {
            Source::Complaint
        } else {
            Source::Bounce
        },
        r.reason.as_str(),
    );
    e.status = r.status.clone();
    e.diagnostic = Some(r.diagnostic.clone()).filter(|d| !d.is_empty());
    e.campaign = rcpt.campaign.clone();
    e.row = rcpt.row;
    match list.add(&e) {
        Ok(_) => {
            stats.suppressed += 1;
            "suppressed"
        }
        Err(err) => {
            tracing::error!("{err}");
            "error"
        }
    }
}

/// Counts a soft bounce; at `soft_bounce_limit` the address is suppressed.
fn count_soft(
    list: &Suppressions,
    r: &BouncedRecipient,
    opts: &SinkOptions,
    stats: &mut SinkStats,
) -> &'static str {
    stats.soft += 1;
    match list.record_soft(&r.address, r.reason.as_str(), opts.soft_bounce_limit) {
        Ok(true) => {
            stats.suppressed += 1;
            "suppressed_soft_limit"
        }
        Ok(false) => "soft_counted",
        Err(err) => {
            tracing::error!("{err}");
            "error"
        }
    }
}

/// Records what the report meant for the campaign's row (its bounce events) and appends it to
/// the bounce log, if any.
fn record_event(
    list: &Suppressions,
    campaign: &str,
    row: Option<u64>,
    r: &BouncedRecipient,
    outcome: &str,
    action: &str,
    opts: &SinkOptions,
) {
    let suppressed = matches!(action, "suppressed" | "suppressed_soft_limit");
    let event = BounceEvent {
        campaign: campaign.to_string(),
        row,
        address: r.address.clone(),
        outcome: outcome.to_string(),
        reason: r.reason.as_str().to_string(),
        status: r.status.clone(),
        hard: r.hard,
        suppressed,
    };
    if let Err(err) = list.record_event(&event) {
        tracing::error!("{err}");
    }
    if let Some(path) = &opts.bounce_log {
        append_bounce_log(path, &event, &r.diagnostic);
    }
}

/// The log line of one reported recipient.
fn log_recipient(
    rcpt: &Rcpt,
    c: &Classification,
    r: &BouncedRecipient,
    action: &str,
    address_source: &str,
) {
    log(json!({
        "rcpt": rcpt.address, "token": rcpt.token_str, "campaign": rcpt.campaign, "row": rcpt.row,
        "kind": c.kind.as_str(), "recipient": r.address, "action_reported": r.action,
        "status": r.status, "reason": r.reason.as_str(), "hard": r.hard,
        "diagnostic": r.diagnostic, "action": action,
        "address_source": address_source,
    }));
}

/// Appends one JSON line to the bounce log (`--bounce-log`): the delivery-log shape
/// (`outcome`, `row`, `address`, `status`, …) for what came back after the send.
fn append_bounce_log(path: &std::path::Path, e: &BounceEvent, diagnostic: &str) {
    use std::io::Write;
    let line = json!({
        "time": crate::clock::unix_now(), "outcome": e.outcome, "campaign": e.campaign,
        "row": e.row, "address": e.address, "reason": e.reason, "status": e.status,
        "hard": e.hard, "suppressed": e.suppressed, "diagnostic": diagnostic,
    });
    // One write per line on an O_APPEND file: lines from concurrent writers do not interleave.
    let r = crate::private::options()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(err) = r {
        tracing::error!("bounce log {}: {err}", path.display());
    }
}

fn log(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Reports are anyone's text: C1 controls too are escaped (see `terminal::json`).
    let _ = writeln!(out, "{}", crate::terminal::json(&v));
}

/// Writes the message to the quarantine directory; returns the file name.
fn quarantine(opts: &SinkOptions, data: &[u8]) -> Option<String> {
    let dir = opts.quarantine.as_ref()?;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}-{}-{}.eml",
        crate::clock::unix_now(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(&name);
    match crate::private::create(&path).and_then(|mut f| std::io::Write::write_all(&mut f, data)) {
        Ok(()) => Some(path.display().to_string()),
        Err(e) => {
            tracing::error!("cannot write {}: {e}", path.display());
            None
        }
    }
}
