//! The journal, runs, resume, the campaign lock, `blast status` and `not_after`, through the
//! real `blast` binary (exit codes, signals, SIGKILL) against blast's in-process receiver,
//! which this test process runs on its own tokio runtime and which keeps every message it
//! accepted (so duplicates can be counted per recipient).
//!
//! Every wait is bounded and event-driven (the receiver's count, the process's exit); no test
//! asserts on timing. Directories live under `target/test-tmp/`, removed when a test passes.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blast::journal::Journal;
use blast::smtp::receiver::{Receiver, ReceiverHandle, ReceiverOptions, Script};
use common::{Blast, BlastChild, BlastOutput};
use tokio::runtime::Runtime;

const SECRET_VAR: &str = "BLAST_JOURNAL_TEST_SECRET";
const SECRET: &str = "journal-tests-secret-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(120);

struct Setup {
    rt: Runtime,
    rx: ReceiverHandle,
    dir: PathBuf,
    toml: PathBuf,
}

/// Campaign knobs.
struct Opts {
    rows: u64,
    /// Global rate, to keep a run going long enough to be interrupted.
    rate: Option<&'static str>,
    subject: &'static str,
    not_after: Option<String>,
    /// Address of a row.
    address: fn(u64) -> String,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            rows: 200,
            rate: None,
            subject: "Hello {{ name }}",
            not_after: None,
            address: |row| format!("u{row}@d{}.test", row % 5),
        }
    }
}

fn setup(label: &str, o: &Opts) -> Setup {
    setup_with(label, o, Duration::from_secs(1))
}

/// `slow_delay`: how long the receiver waits before answering the final dot of `slow+`
/// recipients.
fn setup_with(label: &str, o: &Opts, slow_delay: Duration) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rx = start_receiver(&rt, slow_delay);
    let dir = common::test_dir(label);
    let toml = dir.join("campaign.toml");
    write_campaign(&toml, rx.addr().port(), o);
    write_list(&dir, o.rows, o.address);
    Setup { rt, rx, dir, toml }
}

fn start_receiver(rt: &Runtime, slow_delay: Duration) -> ReceiverHandle {
    rt.block_on(Receiver::start(ReceiverOptions {
        keep_messages: 1_000_000,
        script: Some(Script {
            slow_delay,
            ..Script::default()
        }),
        ..ReceiverOptions::default()
    }))
    .expect("receiver")
}

fn write_campaign(toml: &Path, port: u16, o: &Opts) {
    let mut t = format!(
        r#"id = "journal-test"

[from]
address = "news@example.com"

[envelope]
verp = "b-{{token}}@bounce.example.com"
secret_env = "{SECRET_VAR}"

[message]
subject = "{}"
text = "Hi {{{{ name }}}}, row {{{{ row }}}}\n"

[recipients]
path = "list.csv"

[limits]
queue_depth = 100
"#,
        o.subject
    );
    if let Some(rate) = o.rate {
        let _ = writeln!(t, "rate = \"{rate}\"");
    }
    let _ = write!(
        t,
        r#"
[retry]
attempts = 2
backoff = "50ms"
max_backoff = "100ms"

[smtp]
helo = "feeder.example.com"
connect_timeout = "2s"

[output]
delivery_log = "delivery.jsonl"
rejects = "rejects.csv"
journal = "journal.sqlite"

[[node]]
name = "n1"
host = "127.0.0.1"
port = {port}
tls = "none"
max_connections = 4
messages_per_connection = 100000
"#
    );
    if let Some(t2) = &o.not_after {
        let _ = write!(t, "\n[schedule]\nnot_after = \"{t2}\"\n");
    }
    std::fs::write(toml, t).expect("write campaign");
}

fn write_list(dir: &Path, rows: u64, address: fn(u64) -> String) {
    let mut csv = String::from("email,name\n");
    for row in 1..=rows {
        let _ = writeln!(csv, "{},N{row}", address(row));
    }
    std::fs::write(dir.join("list.csv"), csv).expect("write list");
}

/// `blast ARGS[0] TOML ARGS[1..]` with the campaign's secret. A `send` also writes its summary
/// as JSON beside the campaign (see [`summary`]).
fn command(toml: &Path, args: &[&str]) -> Blast {
    let mut b = Blast::new()
        .arg(args[0])
        .arg(toml)
        .args(&args[1..])
        .env(SECRET_VAR, SECRET);
    if args[0] == "send" {
        let shard = args
            .iter()
            .position(|a| *a == "--shard")
            .map(|i| args[i + 1]);
        b = b.arg("--summary-json").arg(summary_path(toml, shard));
    }
    b
}

fn summary_path(toml: &Path, shard: Option<&str>) -> std::path::PathBuf {
    let name = match shard {
        Some(k_of_n) => format!("summary-{}.json", k_of_n.replace('/', "-of-")),
        None => "summary.json".to_string(),
    };
    toml.with_file_name(name)
}

/// The `--summary-json` of the last `blast send` of this campaign (of this shard, `K/N`).
fn summary(toml: &Path, shard: Option<&str>) -> serde_json::Value {
    let path = summary_path(toml, shard);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no summary {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the summary is JSON")
}

/// A number of the summary (`outcomes.accepted`, …).
fn number(v: &serde_json::Value, section: &str, field: &str) -> u64 {
    v[section][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {section}.{field} in {v}"))
}

/// Runs blast to its end (bounded).
fn blast(toml: &Path, args: &[&str]) -> BlastOutput {
    command(toml, args).timeout(LIMIT).output()
}

fn spawn(toml: &Path, args: &[&str]) -> BlastChild {
    command(toml, args).spawn()
}

/// Waits until the receiver accepted at least `n` messages (bounded).
fn wait_received(rx: &ReceiverHandle, n: u64, child: &mut BlastChild) {
    let start = Instant::now();
    while rx.stats().accepted < n {
        if let Some(s) = child.try_wait() {
            panic!("blast ended ({s}) before {n} messages were received");
        }
        assert!(start.elapsed() < LIMIT, "only {:?} received", rx.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Received messages per recipient address.
fn received(rx: &ReceiverHandle) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for msg in rx.messages() {
        *m.entry(msg.rcpt).or_insert(0) += 1;
    }
    m
}

fn journal(s: &Setup) -> Journal {
    Journal::open_read_only(&s.dir.join("journal.sqlite")).expect("open journal")
}

/// (run, row, status, possibly_duplicated) of every outcome.
fn outcomes(j: &Journal) -> Vec<(i64, u64, String, bool)> {
    let mut st = j
        .connection()
        .prepare(
            "SELECT run_id, row, status, possibly_duplicated FROM outcomes ORDER BY run_id, row",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn runs(j: &Journal) -> Vec<(i64, String)> {
    let mut st = j
        .connection()
        .prepare("SELECT id, state FROM runs ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn integrity_ok(j: &Journal) {
    let v: String = j
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "ok");
}

/// A UTC time of day already past (at 00:00 there is none: waits for 00:01).
fn past_time_of_day() -> String {
    loop {
        let now = blast::campaign::TimeOfDay::now_utc();
        let m = u32::from(now.hour) * 60 + u32::from(now.minute);
        if m > 0 {
            return format!("{:02}:{:02}", (m - 1) / 60, (m - 1) % 60);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn done(s: Setup) {
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn journal_matches_the_log_and_a_finished_run_is_a_no_op() {
    let s = setup(
        "journal-noop",
        &Opts {
            // Every 10th recipient is refused at RCPT (550).
            address: |row| {
                if row % 10 == 0 {
                    format!("permfail+u{row}@d{}.test", row % 5)
                } else {
                    format!("u{row}@d{}.test", row % 5)
                }
            },
            ..Opts::default()
        },
    );
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 1, "{}", o.text());
    assert!(o.text().contains("run        1 finished"), "{}", o.text());
    let summary = summary(&s.toml, None);
    assert_eq!(summary["run"]["id"], 1, "{summary}");
    assert_eq!(summary["run"]["state"], "finished", "{summary}");
    assert_eq!(summary["outcomes"]["accepted"], 180, "{summary}");
    assert_eq!(summary["outcomes"]["failed"], 20, "{summary}");
    assert_eq!(summary["outcomes"]["unfinished"], 0, "{summary}");
    assert_eq!(summary["journal"]["outcomes"], 200, "{summary}");
    assert_eq!(summary["exit_code"], 1, "{summary}");
    let j = journal(&s);
    integrity_ok(&j);
    let rows = outcomes(&j);
    assert_eq!(rows.len(), 200);
    // Journal rows == final outcomes of the delivery log, row by row.
    let log: BTreeMap<u64, String> = std::fs::read_to_string(s.dir.join("delivery.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["row"].as_u64().unwrap(),
                v["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let journal: BTreeMap<u64, String> = rows.iter().map(|r| (r.1, r.2.clone())).collect();
    assert_eq!(journal, log);
    assert_eq!(journal.values().filter(|s| *s == "failed").count(), 20);
    assert_eq!(runs(&j), vec![(1, "finished".to_string())]);
    let received_before = s.rx.stats();
    assert_eq!(received_before.accepted, 180);

    // Again: nothing to do, nothing sent, exit 0, delivery log untouched.
    let log_len = std::fs::metadata(s.dir.join("delivery.jsonl"))
        .unwrap()
        .len();
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert!(
        o.text().contains("run 1 already finished at") && o.text().contains("nothing to do"),
        "{}",
        o.text()
    );
    assert_eq!(s.rx.stats().transactions, received_before.transactions);
    assert_eq!(outcomes(&j).len(), 200);
    assert_eq!(
        std::fs::metadata(s.dir.join("delivery.jsonl"))
            .unwrap()
            .len(),
        log_len
    );

    // --new-run sends the whole list again, as run 2 — except the 20 addresses that got a
    // 550 5.1.1 in run 1: they are on the suppression list now, so nothing fails.
    let o = blast(&s.toml, &["send", "-q", "--new-run"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert!(
        o.text().contains("suppressed 20 rows skipped"),
        "{}",
        o.text()
    );
    assert_eq!(s.rx.stats().accepted, 360);
    assert_eq!(
        runs(&j),
        vec![(1, "finished".to_string()), (2, "finished".to_string())]
    );

    // A regenerated list (one more row) is a new run, sent in full.
    write_list(&s.dir, 201, |row| format!("new{row}@d{}.test", row % 5));
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert_eq!(s.rx.stats().accepted, 561);
    assert_eq!(runs(&j).len(), 3);
    assert_eq!(
        outcomes(&j).iter().filter(|r| r.0 == 3).count(),
        201,
        "run 3 has every row of the new list"
    );
    done(s);
}

#[test]
fn crashes_with_sigkill_then_resume_lose_nothing_and_count_duplicates() {
    const ROWS: u64 = 3000;
    let s = setup(
        "journal-crash",
        &Opts {
            rows: ROWS,
            rate: Some("1000/s"),
            ..Opts::default()
        },
    );
    // kill -9 three times at different points, resuming in between.
    let kill_at = [600, 1300, 2000];
    for &n in &kill_at {
        let mut child = spawn(&s.toml, &["send", "-q"]);
        wait_received(&s.rx, n, &mut child);
        child.kill();
        let j = journal(&s);
        integrity_ok(&j);
        assert_eq!(runs(&j), vec![(1, "running".to_string())]);
        // Only what the relay took can be journaled accepted.
        let accepted = outcomes(&j).iter().filter(|r| r.2 == "accepted").count() as u64;
        assert!(accepted <= s.rx.stats().accepted);
        assert!(accepted < ROWS, "the run was over before the kill");
    }

    // The last resume runs to the end: same run, 4 sessions.
    let o = blast(&s.toml, &["send", "-q"]);
    let out = o.text();
    assert_eq!(o.code(), 0, "{out}");
    assert!(out.contains("run        1 finished"), "{out}");
    let sum = summary(&s.toml, None);
    let skipped = number(&sum, "rows", "skipped_done");
    let reported_last = number(&sum, "retries", "resumed_duplicates");
    assert!(skipped > 0, "{out}");
    // The resumed session skipped exactly the rows final before it started.
    assert_eq!(skipped + number(&sum, "outcomes", "accepted"), ROWS);

    let j = journal(&s);
    integrity_ok(&j);
    assert_eq!(runs(&j), vec![(1, "finished".to_string())]);
    let sessions: i64 = j
        .connection()
        .query_row("SELECT sessions FROM runs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 4);
    let rows = outcomes(&j);
    // Every row exactly one final outcome across all sessions, all accepted.
    assert_eq!(rows.len() as u64, ROWS);
    let distinct: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(distinct.len() as u64, ROWS);
    assert!(rows.iter().all(|r| r.2 == "accepted"));
    // The delivery log is as complete as the journal: the lines each killed session still had
    // in its buffer were added from the journal by the next resume; each row exactly once, and
    // every line whole (a line torn by a kill was cut off).
    let text = std::fs::read_to_string(s.dir.join("delivery.jsonl")).unwrap();
    let mut logged: BTreeMap<u64, u32> = BTreeMap::new();
    for l in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn log line {l:?}: {e}"));
        *logged.entry(v["row"].as_u64().unwrap()).or_default() += 1;
    }
    let missing = distinct.iter().filter(|r| !logged.contains_key(r)).count();
    let twice: Vec<_> = logged.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(
        missing, 0,
        "{missing} rows final in the journal have no delivery log line"
    );
    assert!(twice.is_empty(), "rows logged more than once: {twice:?}");
    // Nothing lost; duplicates only where blast says so.
    let got = received(&s.rx);
    assert_eq!(got.len() as u64, ROWS, "every recipient received");
    assert!(s.rx.stats().accepted >= ROWS);
    let twice = got.values().filter(|&&n| n > 1).count() as u64;
    let flagged = rows.iter().filter(|r| r.3).count() as u64;
    eprintln!(
        "crashes: {twice} recipients received twice or more, {flagged} flagged possibly duplicated"
    );
    assert!(
        twice <= flagged,
        "{twice} recipients got the message more than once, blast flagged {flagged}"
    );
    assert!(reported_last <= flagged);
    // Per crash, the window is what can be in flight (4 connections) plus the outcomes not
    // yet committed (under 100 ms at 1000/s).
    assert!(
        flagged <= kill_at.len() as u64 * (4 + 100),
        "{flagged} possibly duplicated"
    );
    done(s);
}

#[test]
fn a_second_signal_cuts_transactions_off_and_the_journal_stays_consistent() {
    // Rows 61.. answer only after 60 s: four connections get stuck on them.
    let s = setup_with(
        "journal-second-signal",
        &Opts {
            rows: 100,
            address: |row| {
                if row > 60 {
                    format!("slow+u{row}@d.test")
                } else {
                    format!("u{row}@d.test")
                }
            },
            ..Opts::default()
        },
        Duration::from_secs(60),
    );
    let stderr_path = s.dir.join("stderr.txt");
    let mut child = command(&s.toml, &["send", "-q", "--grace", "120s"])
        .env("RUST_LOG", "warn")
        .stderr_to(&stderr_path)
        .spawn();
    wait_received(&s.rx, 60, &mut child);
    // Wait until the four connections are each in a slow transaction (committed marks).
    let in_flight = |j: &Journal| -> i64 {
        j.connection()
            .query_row(
                "SELECT COUNT(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.row = a.row)",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let start = Instant::now();
    while in_flight(&journal(&s)) < 4 {
        assert!(start.elapsed() < LIMIT);
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal("TERM");
    let start = Instant::now();
    while !std::fs::read_to_string(&stderr_path)
        .unwrap()
        .contains("stopping")
    {
        assert!(start.elapsed() < LIMIT, "first signal not seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal("TERM");
    let o = child.wait_bounded(LIMIT);
    let out = o.text();
    assert_eq!(o.code(), 143, "{out}");
    assert!(out.contains("second signal"), "{out}");
    let j = journal(&s);
    integrity_ok(&j);
    assert_eq!(runs(&j), vec![(1, "stopped".to_string())]);
    assert_eq!(number(&summary(&s.toml, None), "outcomes", "accepted"), 60);
    assert_eq!(outcomes(&j).len(), 60);
    assert_eq!(in_flight(&j), 4);

    // Resume against a fast relay (the slow one still holds the four cut-off messages):
    // exactly those four are reported possibly duplicated.
    let fast = start_receiver(&s.rt, Duration::from_millis(1));
    write_campaign(
        &s.toml,
        fast.addr().port(),
        &Opts {
            rows: 100,
            ..Opts::default()
        },
    );
    let o = blast(&s.toml, &["send", "-q"]);
    let out = o.text();
    assert_eq!(o.code(), 0, "{out}");
    let sum = summary(&s.toml, None);
    assert_eq!(number(&sum, "rows", "skipped_done"), 60);
    assert_eq!(number(&sum, "retries", "resumed_duplicates"), 4);
    assert_eq!(fast.stats().accepted, 40);
    let rows = outcomes(&j);
    assert_eq!(rows.len(), 100);
    assert_eq!(rows.iter().filter(|r| r.3).count(), 4);
    done(s);
}

#[test]
fn sigterm_stops_cleanly_with_a_consistent_journal() {
    const ROWS: u64 = 3000;
    let s = setup(
        "journal-term",
        &Opts {
            rows: ROWS,
            rate: Some("1000/s"),
            ..Opts::default()
        },
    );
    let mut child = spawn(&s.toml, &["send", "-q", "--grace", "10s"]);
    wait_received(&s.rx, 300, &mut child);
    child.signal("TERM");
    let o = child.wait_bounded(LIMIT);
    let out = o.text();
    assert_eq!(o.code(), 143, "{out}");
    let j = journal(&s);
    integrity_ok(&j);
    assert_eq!(runs(&j), vec![(1, "stopped".to_string())]);
    let sum = summary(&s.toml, None);
    let finals = number(&sum, "outcomes", "accepted")
        + number(&sum, "outcomes", "failed")
        + number(&sum, "outcomes", "expired");
    assert!(finals < ROWS);
    assert_eq!(outcomes(&j).len() as u64, finals, "{out}");
    // A clean stop leaves nothing in doubt: every received message has its outcome.
    assert_eq!(s.rx.stats().accepted, finals);

    // The stopped run resumes and completes without sending anything twice.
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert_eq!(outcomes(&j).len() as u64, ROWS);
    assert_eq!(s.rx.stats().accepted, ROWS);
    assert!(received(&s.rx).values().all(|&n| n == 1));
    done(s);
}

#[test]
fn a_second_sender_of_the_same_campaign_exits_75() {
    let s = setup(
        "journal-lock",
        &Opts {
            rows: 3000,
            rate: Some("500/s"),
            ..Opts::default()
        },
    );
    let mut first = spawn(&s.toml, &["send", "-q"]);
    wait_received(&s.rx, 50, &mut first);
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 75, "{}", o.text());
    assert!(
        o.text().contains(&format!(
            "campaign journal-test is being sent by another blast (pid {})",
            first.id()
        )),
        "{}",
        o.text()
    );
    assert!(first.try_wait().is_none(), "first sender still running");
    // status works while the send runs (read-only, WAL).
    let st = blast(&s.toml, &["status", "--json"]);
    assert_eq!(st.code(), 0, "{}", st.text());
    let v: serde_json::Value = serde_json::from_slice(st.stdout_bytes()).unwrap();
    assert_eq!(v["run"]["state"], "running");
    assert_eq!(v["sender_pid"], first.id());
    first.signal("TERM");
    let o = first.wait_bounded(LIMIT);
    assert_eq!(o.code(), 143, "{}", o.text());
    done(s);
}

#[test]
fn changed_templates_are_refused_unless_forced() {
    let mut opts = Opts {
        rows: 100,
        ..Opts::default()
    };
    let s = setup("journal-template", &opts);
    // An unfinished run: --limit stops after 30 rows.
    let o = blast(&s.toml, &["send", "-q", "--limit", "30"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert!(o.text().contains("run        1 stopped"), "{}", o.text());
    assert_eq!(s.rx.stats().accepted, 30);

    opts.subject = "A new subject for {{ name }}";
    write_campaign(&s.toml, s.rx.addr().port(), &opts);
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 2, "{}", o.text());
    assert!(o.text().contains("templates"), "{}", o.text());
    assert!(o.text().contains("--force"), "{}", o.text());
    assert_eq!(s.rx.stats().accepted, 30, "nothing sent");

    let o = blast(&s.toml, &["send", "-q", "--force"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert!(o.text().contains("run        1 finished"), "{}", o.text());
    // Resumed: the 30 done rows were skipped, the other 70 sent once.
    assert_eq!(number(&summary(&s.toml, None), "rows", "skipped_done"), 30);
    assert_eq!(s.rx.stats().accepted, 100);
    assert!(received(&s.rx).values().all(|&n| n == 1));
    let j = journal(&s);
    assert_eq!(runs(&j), vec![(1, "finished".to_string())]);
    assert_eq!(outcomes(&j).len(), 100);
    done(s);
}

#[test]
fn rows_that_cannot_be_rendered_are_final_failures_and_the_run_finishes() {
    // Rows 7, 14, …, 196: the subject divides by zero at render time (the variables are fine,
    // so the campaign loads). Rendering is deterministic: these rows fail once, for good.
    let s = setup(
        "journal-render-errors",
        &Opts {
            subject: "Hello {{ name }} {{ 100 // (row % 7) }}",
            ..Opts::default()
        },
    );
    let bad: Vec<u64> = (1..=200).filter(|r| r % 7 == 0).collect();
    assert_eq!(bad.len(), 28);
    let o = blast(&s.toml, &["send", "-q"]);
    let out = o.text();
    // Like 5xx failures: done, some failed, exit 1; and the run is finished.
    assert_eq!(o.code(), 1, "{out}");
    assert!(out.contains("run        1 finished"), "{out}");
    let sum = summary(&s.toml, None);
    assert_eq!(number(&sum, "outcomes", "accepted"), 172, "{out}");
    assert_eq!(number(&sum, "outcomes", "failed"), 28, "{out}");
    assert_eq!(number(&sum, "outcomes", "unfinished"), 0, "{out}");
    assert_eq!(number(&sum, "rows", "render_errors"), 28, "{out}");
    assert!(
        out.contains("outcomes   172 accepted, 28 failed (28 render errors)"),
        "{out}"
    );
    assert_eq!(s.rx.stats().accepted, 172);

    // The journal: every row final, the bad ones failed with the template error as reason.
    let j = journal(&s);
    integrity_ok(&j);
    assert_eq!(runs(&j), vec![(1, "finished".to_string())]);
    let mut st = j
        .connection()
        .prepare(
            "SELECT row, status, node, code, stage, text, message_id FROM outcomes ORDER BY row",
        )
        .unwrap();
    type Row = (
        u64,
        String,
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
        String,
    );
    let rows: Vec<Row> = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rows.len(), 200);
    for (row, status, node, code, stage, text, message_id) in &rows {
        if row % 7 == 0 {
            assert_eq!(
                (status.as_str(), node.as_str()),
                ("failed", "render"),
                "row {row}"
            );
            assert_eq!((code, stage), (&None, &None), "row {row}");
            let text = text.as_deref().unwrap_or_default();
            assert!(
                text.starts_with("cannot render") && text.contains("100 // 0"),
                "row {row}: {text}"
            );
            assert!(
                message_id.starts_with("journal-test."),
                "row {row}: {message_id}"
            );
        } else {
            assert_eq!(status, "accepted", "row {row}");
        }
    }
    // The delivery log has the same failed lines, with the reason.
    let log: Vec<serde_json::Value> = std::fs::read_to_string(s.dir.join("delivery.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 200);
    let mut failed: Vec<u64> = log
        .iter()
        .filter(|v| v["outcome"] == "failed")
        .map(|v| {
            assert_eq!(v["node"], "render");
            assert!(v["text"].as_str().unwrap().contains("100 // 0"), "{v}");
            v["row"].as_u64().unwrap()
        })
        .collect();
    failed.sort();
    assert_eq!(failed, bad);
    // `blast status`: one failure reason for the 28 rows.
    let o = blast(&s.toml, &["status", "--json"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    let v: serde_json::Value = serde_json::from_slice(o.stdout_bytes()).unwrap();
    assert_eq!(v["by_status"]["failed"], 28);
    assert_eq!(v["failure_reasons"][0]["count"], 28);
    assert!(v["failure_reasons"][0]["code"].is_null());

    // The nightly re-run: nothing to render, nothing to send, exit 0.
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert!(
        o.text().contains("run 1 already finished at") && o.text().contains("nothing to do"),
        "{}",
        o.text()
    );
    assert_eq!(s.rx.stats().accepted, 172);
    assert_eq!(outcomes(&j).len(), 200);
    done(s);
}

#[test]
fn status_json_reports_the_run() {
    let s = setup(
        "journal-status",
        &Opts {
            rows: 100,
            address: |row| match row % 20 {
                0 => format!("permfail+u{row}@bad.test"),
                _ => format!("u{row}@d{}.test", row % 3),
            },
            ..Opts::default()
        },
    );
    // No journal yet.
    let o = blast(&s.toml, &["status", "--json"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    let v: serde_json::Value = serde_json::from_slice(o.stdout_bytes()).unwrap();
    assert!(v["run"].is_null());

    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 1, "{}", o.text());
    let o = blast(&s.toml, &["status", "--json"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    let v: serde_json::Value = serde_json::from_slice(o.stdout_bytes()).unwrap();
    assert_eq!(v["campaign"], "journal-test");
    assert_eq!(v["run"]["id"], 1);
    assert_eq!(v["run"]["state"], "finished");
    assert!(v["run"]["started_at"].is_string() && v["run"]["ended_at"].is_string());
    assert_eq!(v["rows_final"], 100);
    assert_eq!(v["by_status"]["accepted"], 95);
    assert_eq!(v["by_status"]["failed"], 5);
    assert_eq!(v["possibly_duplicated"], 0);
    assert!(v["rate_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(v["nodes"][0]["name"], "n1");
    assert_eq!(v["nodes"][0]["accepted"], 95);
    let domains = v["domains"].as_array().unwrap();
    let bad = domains.iter().find(|d| d["name"] == "bad.test").unwrap();
    assert_eq!(
        (bad["failed"].as_u64(), bad["accepted"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(domains.len(), 4);
    let reason = &v["failure_reasons"][0];
    assert_eq!(reason["count"], 5);
    assert_eq!(reason["code"].as_u64().unwrap() / 100, 5);
    // The text form too.
    let o = blast(&s.toml, &["status"]);
    assert!(
        o.text().contains("100 final: 95 accepted, 5 failed"),
        "{}",
        o.text()
    );
    done(s);
}

#[test]
fn not_after_in_the_past_refuses_to_start() {
    let past = past_time_of_day();
    let s = setup(
        "journal-not-after",
        &Opts {
            not_after: Some(past.clone()),
            ..Opts::default()
        },
    );
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 75, "{}", o.text());
    assert!(
        o.text().contains(&format!("not_after {past} UTC")),
        "{}",
        o.text()
    );
    assert_eq!(s.rx.stats().transactions, 0, "nothing sent");
    assert!(
        !s.dir.join("journal.sqlite").exists(),
        "no run started, no journal created"
    );
    // --not-after on the command line overrides the campaign.
    let o = blast(&s.toml, &["send", "-q", "--not-after", "23:59"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert_eq!(s.rx.stats().accepted, 200);
    done(s);
}

#[test]
fn blast_cron_logs_and_passes_exit_codes_through() {
    let s = setup("journal-cron", &Opts::default());
    let log = s.dir.join("cron.log");
    let cron = |args: &[&str]| {
        let o = Command::new(common::script("blast-cron"))
            .arg(&s.toml)
            .args(args)
            .env("BLAST", common::blast_bin())
            .env("BLAST_LOG", &log)
            .env(SECRET_VAR, SECRET)
            .output()
            .expect("run scripts/blast-cron");
        assert!(o.stdout.is_empty(), "output goes to the log");
        o.status.code()
    };
    assert_eq!(cron(&[]), Some(0));
    assert_eq!(s.rx.stats().accepted, 200);
    assert_eq!(cron(&[]), Some(0));
    assert_eq!(s.rx.stats().accepted, 200, "finished: nothing sent again");
    let past = past_time_of_day();
    assert_eq!(cron(&["--new-run", "--not-after", &past]), Some(75));
    assert_eq!(cron(&["--no-such-option"]), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("blast-cron: start:").count(), 4, "{text}");
    assert!(text.contains("result     done, exit code 0"), "{text}");
    assert!(text.contains("nothing to do"), "{text}");
    assert!(text.contains(&format!("not_after {past} UTC")), "{text}");
    assert_eq!(s.rx.stats().accepted, 200);
    done(s);
}

#[test]
fn not_after_is_validated_as_a_utc_time_of_day() {
    use blast::campaign::{Campaign, TimeOfDay};
    assert_eq!(
        "06:30".parse::<TimeOfDay>(),
        Ok(TimeOfDay {
            hour: 6,
            minute: 30
        })
    );
    for bad in ["24:00", "6:30", "06:60", "0630", "", "ab:cd"] {
        assert!(bad.parse::<TimeOfDay>().is_err(), "{bad:?} accepted");
    }
    assert_eq!(TimeOfDay::of_unix(86_400 + 3600 + 120).to_string(), "01:02");
    let dir = common::test_dir("journal-not-after-parse");
    let toml = dir.join("campaign.toml");
    let o = Opts {
        not_after: Some("25:00".into()),
        ..Opts::default()
    };
    write_campaign(&toml, 2525, &o);
    write_list(&dir, 1, o.address);
    let err = Campaign::load(&toml).unwrap_err().to_string();
    assert!(err.contains("invalid time of day \"25:00\""), "{err}");
    write_campaign(
        &toml,
        2525,
        &Opts {
            not_after: Some("05:45".into()),
            ..Opts::default()
        },
    );
    let c = Campaign::load(&toml).unwrap();
    assert_eq!(c.schedule.not_after.unwrap().to_string(), "05:45");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shard of an address, computed independently of blast: FNV-1a 64 of the lowercased
/// address, modulo N, plus 1. Pinned here because shard journals on disk depend on it.
fn reference_shard(address: &str, n: u64) -> u64 {
    let h = address
        .to_lowercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    h % n + 1
}

#[test]
fn three_shards_split_one_list_with_no_overlap() {
    const ROWS: u64 = 3000;
    let s = setup(
        "journal-shard",
        &Opts {
            rows: ROWS,
            // Mixed case: the shard hash is of the lowercased address.
            address: |row| {
                if row % 7 == 0 {
                    format!("User{row}@D{}.Test", row % 5)
                } else {
                    format!("u{row}@d{}.test", row % 5)
                }
            },
            ..Opts::default()
        },
    );
    for bad in ["0/3", "4/3", "1/1025", "3", "a/b"] {
        let o = blast(&s.toml, &["send", "-q", "--shard", bad]);
        assert_eq!(o.code(), 2, "{bad}: {}", o.text());
        assert!(o.text().contains("--shard"), "{}", o.text());
    }
    assert_eq!(s.rx.stats().transactions, 0);

    // Three feeders at once, no coordination: each takes its own lock and journal.
    let feeders: Vec<BlastChild> = (1..=3)
        .map(|k| spawn(&s.toml, &["send", "-q", "--shard", &format!("{k}/3")]))
        .collect();
    let outs: Vec<BlastOutput> = feeders.into_iter().map(|c| c.wait_bounded(LIMIT)).collect();
    let mut all = std::collections::BTreeSet::new();
    for (i, o) in outs.iter().enumerate() {
        let k = i as u64 + 1;
        let out = o.text();
        assert_eq!(o.code(), 0, "shard {k}: {out}");
        assert!(out.contains("run        1 finished"), "{out}");
        let sum = summary(&s.toml, Some(&format!("{k}/3")));
        assert_eq!(sum["shard"], format!("{k}/3"), "{sum}");
        let accepted = number(&sum, "outcomes", "accepted");
        let other = number(&sum, "rows", "skipped_other_shards");
        assert_eq!(accepted + other, ROWS, "{out}");
        assert_eq!(number(&sum, "rows", "rejected"), 0, "{out}");
        // The shard's journal holds only its own rows, all accepted.
        let j = Journal::open_read_only(&s.dir.join(format!("journal.shard-{k}-of-3.sqlite")))
            .expect("shard journal");
        integrity_ok(&j);
        let mut st = j
            .connection()
            .prepare("SELECT row, address, status FROM outcomes")
            .unwrap();
        let rows: Vec<(u64, String, String)> = st
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rows.len() as u64, accepted);
        for (row, address, status) in &rows {
            assert_eq!(reference_shard(address, 3), k, "row {row} {address}");
            assert_eq!(status, "accepted");
            assert!(all.insert(*row), "row {row} in two shards");
        }
        // Balanced enough (FNV-1a over 3,000 addresses).
        assert!((700..1300).contains(&accepted), "shard {k}: {accepted}");
        assert!(
            s.dir
                .join(format!("delivery.shard-{k}-of-3.jsonl"))
                .exists()
        );
    }
    // The union is the whole list; the relay got every recipient exactly once.
    assert_eq!(all, (1..=ROWS).collect());
    let got = received(&s.rx);
    assert_eq!(got.len() as u64, ROWS);
    assert!(got.values().all(|&n| n == 1));
    assert!(
        !s.dir.join("journal.sqlite").exists(),
        "no unsharded journal"
    );

    // Status reads the shard's journal; a finished shard is a no-op.
    let st = blast(&s.toml, &["status", "--json", "--shard", "2/3"]);
    assert_eq!(st.code(), 0, "{}", st.text());
    let v: serde_json::Value = serde_json::from_slice(st.stdout_bytes()).unwrap();
    assert_eq!(v["shard"], "2/3");
    assert_eq!(v["run"]["state"], "finished");
    let o = blast(&s.toml, &["send", "-q", "--shard", "2/3"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert!(o.text().contains("nothing to do"), "{}", o.text());
    assert_eq!(s.rx.stats().accepted, ROWS);
    done(s);
}

#[test]
fn a_list_sent_under_another_sharding_is_refused_unless_forced() {
    const ROWS: u64 = 300;
    let s = setup(
        "journal-reshard",
        &Opts {
            rows: ROWS,
            ..Opts::default()
        },
    );
    // Shard 1 of 3 sends its part, then stops halfway through shard 2 (--limit).
    let o = blast(&s.toml, &["send", "-q", "--shard", "1/3"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    let shard1 = number(&summary(&s.toml, Some("1/3")), "outcomes", "accepted");
    let o = blast(&s.toml, &["send", "-q", "--shard", "2/3", "--limit", "100"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert!(o.text().contains("run        1 stopped"), "{}", o.text());
    let sent = s.rx.stats().accepted;
    assert!(shard1 > 0 && sent > shard1, "{sent} {shard1}");

    // Another N, or no --shard: refused before anything is sent, naming both journals.
    for args in [
        &["send", "-q", "--shard", "1/2"][..],
        &["send", "-q"][..],
        &["send", "-q", "--shard", "1/1", "--new-run"][..],
    ] {
        let o = blast(&s.toml, args);
        let out = o.text();
        assert_eq!(o.code(), 2, "{args:?}: {out}");
        assert!(out.contains("another sharding"), "{out}");
        assert!(out.contains("journal.shard-1-of-3.sqlite"), "{out}");
        assert!(out.contains("journal.shard-2-of-3.sqlite"), "{out}");
        assert!(
            out.contains("run 1 finished") && out.contains("run 1 stopped"),
            "{out}"
        );
        assert!(
            out.contains("--shard K/3") && out.contains("--force"),
            "{out}"
        );
        assert_eq!(s.rx.stats().accepted, sent, "{args:?}: nothing sent");
    }
    assert!(!s.dir.join("journal.sqlite").exists());
    assert!(!s.dir.join("journal.shard-1-of-2.sqlite").exists());

    // The same N is the same sharding: shard 2 resumes, shard 3 starts.
    for k in ["2/3", "3/3"] {
        let o = blast(&s.toml, &["send", "-q", "--shard", k]);
        assert_eq!(o.code(), 0, "{k}: {}", o.text());
        assert!(o.text().contains("run        1 finished"), "{}", o.text());
    }
    assert_eq!(s.rx.stats().accepted, ROWS);
    assert!(received(&s.rx).values().all(|&n| n == 1));

    // A regenerated list is another list: no conflict.
    write_list(&s.dir, ROWS, |row| format!("new{row}@d{}.test", row % 5));
    let o = blast(&s.toml, &["send", "-q"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    assert_eq!(s.rx.stats().accepted, 2 * ROWS);

    // Back to the first list: the unsharded journal now holds a run of the new list only, so
    // --shard K/2 is refused because of the K/3 journals (not the unsharded one); --force sends.
    write_list(&s.dir, ROWS, Opts::default().address);
    let o = blast(&s.toml, &["send", "-q", "--shard", "1/2"]);
    assert_eq!(o.code(), 2, "{}", o.text());
    assert!(!o.text().contains("journal.sqlite "), "{}", o.text());
    let o = blast(&s.toml, &["send", "-q", "--shard", "1/2", "--force"]);
    assert_eq!(o.code(), 0, "{}", o.text());
    let forced = number(&summary(&s.toml, Some("1/2")), "outcomes", "accepted");
    assert!(forced > 0);
    assert_eq!(s.rx.stats().accepted, 2 * ROWS + forced);
    done(s);
}
