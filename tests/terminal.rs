//! Untrusted text on the terminal (issue 13, item 8): relay replies carrying terminal escape
//! sequences must reach the operator's terminal defanged — `blast send`'s summary (node health
//! reasons), `blast status` (failure reasons, node events) — while the JSON outputs keep the
//! text as it was (JSON escapes it).
//!
//! A real `blast send` (the binary) against two in-process receivers whose replies this test
//! writes: one defers every MAIL with a 451 full of escapes (its node trips: the health
//! event's reason is that reply), the other refuses every RCPT with such a 550 (the failure
//! reasons).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blast::smtp::receiver::{Receiver, ReceiverHandle, ReceiverOptions, ReceiverPolicy, Script};
use common::{Blast, BlastOutput};

const SECRET_VAR: &str = "BLAST_TERMINAL_TEST_SECRET";
const SECRET: &str = "terminal-tests-secret-0123456789";
const LIMIT: Duration = Duration::from_secs(120);

/// Sets the window title, clears the screen; C1 CSI (U+009B) and a BEL for good measure.
const HOSTILE_451: &str = "4.3.0 spool \x1b]0;pwned\x07full\x1b[2J";
const HOSTILE_550: &str = "550 5.1.1 no such \x1b]0;title\x07user\x1b[2J\u{9b}31m here";

/// Refuses every RCPT with [`HOSTILE_550`].
#[derive(Debug)]
struct RefuseAll;

impl ReceiverPolicy for RefuseAll {
    fn rcpt(&self, _address: &str) -> Result<(), String> {
        Err(HOSTILE_550.into())
    }
    fn message(&self, _from: &str, _rcpts: &[String], _data: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

fn write_campaign(toml: &Path, defer_port: u16, refuse_port: u16) {
    let text = format!(
        r#"id = "terminal-test"

[from]
address = "news@example.com"

[envelope]
verp = "b-{{token}}@bounce.example.com"
secret_env = "{SECRET_VAR}"

[message]
subject = "Hello"
text = "Hi {{{{ name }}}}\n"

[recipients]
path = "list.csv"

[retry]
attempts = 3
backoff = "10ms"
max_backoff = "20ms"
fallback_after = 100

[smtp]
helo = "feeder.example.com"
connect_timeout = "2s"

[output]
delivery_log = "delivery.jsonl"
rejects = "rejects.csv"
journal = "journal.sqlite"

[[node]]
name = "defer"
host = "127.0.0.1"
port = {defer_port}
tls = "none"
weight = 5
max_connections = 2

[[node]]
name = "refuse"
host = "127.0.0.1"
port = {refuse_port}
tls = "none"
max_connections = 2
"#
    );
    std::fs::write(toml, text).expect("write campaign");
    let mut csv = String::from("email,name\n");
    for row in 1..=60 {
        csv.push_str(&format!("u{row}@example.org,N{row}\n"));
    }
    std::fs::write(toml.with_file_name("list.csv"), csv).expect("write list");
}

fn blast(toml: &Path, args: &[&str]) -> BlastOutput {
    Blast::new()
        .arg(args[0])
        .arg(toml)
        .args(&args[1..])
        .env(SECRET_VAR, SECRET)
        .timeout(LIMIT)
        .output()
}

/// No byte that a terminal would act on: C0 controls but LF, DEL, and C1 controls.
fn assert_inert(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let bad: Vec<(usize, char)> = text
        .char_indices()
        .filter(|&(_, c)| {
            (c.is_control() && c != '\n') || ('\u{80}'..='\u{9f}').contains(&c) || c == '\u{7f}'
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what} prints control characters {bad:?}:\n{}",
        text.escape_debug()
    );
}

#[test]
fn relay_replies_reach_the_terminal_defanged() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let start = |o: ReceiverOptions| -> ReceiverHandle {
        rt.block_on(Receiver::start(o)).expect("receiver")
    };
    let defer = start(ReceiverOptions {
        script: Some(Script {
            reply_all: Some((451, HOSTILE_451.into())),
            ..Script::default()
        }),
        ..ReceiverOptions::default()
    });
    let refuse = start(ReceiverOptions {
        policy: Some(Arc::new(RefuseAll)),
        ..ReceiverOptions::default()
    });
    let dir = common::test_dir("terminal");
    let toml = dir.join("campaign.toml");
    write_campaign(&toml, defer.addr().port(), refuse.addr().port());
    let summary_json = dir.join("summary.json");

    let send = blast(
        &toml,
        &["send", "--summary-json", summary_json.to_str().unwrap()],
    );
    assert_eq!(send.code(), 1, "some rows failed: {}", send.text());
    // The relay's escapes did reach blast: the JSON summary holds them as they were.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_json).unwrap()).unwrap();
    let defer_node = summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "defer")
        .expect("node defer in the summary");
    assert!(
        defer_node["health"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("\x1b]0;pwned\x07"))),
        "node defer tripped on the hostile 451: {summary}"
    );
    assert_inert("blast send (stdout)", send.stdout_bytes());
    assert_inert("blast send (stderr)", send.stderr_bytes());
    assert!(
        send.stdout().contains(r"spool \x1b]0;pwned\x07full\x1b[2J"),
        "the reason is shown, escaped: {}",
        send.stdout()
    );

    let status = blast(&toml, &["status"]);
    assert!(status.success(), "{}", status.text());
    assert_inert("blast status", status.stdout_bytes());
    assert_inert("blast status (stderr)", status.stderr_bytes());
    let out = status.stdout();
    assert!(
        out.contains(r"no such \x1b]0;title\x07user\x1b[2J\u{9b}31m here"),
        "failure reason shown, escaped: {out}"
    );
    assert!(
        out.contains(r"spool \x1b]0;pwned\x07full"),
        "node event shown, escaped: {out}"
    );

    // `--json` keeps the text itself (JSON escapes it).
    let json = blast(&toml, &["status", "--json"]);
    assert!(json.success(), "{}", json.text());
    assert_inert("blast status --json", json.stdout_bytes());
    let v: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert!(
        v["failure_reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["text"]
                .as_str()
                .is_some_and(|t| t.contains("\x1b]0;title\x07"))),
        "{v}"
    );
    drop((defer, refuse));
    common::remove_dir_unless_panicking(&dir);
}
