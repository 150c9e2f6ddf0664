//! The whole pump, in process: CSV → render → dispatch → nodes → SMTP → outcome → delivery log,
//! against blast's embedded receiver scripted per recipient (`tempfail+`, `permfail+`,
//! `datatemp+`, `datafail+`, `drop+`, `dropfirst+`, `slow+`).
//!
//! Pattern: receivers run on a tokio runtime owned by the test (kept alive in a variable);
//! `send::run` builds its own runtime, so it is called from a plain thread, never from async
//! code. Every run is bounded: it happens on a thread of its own and the test fails if it has
//! not finished in time. Each test writes its campaign under a unique directory of
//! `target/test-tmp/`, removed when the test passes and kept (path printed) when it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blast::cli;
use blast::send::dispatch::End;
use blast::send::progress::Mode;
use blast::send::{self, Report, SendError, SendOptions};
use blast::smtp::receiver::{Receiver, ReceiverHandle, ReceiverOptions, Script};
use common::Blast;
use serde_json::Value;
use tokio::runtime::Runtime;

/// Environment variable holding the HMAC secret of every test campaign.
const SECRET_VAR: &str = "BLAST_SEND_TEST_SECRET";
const SECRET: &str = "send-tests-secret-0123456789abcdef";

/// Upper bound of an ordinary run (they take well under a second to a few seconds).
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Sets [`SECRET_VAR`]; the first thing every test does.
fn init() {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        // SAFETY: every test calls `init` first, before it starts any thread or runtime, and
        // `Once` makes concurrent callers wait until the variable is set; so no other thread of
        // this process reads the environment while it is modified.
        unsafe { std::env::set_var(SECRET_VAR, SECRET) };
    });
}

// ---------------------------------------------------------------------------------------------
// Receivers
// ---------------------------------------------------------------------------------------------

/// A runtime for receivers. Keep it alive for as long as its receivers must run.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("test-receiver")
        .build()
        .expect("receiver runtime")
}

fn receiver(rt: &Runtime, opts: ReceiverOptions) -> ReceiverHandle {
    rt.block_on(Receiver::start(opts)).expect("start receiver")
}

/// A receiver with scripted recipients (`tempfail+`, …) and nothing else.
fn plain(rt: &Runtime) -> ReceiverHandle {
    receiver(rt, ReceiverOptions::scripted())
}

// ---------------------------------------------------------------------------------------------
// Campaigns
// ---------------------------------------------------------------------------------------------

struct NodeCfg {
    name: String,
    port: u16,
    fallback: bool,
    max_connections: u32,
    messages_per_connection: u32,
}

fn node(name: &str, port: u16) -> NodeCfg {
    NodeCfg {
        name: name.to_string(),
        port,
        fallback: false,
        max_connections: 4,
        messages_per_connection: 1000,
    }
}

struct Cfg {
    attempts: u32,
    fallback_after: u32,
    rate: Option<&'static str>,
    queue_depth: u32,
    render_threads: u32,
    pipelining: bool,
    connect_timeout: &'static str,
    command_timeout: &'static str,
    data_timeout: &'static str,
    max_age: &'static str,
    nodes: Vec<NodeCfg>,
}

impl Cfg {
    fn new(nodes: Vec<NodeCfg>) -> Cfg {
        Cfg {
            attempts: 3,
            fallback_after: 2,
            rate: None,
            queue_depth: 1000,
            render_threads: 2,
            pipelining: true,
            connect_timeout: "500ms",
            command_timeout: "2s",
            data_timeout: "5s",
            max_age: "1h",
            nodes,
        }
    }
}

/// A campaign directory: campaign.toml, list.csv, and the outputs inside it.
struct Camp {
    dir: PathBuf,
    toml: PathBuf,
    log: PathBuf,
    /// Row numbers the source accepts (the log must have exactly these).
    valid: BTreeSet<u64>,
    /// Address (as written in the CSV) of each row, 1-based.
    addresses: BTreeMap<u64, String>,
}

impl Camp {
    /// Writes the campaign; `rows` are the address column, in order (row 1 first).
    /// `invalid` lists addresses the source must reject (bad syntax or duplicates).
    fn write(label: &str, cfg: &Cfg, rows: &[String], invalid: &[&str]) -> Camp {
        let dir = common::test_dir(label);
        let mut t = String::new();
        let _ = writeln!(
            t,
            r#"id = "send-test"

[from]
name = "Blast Tests"
address = "news@example.com"

[envelope]
verp = "b-{{token}}@bounce.example.com"
secret_env = "{SECRET_VAR}"

[message]
subject = "Hello {{{{ name }}}}"
text = "Hi {{{{ name }}}},\n.a line starting with a dot\nrow {{{{ row }}}}\n"

[recipients]
path = "list.csv"

[limits]
queue_depth = {}
render_threads = {}"#,
            cfg.queue_depth, cfg.render_threads
        );
        if let Some(rate) = cfg.rate {
            let _ = writeln!(t, "rate = \"{rate}\"");
        }
        let _ = writeln!(
            t,
            r#"
[retry]
attempts = {}
backoff = "50ms"
max_backoff = "200ms"
max_age = "{}"
fallback_after = {}
all_nodes_down = "30s"

[smtp]
helo = "feeder.example.com"
connect_timeout = "{}"
command_timeout = "{}"
data_timeout = "{}"
pipelining = {}

[output]
delivery_log = "delivery.jsonl"
rejects = "rejects.csv"
journal = "journal.sqlite""#,
            cfg.attempts,
            cfg.max_age,
            cfg.fallback_after,
            cfg.connect_timeout,
            cfg.command_timeout,
            cfg.data_timeout,
            cfg.pipelining
        );
        for n in &cfg.nodes {
            let _ = writeln!(
                t,
                r#"
[[node]]
name = "{}"
host = "127.0.0.1"
port = {}
tls = "none"
fallback = {}
max_connections = {}
messages_per_connection = {}"#,
                n.name, n.port, n.fallback, n.max_connections, n.messages_per_connection
            );
        }
        let toml = dir.join("campaign.toml");
        std::fs::write(&toml, t).expect("write campaign.toml");

        let mut csv = String::from("email,name\n");
        let mut valid = BTreeSet::new();
        let mut addresses = BTreeMap::new();
        for (i, addr) in rows.iter().enumerate() {
            let row = i as u64 + 1;
            let _ = writeln!(csv, "{addr},Name{row}");
            addresses.insert(row, addr.clone());
            if !invalid.contains(&addr.as_str()) {
                valid.insert(row);
            }
        }
        std::fs::write(dir.join("list.csv"), csv).expect("write list.csv");
        Camp {
            log: dir.join("delivery.jsonl"),
            dir,
            toml,
            valid,
            addresses,
        }
    }

    /// Starts `send::run` on a thread of its own.
    fn spawn(&self) -> Running {
        let path = self.toml.clone();
        let rejects = self.dir.join("rejects.csv");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("send-run".into())
            .spawn(move || {
                let (campaign, source, renderer) =
                    cli::prepare(&path, Some(rejects), cli::Purpose::Send)
                        .unwrap_or_else(|problems| panic!("campaign problems: {problems:#?}"));
                let opts = SendOptions {
                    dry_run: false,
                    limit: None,
                    mode: Mode::Quiet,
                    grace: Duration::from_secs(5),
                    shard: None,
                };
                let _ = tx.send(send::run(&campaign, source, renderer, &opts));
            })
            .expect("spawn send thread");
        Running {
            rx,
            started: Instant::now(),
        }
    }

    /// Runs the campaign to the end (bounded by [`RUN_LIMIT`]).
    fn run(&self) -> Report {
        self.spawn().wait(RUN_LIMIT)
    }

    /// The delivery log by row; fails on a duplicate row or a row the source should not have
    /// passed, and unless every valid row has exactly one line.
    fn log(&self) -> BTreeMap<u64, Value> {
        let lines = read_log(&self.log);
        let mut by_row = BTreeMap::new();
        for l in lines {
            let row = l["row"].as_u64().expect("row is a number");
            assert!(self.valid.contains(&row), "log line for row {row}: {l}");
            assert_eq!(
                l["address"].as_str(),
                Some(self.addresses[&row].to_ascii_lowercase().as_str()),
                "{l}"
            );
            if let Some(old) = by_row.insert(row, l) {
                panic!("row {row} logged twice: {old} and {}", by_row[&row]);
            }
        }
        let logged: BTreeSet<u64> = by_row.keys().copied().collect();
        let missing: Vec<_> = self.valid.difference(&logged).collect();
        assert!(missing.is_empty(), "rows without a log line: {missing:?}");
        by_row
    }

    /// The test passed: the directory goes (see the `Drop` impl).
    fn done(self) {}
}

impl Drop for Camp {
    /// Removes the campaign directory, unless the test is failing: then it stays for inspection.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("campaign files kept for inspection: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Running {
    rx: mpsc::Receiver<Result<Report, SendError>>,
    started: Instant,
}

impl Running {
    fn wait(self, limit: Duration) -> Report {
        match self.rx.recv_timeout(limit) {
            Ok(r) => r.expect("send::run failed"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("send::run did not finish within {limit:?} (hang?)")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the send thread panicked"),
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn read_log(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read delivery log {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

fn addrs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@example.com")).collect()
}

fn count(log: &BTreeMap<u64, Value>, f: impl Fn(&Value) -> bool) -> u64 {
    log.values().filter(|l| f(l)).count() as u64
}

fn outcome(l: &Value) -> &str {
    l["outcome"].as_str().expect("outcome")
}

fn node_report<'a>(r: &'a Report, name: &str) -> &'a send::NodeReport {
    r.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name} in the report"))
}

/// Invariants of every finished run.
fn check_report(r: &Report, camp: &Camp) {
    assert_eq!(r.end, End::Done, "{}", cli::summary(r, None));
    assert_eq!(r.signal, None);
    assert_eq!(r.render_errors, 0, "{}", cli::summary(r, None));
    assert_eq!(r.source.accepted, camp.valid.len() as u64);
    assert_eq!(r.rendered, camp.valid.len() as u64);
    assert_eq!(
        r.accepted + r.failed + r.expired,
        r.rendered,
        "{}",
        cli::summary(r, None)
    );
    assert_eq!(r.unfinished, 0, "{}", cli::summary(r, None));
    assert_eq!(r.log_lines, r.rendered, "{}", cli::summary(r, None));
    let per_node: u64 = r.nodes.iter().map(|n| n.accepted).sum();
    assert_eq!(per_node, r.accepted, "{}", cli::summary(r, None));
    // Every connection opened was closed or counted as lost: none is left open after a run.
    for n in &r.nodes {
        assert_eq!(
            n.connections, 0,
            "node {} still counts open connections",
            n.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Mixed outcomes on one node
// ---------------------------------------------------------------------------------------------

#[test]
fn mixed_outcomes_on_one_node() {
    init();
    let rt = runtime();
    let rx = plain(&rt);
    let mut rows = Vec::new();
    for i in 0..120 {
        let a = match i % 15 {
            3 => format!("permfail+{i}@example.com"),
            5 => format!("datafail+{i}@example.com"),
            7 => format!("tempfail+{i}@example.com"),
            11 => format!("datatemp+{i}@example.com"),
            _ => format!("user{i}@Example.COM"),
        };
        rows.push(a);
    }
    // Rejected by the source: bad syntax, and a duplicate (case-insensitive).
    rows.insert(10, "not-an-address".into());
    rows.insert(20, "USER0@example.com".into());
    let camp = Camp::write(
        "mixed",
        &Cfg::new(vec![node("n1", rx.addr().port())]),
        &rows,
        &["not-an-address", "USER0@example.com"],
    );
    let report = camp.run();
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.source.rejected, 2);
    assert_eq!(report.source.rows, rows.len() as u64);

    let log = camp.log();
    let mut want = BTreeMap::<&str, u64>::new();
    for (row, l) in &log {
        let addr = &camp.addresses[row];
        let kind = addr.split('+').next().filter(|_| addr.contains('+'));
        assert_eq!(l["node"], "n1", "{l}");
        assert!(
            l["message_id"].as_str().is_some_and(|m| m.contains('@')),
            "{l}"
        );
        assert_eq!(l.get("possibly_duplicated"), None, "{l}");
        match kind {
            None => {
                *want.entry("accepted").or_default() += 1;
                assert_eq!(outcome(l), "accepted", "{l}");
                assert_eq!(l["code"], 250, "{l}");
                assert_eq!(l["stage"], "body", "{l}");
                assert_eq!(l["enhanced"], "2.0.0", "{l}");
                assert!(
                    l["queue_id"]
                        .as_str()
                        .is_some_and(|q| q.len() == 16 && q.bytes().all(|b| b.is_ascii_hexdigit())),
                    "{l}"
                );
                assert_eq!(l["attempts"], 1, "{l}");
            }
            Some("permfail") => {
                *want.entry("failed").or_default() += 1;
                assert_eq!(outcome(l), "failed", "{l}");
                assert_eq!(l["stage"], "rcpt", "{l}");
                assert_eq!(l["code"], 550, "{l}");
                assert_eq!(l["enhanced"], "5.1.1", "{l}");
                assert_eq!(l["attempts"], 1, "never retried: {l}");
                assert_eq!(l.get("queue_id"), None, "{l}");
            }
            Some("datafail") => {
                *want.entry("failed").or_default() += 1;
                assert_eq!(outcome(l), "failed", "{l}");
                assert_eq!(l["stage"], "body", "{l}");
                assert_eq!(l["code"], 554, "{l}");
                assert_eq!(l["enhanced"], "5.6.0", "{l}");
                assert_eq!(l["attempts"], 1, "never retried: {l}");
                assert_eq!(l.get("queue_id"), None, "{l}");
            }
            Some(k @ ("tempfail" | "datatemp")) => {
                *want.entry("expired").or_default() += 1;
                assert_eq!(outcome(l), "expired", "{l}");
                assert_eq!(l["attempts"], 3, "exactly `attempts` attempts: {l}");
                assert_eq!(l["code"], 451, "{l}");
                assert_eq!(l["enhanced"], "4.3.0", "{l}");
                let stage = if k == "tempfail" { "rcpt" } else { "body" };
                assert_eq!(l["stage"], stage, "{l}");
                assert_eq!(l.get("queue_id"), None, "{l}");
            }
            Some(other) => unreachable!("{other}"),
        }
    }
    assert_eq!(report.accepted, want["accepted"]);
    assert_eq!(report.failed, want["failed"]);
    assert_eq!(report.expired, want["expired"]);
    assert_eq!(report.failed, 16);
    assert_eq!(report.expired, 16);
    // Two retries for each expired recipient, nothing else deferred.
    assert_eq!(report.deferrals, 3 * report.expired);
    assert_eq!(report.requeues, 0);
    assert_eq!(report.possibly_duplicated, 0);

    let stats = rx.stats();
    assert_eq!(stats.accepted, report.accepted);
    assert_eq!(cli::exit_code(&report), cli::exit::SOME_FAILED);
    // Rejected rows went to the rejects file.
    let rejects = std::fs::read_to_string(camp.dir.join("rejects.csv")).expect("rejects file");
    assert!(rejects.contains("not-an-address"), "{rejects}");
    assert!(rejects.contains("USER0@example.com"), "{rejects}");
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 2. PIPELINING on and off
// ---------------------------------------------------------------------------------------------

#[test]
fn pipelining_on_and_off_deliver_the_same() {
    init();
    let rt = runtime();
    let mut results = Vec::new();
    for pipelining in [true, false] {
        let rx = receiver(
            &rt,
            ReceiverOptions {
                pipelining,
                keep_messages: 1000,
                ..ReceiverOptions::scripted()
            },
        );
        let mut rows = addrs("user", 300);
        rows[7] = "permfail+7@example.com".into();
        rows[100] = "datafail+100@example.com".into();
        let camp = Camp::write(
            &format!("pipelining-{pipelining}"),
            &Cfg::new(vec![node("n1", rx.addr().port())]),
            &rows,
            &[],
        );
        let report = camp.run();
        check_report(&report, &camp);
        assert_eq!(report.accepted, 298, "pipelining {pipelining}");
        assert_eq!(report.failed, 2, "pipelining {pipelining}");
        assert_eq!(rx.stats().accepted, 298, "pipelining {pipelining}");
        let log = camp.log();
        assert_eq!(log[&8]["stage"], "rcpt");
        assert_eq!(log[&101]["stage"], "body");
        // What arrived is what was rendered for that row: one message per accepted recipient,
        // VERP sender, dot-stuffing undone, the Message-ID the log names.
        let kept = rx.messages();
        assert_eq!(kept.len(), 298);
        let mut seen = BTreeSet::new();
        for m in &kept {
            let row: u64 = m.rcpt["user".len()..m.rcpt.find('@').unwrap()]
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("unexpected recipient {}", m.rcpt))
                + 1;
            assert!(seen.insert(row), "row {row} received twice");
            let l = &log[&row];
            assert_eq!(outcome(l), "accepted", "{l}");
            assert!(
                m.mail_from.starts_with("b-") && m.mail_from.ends_with("@bounce.example.com"),
                "{}",
                m.mail_from
            );
            let text = String::from_utf8_lossy(&m.data);
            assert!(text.contains(&format!("<{}>", l["message_id"].as_str().unwrap())));
            assert!(
                text.contains("\r\n.a line starting with a dot\r\n"),
                "{text}"
            );
            assert!(text.contains(&format!("row {row}\r\n")), "{text}");
        }
        let outcomes: Vec<(u64, String)> = log
            .iter()
            .map(|(r, l)| (*r, outcome(l).to_string()))
            .collect();
        results.push(outcomes);
        camp.done();
    }
    assert_eq!(results[0], results[1]);
}

// ---------------------------------------------------------------------------------------------
// 3. Fallback
// ---------------------------------------------------------------------------------------------

#[test]
fn deferring_primary_hands_over_to_fallback() {
    init();
    let rt = runtime();
    let primary = receiver(
        &rt,
        ReceiverOptions {
            script: Some(Script {
                reply_all: Some((451, "4.3.0 spool full".into())),
                ..Script::default()
            }),
            ..Default::default()
        },
    );
    let fallback = plain(&rt);
    let mut fb = node("fallback", fallback.addr().port());
    fb.fallback = true;
    let cfg = Cfg {
        attempts: 5,
        fallback_after: 2,
        ..Cfg::new(vec![node("primary", primary.addr().port()), fb])
    };
    // Few rows: 2 deferrals each stay under the primary's circuit breaker (20 in a row), so
    // every row really goes through the fallback_after path.
    let rows = addrs("user", 8);
    let camp = Camp::write("fallback", &cfg, &rows, &[]);
    let report = camp.run();
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.accepted, 8);
    assert_eq!(cli::exit_code(&report), cli::exit::OK);
    let log = camp.log();
    for l in log.values() {
        assert_eq!(outcome(l), "accepted", "{l}");
        assert_eq!(l["node"], "fallback", "{l}");
        // fallback_after deferrals on the primary, then one attempt on the fallback.
        assert_eq!(l["attempts"], 3, "{l}");
    }
    assert_eq!(report.deferrals, 8 * 2);
    assert_eq!(node_report(&report, "primary").deferred, 16);
    assert_eq!(node_report(&report, "primary").accepted, 0);
    assert_eq!(node_report(&report, "fallback").accepted, 8);
    assert_eq!(primary.stats().accepted, 0);
    assert_eq!(primary.stats().rejected, 16);
    assert_eq!(fallback.stats().accepted, 8);
    camp.done();
}

#[test]
fn fallback_takes_everything_when_the_primary_trips() {
    init();
    let rt = runtime();
    let primary = receiver(
        &rt,
        ReceiverOptions {
            script: Some(Script {
                reply_all: Some((451, "4.3.0 spool full".into())),
                ..Script::default()
            }),
            ..Default::default()
        },
    );
    let fallback = plain(&rt);
    let mut fb = node("fallback", fallback.addr().port());
    fb.fallback = true;
    let cfg = Cfg {
        attempts: 5,
        ..Cfg::new(vec![node("primary", primary.addr().port()), fb])
    };
    let rows = addrs("user", 400);
    let camp = Camp::write("fallback-trip", &cfg, &rows, &[]);
    let report = camp.run();
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.accepted, 400);
    let log = camp.log();
    for l in log.values() {
        assert_eq!(l["node"], "fallback", "{l}");
        assert!(
            l["attempts"].as_u64().is_some_and(|a| (1..=3).contains(&a)),
            "{l}"
        );
    }
    assert_eq!(fallback.stats().accepted, 400);
    assert_eq!(primary.stats().accepted, 0);
    assert!(report.deferrals >= 20, "{}", cli::summary(&report, None));
    // The trip is in the primary's health history, with the deferral as the reason.
    let primary_health = &node_report(&report, "primary").health.events;
    assert!(
        primary_health
            .first()
            .is_some_and(|e| !e.up && e.reason.contains("deferrals (4xx) in a row")),
        "{}",
        cli::summary(&report, None)
    );
    assert!(cli::summary(&report, None).contains("  health   "));
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 4. Dead node
// ---------------------------------------------------------------------------------------------

#[test]
fn dead_node_is_routed_around() {
    init();
    let rt = runtime();
    let live = plain(&rt);
    let dead_port = common::free_port();
    let camp = Camp::write(
        "dead-node",
        &Cfg::new(vec![
            node("dead", dead_port),
            node("live", live.addr().port()),
        ]),
        &addrs("user", 500),
        &[],
    );
    let report = camp.run();
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.accepted, 500);
    assert!(node_report(&report, "dead").errors > 0);
    assert_eq!(node_report(&report, "dead").accepted, 0);
    assert_eq!(node_report(&report, "live").accepted, 500);
    let log = camp.log();
    assert!(
        log.values()
            .all(|l| l["node"] == "live" && l["attempts"] == 1)
    );
    assert_eq!(live.stats().accepted, 500);
    assert!(
        report.duration < Duration::from_secs(20),
        "{}",
        cli::summary(&report, None)
    );
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 5. Tarpit
// ---------------------------------------------------------------------------------------------

#[test]
fn tarpit_node_costs_only_connect_timeouts() {
    init();
    let rt = runtime();
    let tarpit = receiver(
        &rt,
        ReceiverOptions {
            script: Some(Script {
                tarpit: true,
                ..Script::default()
            }),
            ..Default::default()
        },
    );
    let live = plain(&rt);
    let camp = Camp::write(
        "tarpit",
        &Cfg::new(vec![
            node("tarpit", tarpit.addr().port()),
            node("live", live.addr().port()),
        ]),
        &addrs("user", 500),
        &[],
    );
    let running = camp.spawn();
    let report = running.wait(RUN_LIMIT);
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.accepted, 500);
    assert!(node_report(&report, "tarpit").errors > 0);
    assert_eq!(node_report(&report, "live").accepted, 500);
    assert!(tarpit.stats().connections > 0);
    assert_eq!(tarpit.stats().transactions, 0);
    assert!(
        report.duration < Duration::from_secs(30),
        "took {:?}",
        report.duration
    );
    camp.log();
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 6. A node dies mid-campaign
// ---------------------------------------------------------------------------------------------

/// Waits (bounded) until receiver `rx` accepted more than `n` messages, then kills it the hard
/// way by shutting down its runtime `rt` (sessions and listener gone at once; its counters stay
/// readable).
fn kill_after(rt: Runtime, rx: &ReceiverHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.stats().accepted <= n {
        assert!(Instant::now() < deadline, "the node never got {n} messages");
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn node_dying_mid_campaign_loses_nothing() {
    init();
    // Each receiver on a runtime of its own: shutting that runtime down kills the node the hard
    // way (sessions and listener gone at once), while its counters stay readable.
    let rt_a = runtime();
    let rt_b = runtime();
    let a = plain(&rt_a);
    let b = plain(&rt_b);
    const ROWS: usize = 3000;
    let cfg = Cfg {
        rate: Some("1500/s"),
        ..Cfg::new(vec![node("a", a.addr().port()), node("b", b.addr().port())])
    };
    let camp = Camp::write("node-dies", &cfg, &addrs("user", ROWS), &[]);
    let running = camp.spawn();
    kill_after(rt_a, &a, 300);
    let killed_at = running.elapsed();
    let a_final = a.stats().accepted;
    let report = running.wait(RUN_LIMIT);
    eprintln!(
        "node a killed after {killed_at:?}\n{}",
        cli::summary(&report, None)
    );
    check_report(&report, &camp);
    assert_eq!(report.accepted, ROWS as u64);
    assert!(
        a_final < ROWS as u64 / 2,
        "node a died too late to matter: {a_final}"
    );
    // Node a's history: down (lost connections or refused connects) and never up again.
    let a_health = &node_report(&report, "a").health.events;
    assert!(
        a_health.last().is_some_and(|e| !e.up),
        "{}",
        cli::summary(&report, None)
    );
    assert!(node_report(&report, "b").health.events.is_empty());

    let log = camp.log();
    assert!(log.values().all(|l| outcome(l) == "accepted"));
    let logged_a = count(&log, |l| l["node"] == "a");
    let logged_b = count(&log, |l| l["node"] == "b");
    let dup = count(&log, |l| l["possibly_duplicated"] == true);
    assert_eq!(dup, report.possibly_duplicated);
    let b_final = b.stats().accepted;
    // b never died: everything it accepted was acknowledged and logged there.
    assert_eq!(logged_b, b_final);
    // a may have accepted messages whose reply never arrived; those were sent again and are
    // flagged.
    assert!(logged_a <= a_final);
    let sum = a_final + b_final;
    assert!(sum >= ROWS as u64, "receivers got {sum} of {ROWS}");
    assert!(
        sum - ROWS as u64 <= report.possibly_duplicated,
        "{} duplicates but only {} flagged",
        sum - ROWS as u64,
        report.possibly_duplicated
    );
    assert!(node_report(&report, "a").errors > 0);
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 7. Connection dropped mid-body
// ---------------------------------------------------------------------------------------------

#[test]
fn dropped_connections_are_resent_then_expire() {
    init();
    let rt = runtime();
    let rx = plain(&rt);
    let mut rows = addrs("user", 60);
    rows[9] = "drop+9@example.com".into();
    rows[40] = "drop+40@example.com".into();
    let cfg = Cfg {
        attempts: 2,
        ..Cfg::new(vec![node("n1", rx.addr().port())])
    };
    let camp = Camp::write("drop", &cfg, &rows, &[]);
    let report = camp.run();
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.accepted, 58);
    assert_eq!(report.expired, 2);
    assert_eq!(report.failed, 0);
    let log = camp.log();
    for (row, l) in &log {
        if *row == 10 || *row == 41 {
            assert_eq!(outcome(l), "expired", "{l}");
            // A lost connection is not charged as an attempt, but every 5th one is: 2 charged
            // attempts took 10 sends, and the log counts every send.
            assert_eq!(l["attempts"], 10, "{l}");
            assert_eq!(l.get("queue_id"), None, "{l}");
        } else {
            assert_eq!(outcome(l), "accepted", "{l}");
            assert_eq!(l["attempts"], 1, "{l}");
            assert_eq!(l.get("possibly_duplicated"), None, "{l}");
        }
    }
    // 5 requeues per attempt, 2 attempts, 2 rows.
    assert_eq!(
        report.requeues + report.deferrals,
        2 * 2 * 5,
        "{}",
        cli::summary(&report, None)
    );
    assert_eq!(rx.stats().accepted, 58);
    assert_eq!(cli::exit_code(&report), cli::exit::SOME_FAILED);
    camp.done();
}

/// Issue 13: a message whose connection was lost after the final dot (possibly delivered) and
/// that was sent again said `attempts: 1` in the delivery log and the journal.
#[test]
fn a_resend_after_a_lost_connection_counts_both_sends() {
    init();
    let rt = runtime();
    let rx = plain(&rt);
    let mut rows = addrs("user", 10);
    // The receiver closes without a reply once this one's final dot arrives, the first time.
    rows[3] = "dropfirst+3@example.com".into();
    let camp = Camp::write(
        "dropfirst",
        &Cfg::new(vec![node("n1", rx.addr().port())]),
        &rows,
        &[],
    );
    // The binary, for the journal too.
    let summary = camp.dir.join("summary.json");
    let o = Blast::new()
        .args(["send", "--quiet"])
        .arg(&camp.toml)
        .arg("--summary-json")
        .arg(&summary)
        .env(SECRET_VAR, SECRET)
        .timeout(RUN_LIMIT)
        .output();
    assert_eq!(o.code(), 0, "{o:?}");
    let summary: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(summary["outcomes"]["accepted"], 10, "{summary}");
    assert_eq!(summary["retries"]["requeues"], 1, "{summary}");
    assert_eq!(summary["retries"]["possibly_duplicated"], 1, "{summary}");
    for (row, l) in &camp.log() {
        assert_eq!(outcome(l), "accepted", "{l}");
        if *row == 4 {
            assert_eq!(l["attempts"], 2, "sent twice: {l}");
            assert_eq!(l["possibly_duplicated"], true, "{l}");
        } else {
            assert_eq!(l["attempts"], 1, "{l}");
        }
    }
    let journal = rusqlite::Connection::open(camp.dir.join("journal.sqlite")).unwrap();
    let attempts: i64 = journal
        .query_row("SELECT attempts FROM outcomes WHERE row = 4", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(attempts, 2, "the journal's outcome of row 4");
    assert_eq!(rx.stats().accepted, 10);
    camp.done();
}

/// Issue 13: a relay trickling its replies a byte at a time took 100 s over one message
/// although `max_age` was 30 s. The recipient's age bounds its transaction: here each reply
/// stays within `command_timeout` (MAIL, RCPT and DATA's replies take 3.25 s at 50 ms a byte,
/// the final one 2.1 s more), but `max_age = "2s"` cuts the transaction at 2 s: expired, in
/// about 2 s, not accepted after 5.
#[test]
fn max_age_bounds_a_transaction_in_flight() {
    init();
    let rt = runtime();
    let rx = receiver(
        &rt,
        ReceiverOptions {
            script: Some(Script {
                trickle: Some(Duration::from_millis(50)),
                ..Script::default()
            }),
            ..Default::default()
        },
    );
    let cfg = Cfg {
        command_timeout: "2s",
        data_timeout: "3s",
        max_age: "2s",
        ..Cfg::new(vec![node("trickle", rx.addr().port())])
    };
    let camp = Camp::write("trickle", &cfg, &addrs("user", 3), &[]);
    let running = camp.spawn();
    let report = running.wait(RUN_LIMIT);
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.expired, 3, "{}", cli::summary(&report, None));
    assert!(
        report.duration < Duration::from_secs(4),
        "{}",
        cli::summary(&report, None)
    );
    for l in camp.log().values() {
        assert_eq!(outcome(l), "expired", "{l}");
        assert_eq!(l["attempts"], 1, "{l}");
        let text = l["text"].as_str().unwrap_or_default();
        assert!(text.contains("deadline"), "{l}");
    }
    assert_eq!(rx.stats().accepted, 0);
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 8. Global rate limit
// ---------------------------------------------------------------------------------------------

#[test]
fn global_rate_limit_holds() {
    init();
    let rt = runtime();
    let rx = plain(&rt);
    let cfg = Cfg {
        rate: Some("200/s"),
        ..Cfg::new(vec![node("n1", rx.addr().port())])
    };
    let camp = Camp::write("rate", &cfg, &addrs("user", 300), &[]);
    let running = camp.spawn();
    let report = running.wait(RUN_LIMIT);
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.accepted, 300);
    // 300 messages at 200/s with a burst of 10: at least 1.45 s; allow for clock slop.
    assert!(
        report.duration >= Duration::from_millis(1200),
        "300 messages at 200/s took only {:?}",
        report.duration
    );
    assert!(report.duration < Duration::from_secs(30));
    camp.log();
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 9. messages_per_connection
// ---------------------------------------------------------------------------------------------

#[test]
fn connections_are_recycled_after_messages_per_connection() {
    init();
    let rt = runtime();
    let rx = plain(&rt);
    let mut n = node("n1", rx.addr().port());
    n.messages_per_connection = 10;
    let camp = Camp::write(
        "per-connection",
        &Cfg::new(vec![n]),
        &addrs("user", 100),
        &[],
    );
    let report = camp.run();
    check_report(&report, &camp);
    assert_eq!(report.accepted, 100);
    let stats = rx.stats();
    assert_eq!(stats.accepted, 100);
    assert_eq!(stats.transactions, 100);
    assert!(
        stats.connections >= 10,
        "{} connections for 100 messages at 10 per connection",
        stats.connections
    );
    camp.log();
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 10. SIGTERM (the binary)
// ---------------------------------------------------------------------------------------------

struct Exit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    after_signal: Duration,
}

/// Runs `blast send CAMPAIGN --quiet --grace GRACE`, waits until `ready` says so (bounded),
/// sends SIGTERM and waits (bounded) for the exit.
fn send_and_terminate(
    camp: &Camp,
    grace: &str,
    ready: impl Fn() -> bool,
    exit_limit: Duration,
) -> Exit {
    let mut child = Blast::new()
        .arg("send")
        .arg(&camp.toml)
        .args(["--quiet", "--grace", grace])
        .env(SECRET_VAR, SECRET)
        .env("RUST_LOG", "warn,blast::send=debug")
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            panic!("blast send never got going");
        }
        if child.try_wait().is_some() {
            panic!(
                "blast exited early: {:?}",
                child.wait_bounded(Duration::from_secs(30))
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.signal("TERM");
    let signalled = Instant::now();
    // On a timeout: what it logged says which stage of the stop it was stuck in.
    let out = child.wait_bounded(exit_limit);
    Exit {
        code: out.status().code(),
        stdout: out.stdout(),
        stderr: out.stderr(),
        after_signal: signalled.elapsed(),
    }
}

/// The numbers on the summary line starting with `label`.
fn summary_numbers(stdout: &str, label: &str) -> Vec<u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in the summary:\n{stdout}"));
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect()
}

#[test]
fn sigterm_stops_cleanly_with_a_full_log() {
    init();
    let rt = runtime();
    let rx = receiver(
        &rt,
        ReceiverOptions {
            script: Some(Script {
                slow_delay: Duration::from_millis(300),
                ..Script::default()
            }),
            ..Default::default()
        },
    );
    const ROWS: usize = 1000;
    let mut n = node("slow", rx.addr().port());
    n.max_connections = 2;
    let camp = Camp::write(
        "sigterm",
        &Cfg::new(vec![n]),
        &addrs("slow+user", ROWS),
        &[],
    );
    let started = Instant::now();
    let exit = send_and_terminate(
        &camp,
        "5s",
        || rx.stats().accepted >= 2 && started.elapsed() >= Duration::from_secs(1),
        Duration::from_secs(20),
    );
    eprintln!("{}\n{}", exit.stdout, exit.stderr);
    assert_eq!(exit.code, Some(143), "{}\n{}", exit.stdout, exit.stderr);
    assert!(
        exit.stdout.contains("terminated (SIGTERM), exit code 143"),
        "{}",
        exit.stdout
    );
    let rows = summary_numbers(&exit.stdout, "rows");
    let outcomes = summary_numbers(&exit.stdout, "outcomes");
    let (accepted, failed, expired, unfinished) =
        (outcomes[0], outcomes[1], outcomes[2], outcomes[3]);
    let lines = summary_numbers(&exit.stdout, "log")[0];
    assert_eq!(lines, accepted + failed + expired);
    assert!(accepted >= 2);
    assert_eq!(failed + expired, 0);
    assert!(
        accepted < ROWS as u64 / 4,
        "{accepted} of {ROWS} sent: the stop was not a stop"
    );
    // Everything rendered is either final or reported unfinished.
    let rendered = rows[2];
    assert_eq!(rendered, accepted + unfinished, "{}", exit.stdout);

    let log = read_log(&camp.log);
    assert_eq!(log.len() as u64, lines);
    let unique: BTreeSet<u64> = log.iter().map(|l| l["row"].as_u64().unwrap()).collect();
    assert_eq!(unique.len(), log.len(), "a row logged twice");
    assert!(log.iter().all(|l| outcome(l) == "accepted"));
    // Running transactions were allowed to finish: nothing the receiver took is unlogged.
    assert_eq!(rx.stats().accepted, accepted);
    camp.done();
}

#[test]
fn sigterm_grace_period_is_enforced() {
    init();
    let rt = runtime();
    // Every message hangs 30 s before its final reply; the grace period is 1 s.
    let rx = receiver(
        &rt,
        ReceiverOptions {
            script: Some(Script {
                slow_delay: Duration::from_secs(30),
                ..Script::default()
            }),
            ..Default::default()
        },
    );
    let mut n = node("stuck", rx.addr().port());
    n.max_connections = 2;
    let cfg = Cfg {
        data_timeout: "60s",
        ..Cfg::new(vec![n])
    };
    let camp = Camp::write("sigterm-grace", &cfg, &addrs("slow+user", 200), &[]);
    let exit = send_and_terminate(
        &camp,
        "1s",
        || rx.stats().transactions >= 2,
        Duration::from_secs(25),
    );
    eprintln!("{}\n{}", exit.stdout, exit.stderr);
    assert_eq!(exit.code, Some(143), "{}\n{}", exit.stdout, exit.stderr);
    assert!(
        exit.after_signal < Duration::from_secs(10),
        "exited {:?} after SIGTERM with a 1 s grace period",
        exit.after_signal
    );
    let rows = summary_numbers(&exit.stdout, "rows");
    let outcomes = summary_numbers(&exit.stdout, "outcomes");
    assert_eq!(&outcomes[..3], &[0, 0, 0], "{}", exit.stdout);
    assert_eq!(
        outcomes[3], rows[2],
        "unfinished == rendered: {}",
        exit.stdout
    );
    assert_eq!(summary_numbers(&exit.stdout, "log")[0], 0);
    assert!(read_log(&camp.log).is_empty());
    camp.done();
}

/// A node whose every connection fails at once (20 of them) is probed again 1 s, 2 s, 4 s …
/// after it went down: the other connections' failures do not push the probe back (they could,
/// up to 60 s, so a relay restarted within seconds got nothing for the rest of the run).
#[test]
fn node_back_after_a_short_outage_is_probed_again_soon() {
    init();
    let rt_a = runtime();
    let rt_b = runtime();
    let a = plain(&rt_a);
    let b = plain(&rt_b);
    let port = a.addr().port();
    const ROWS: usize = 9000;
    let mut na = node("a", port);
    na.max_connections = 20;
    let cfg = Cfg {
        rate: Some("1500/s"),
        ..Cfg::new(vec![na, node("b", b.addr().port())])
    };
    let camp = Camp::write("node-back", &cfg, &addrs("user", ROWS), &[]);
    let running = camp.spawn();
    kill_after(rt_a, &a, 300);
    let killed_at = running.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rt_a2 = runtime();
    let a2 = receiver(
        &rt_a2,
        ReceiverOptions {
            listen: ([127, 0, 0, 1], port).into(),
            ..ReceiverOptions::scripted()
        },
    );
    let report = running.wait(RUN_LIMIT);
    eprintln!(
        "node a killed after {killed_at:?}, back 0.5 s later\n{}",
        cli::summary(&report, None)
    );
    check_report(&report, &camp);
    assert_eq!(report.accepted, ROWS as u64);
    // One outage, one down and one up: the connections that died with the node are not
    // reused once it is back (they used to trip it again, once per second, three times).
    let events = &node_report(&report, "a").health.events;
    let ups: Vec<bool> = events.iter().map(|e| e.up).collect();
    assert_eq!(
        ups,
        [false, true],
        "node a should go down once, then up:\n{}",
        cli::summary(&report, None)
    );
    // Back within the first probes (1 s, then 2 s later), with seconds of the run left.
    assert!(
        a2.stats().accepted > 500,
        "node a took {} after it came back:\n{}",
        a2.stats().accepted,
        cli::summary(&report, None)
    );
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 11. Backpressure
// ---------------------------------------------------------------------------------------------

#[test]
fn tiny_queue_and_one_slow_connection_do_not_deadlock() {
    init();
    let rt = runtime();
    let rx = receiver(
        &rt,
        ReceiverOptions {
            script: Some(Script {
                slow_delay: Duration::from_millis(20),
                ..Script::default()
            }),
            pipelining: false,
            ..Default::default()
        },
    );
    let mut n = node("single", rx.addr().port());
    n.max_connections = 1;
    n.messages_per_connection = 50;
    let cfg = Cfg {
        queue_depth: 10,
        render_threads: 1,
        attempts: 2,
        ..Cfg::new(vec![n])
    };
    const ROWS: usize = 3000;
    let rows: Vec<String> = (0..ROWS)
        .map(|i| match i % 100 {
            0 => format!("slow+{i}@example.com"),
            1 => format!("tempfail+{i}@example.com"),
            2 => format!("permfail+{i}@example.com"),
            _ => format!("user{i}@example.com"),
        })
        .collect();
    let camp = Camp::write("backpressure", &cfg, &rows, &[]);
    let report = camp.run();
    eprintln!("{}", cli::summary(&report, None));
    check_report(&report, &camp);
    assert_eq!(report.accepted, ROWS as u64 - 60);
    assert_eq!(report.expired, 30);
    assert_eq!(report.failed, 30);
    assert_eq!(rx.stats().accepted, report.accepted);
    let log = camp.log();
    assert_eq!(count(&log, |l| outcome(l) == "accepted"), report.accepted);
    camp.done();
}

// ---------------------------------------------------------------------------------------------
// 12. Blocking I/O stays off the network threads
// ---------------------------------------------------------------------------------------------

/// A 5xx "user unknown" is written to the suppression list by a thread of its own: while
/// another process holds the list's write lock (a `blast sink` in a long transaction, a slow
/// disk), the other connections' transactions go on. (They used to stall: the write ran
/// under a lock on the tokio worker, which waited out SQLite's busy timeout.)
#[test]
fn a_slow_suppression_write_does_not_delay_other_transactions() {
    init();
    let rt = runtime();
    let rx = plain(&rt);
    const ROWS: usize = 3000;
    let rows: Vec<String> = (0..ROWS)
        .map(|i| {
            if i % 150 == 7 {
                format!("permfail+{i}@example.com")
            } else {
                format!("user{i}@example.com")
            }
        })
        .collect();
    let dead = rows.iter().filter(|a| a.starts_with("permfail+")).count() as u64;
    let camp = Camp::write(
        "slow-suppression",
        &Cfg::new(vec![node("n1", rx.addr().port())]),
        &rows,
        &[],
    );
    // Create the list, then hold its write lock from another connection.
    let list_path = camp.dir.join("campaign.suppression.sqlite");
    drop(blast::bounce::suppression::Suppressions::open(&list_path).unwrap());
    let holder = rusqlite::Connection::open(&list_path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_at = Instant::now();

    let running = camp.spawn();
    // Every other recipient is accepted while the list is still locked.
    let want = ROWS as u64 - dead;
    while rx.stats().accepted < want && locked_at.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let accepted_while_locked = rx.stats().accepted;
    let waited = locked_at.elapsed();
    holder.execute_batch("COMMIT").unwrap();
    let report = running.wait(RUN_LIMIT);
    eprintln!("{}", cli::summary(&report, None));
    assert_eq!(
        accepted_while_locked, want,
        "only {accepted_while_locked} of {want} accepted in {waited:?} while the suppression list was locked"
    );
    check_report(&report, &camp);
    assert_eq!(report.failed, dead);
    // The dead addresses were written once the lock was gone.
    let list = blast::bounce::suppression::Suppressions::open(&list_path).unwrap();
    for a in rows.iter().filter(|a| a.starts_with("permfail+")) {
        assert!(list.contains(a).unwrap(), "{a} is not suppressed");
    }
    camp.done();
}

/// Without a terminal (cron) the progress lines count the whole run: a stop by Ctrl-C is said
/// at once with what is in flight and the grace period, and the resume's lines count the rows
/// of the first session as done, against the real number of rows to send (rejected rows are
/// not in it: "598/598", not "1/9"-style estimates). The summary names the rejects file.
#[test]
fn progress_lines_are_run_wide_and_say_the_stop() {
    init();
    let rt = runtime();
    let rx = plain(&rt);
    let cfg = Cfg {
        rate: Some("100/s"),
        ..Cfg::new(vec![node("n", rx.addr().port())])
    };
    let mut rows = addrs("user", 598);
    rows.insert(10, "not-an-address".to_string());
    rows.insert(20, "user5@example.com".to_string());
    let camp = Camp::write(
        "progress-lines",
        &cfg,
        &rows,
        &["not-an-address", "user5@example.com"],
    );
    let child = Blast::new()
        .arg("send")
        .arg(&camp.toml)
        .args(["--grace", "5s"])
        .env(SECRET_VAR, SECRET)
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.stats().accepted < 100 {
        assert!(Instant::now() < deadline, "blast send never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.signal("INT");
    let first = child.wait_bounded(Duration::from_secs(30));
    assert_eq!(first.status().code(), Some(130), "{}", first.stderr());
    let stderr = first.stderr();
    let stop = stderr
        .lines()
        .find(|l| l.contains("stopping:"))
        .unwrap_or_else(|| panic!("no stop line:\n{stderr}"));
    assert!(
        stop.contains("in flight, grace 5s (Ctrl-C again to cut them off)"),
        "{stop}"
    );
    assert!(stop.contains("/598 done"), "{stop}");

    let second = Blast::new()
        .arg("send")
        .arg(&camp.toml)
        .env(SECRET_VAR, SECRET)
        .output();
    assert_eq!(second.code(), 0, "{}", second.stderr());
    let stderr = second.stderr();
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with("blast: ") && l.contains(" done ("))
        .unwrap_or_else(|| panic!("no progress line:\n{stderr}"));
    assert!(last.starts_with("blast: 598/598 done"), "{last}");
    let rejects = camp.dir.join("rejects.csv");
    assert!(
        second.stdout().contains(&format!(
            "2 rejected (rows and reasons in {})",
            rejects.display()
        )),
        "{}",
        second.stdout()
    );
    camp.done();
}
