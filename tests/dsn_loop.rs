//! The real DSN loop, end to end: `blast send` (the binary) → a real Postfix relay → two
//! `smtp-sink`s, one rejecting every RCPT with `550 5.1.1`, one deferring every RCPT with
//! `451 4.7.1` → Postfix writes real DSNs (bounces, delay warnings, expiry bounces) to the VERP
//! senders → Postfix routes the bounce domain (`transport_maps`) to `blast sink` (the binary) →
//! the hard bounces land in the suppression list, the deferrals do not; the next `blast send`
//! skips the hard-bounced rows; `blast status` and the bounce log report them.
//!
//! Postfix's timers are shortened so the loop takes about a
//! minute: delay warnings after 10 s, retries every 10 s, deferred mail expires after 30 s.
//! Needs the `postfix` package (scripts/install-deps) and root, like tests/e2e_postfix.rs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blast::bounce::suppression::Suppressions;
use common::{
    Blast, BlastChild, PostfixNodes, SmtpSink, free_port, remove_dir_unless_panicking, test_dir,
};

const SECRET_VAR: &str = "BLAST_DSN_LOOP_SECRET";
const SECRET: &str = "dsn-loop-secret-0123456789";
const BOUNCE_DOMAIN: &str = "bounce.e2e.example";

const HARD: &[&str] = &["gone1@hard.test", "gone2@hard.test", "gone3@hard.test"];
const SOFT: &[&str] = &["later1@soft.test", "later2@soft.test"];
const OK: &[&str] = &["fine1@ok.test", "fine2@ok.test"];

/// `blast sink` as a child process; killed if dropped while running.
struct Sink {
    child: BlastChild,
}

impl Sink {
    fn start(port: u16, db: &Path, log: &Path, out: &Path) -> Sink {
        let child = Blast::new()
            .args(["sink", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--domain", BOUNCE_DOMAIN, "--secret-env", SECRET_VAR])
            .arg("--db")
            .arg(db)
            .arg("--bounce-log")
            .arg(log)
            .arg("--quarantine")
            .arg(out.join("quarantine"))
            .env(SECRET_VAR, SECRET)
            .stdout_to(out.join("sink.stdout"))
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "blast sink did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sink { child }
    }

    /// SIGTERM, then (bounded) the exit code and stderr.
    fn stop(self) -> (Option<i32>, String) {
        self.child.signal("TERM");
        let o = self.child.wait_bounded(Duration::from_secs(10));
        (o.status().code(), o.stderr())
    }
}

fn campaign(dir: &Path, relay_port: u16) -> PathBuf {
    let list = dir.join("recipients.csv");
    let mut csv = String::from("email,first_name,last_name\n");
    // Interleaved, so rows of every kind are spread over the list.
    for i in 0..3 {
        for group in [HARD, SOFT, OK] {
            if let Some(a) = group.get(i) {
                csv.push_str(&format!("{a},Row,{i}\n"));
            }
        }
    }
    std::fs::write(&list, csv).unwrap();
    let body = dir.join("body.txt");
    std::fs::write(
        &body,
        "Hello {{ first_name }},\n\nrow {{ row }}.\n\nUnsubscribe: {{ unsubscribe_url }}\n",
    )
    .unwrap();
    let text = format!(
        r#"
id = "loop"
[from]
name = "Loop Shop"
address = "news@e2e.example"
[envelope]
verp = "b-{{token}}@{BOUNCE_DOMAIN}"
secret_env = "{SECRET_VAR}"
[message]
subject = "Hello {{{{ first_name }}}}, row {{{{ row }}}}"
text_file = "{body}"
[recipients]
path = "{list}"
[unsubscribe]
url = "https://shop.e2e.example/u/{{{{ unsubscribe_token }}}}"
[smtp]
helo = "feeder.e2e.example"
connect_timeout = "5s"
[output]
delivery_log = "{dir}/delivery.jsonl"
rejects = "{dir}/rejects.csv"
journal = "{dir}/journal.sqlite"
[suppression]
path = "{dir}/suppression.sqlite"
[[node]]
name = "relay"
host = "127.0.0.1"
port = {relay_port}
tls = "none"
max_connections = 2
"#,
        list = list.display(),
        body = body.display(),
        dir = dir.display(),
    );
    let path = dir.join("loop.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn blast(args: &[&str], campaign: &Path) -> (i32, String) {
    let out = Blast::new()
        .args(args)
        .arg(campaign)
        .env(SECRET_VAR, SECRET)
        .output();
    (out.status().code().unwrap_or(-1), out.text())
}

fn summary_number(summary: &str, prefix: &str, word: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{summary}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.trim_end_matches(',') == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words[i - 1].parse().unwrap()
}

/// The bounce log's JSON lines.
fn bounce_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn lines_for<'a>(log: &'a [serde_json::Value], address: &str) -> Vec<&'a serde_json::Value> {
    log.iter().filter(|v| v["address"] == address).collect()
}

#[test]
fn postfix_dsns_feed_the_suppression_list() {
    let started = Instant::now();
    let dir = test_dir("dsn-loop");
    let hard = SmtpSink::start_with(&["-f", "RCPT", "-B", "550 5.1.1 No such user here"]);
    let soft = SmtpSink::start_with(&["-r", "RCPT", "-b", "451 4.7.1 Greylisted, try later"]);
    let ok = SmtpSink::start();
    let sink_port = free_port();
    let transport = format!(
        "transport_maps = inline:{{ hard.test=smtp:[127.0.0.1]:{}, soft.test=smtp:[127.0.0.1]:{}, {BOUNCE_DOMAIN}=smtp:[127.0.0.1]:{sink_port} }}",
        hard.port(),
        soft.port()
    );
    let relay = PostfixNodes::start_with(
        1,
        ok.port(),
        &[
            &transport,
            "delay_warning_time = 10s",
            "queue_run_delay = 10s",
            "minimal_backoff_time = 10s",
            "maximal_backoff_time = 10s",
            "maximal_queue_lifetime = 30s",
            "bounce_queue_lifetime = 30s",
        ],
    );
    let db = dir.join("suppression.sqlite");
    let log_path = dir.join("bounces.jsonl");
    let sink = Sink::start(sink_port, &db, &log_path, &dir);
    let path = campaign(&dir, relay.ports()[0]);
    let rows = (HARD.len() + SOFT.len() + OK.len()) as u64;

    // 1. The first send: the relay accepts everything; it finds out later.
    let (code, summary) = blast(&["send", "--quiet"], &path);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary_number(&summary, "outcomes", "accepted"), rows);
    assert!(!summary.contains("suppressed"), "{summary}");

    // 2. Wait for Postfix's DSNs: a bounce per hard row, a delay warning and (after 30 s) an
    //    expiry bounce per soft row. Bounded: the whole loop takes about a minute.
    let deadline = Instant::now() + Duration::from_secs(100);
    let done = |log: &[serde_json::Value]| {
        HARD.iter()
            .all(|a| lines_for(log, a).iter().any(|v| v["outcome"] == "bounced"))
            && SOFT.iter().all(|a| {
                let l = lines_for(log, a);
                l.iter().any(|v| v["outcome"] == "delayed")
                    && l.iter().any(|v| v["outcome"] == "soft_bounced")
            })
    };
    let log = loop {
        let log = bounce_log(&log_path);
        if done(&log) {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "DSNs missing after {:?}; bounce log:\n{}\nsink stdout:\n{}\npostfix log: {}",
            started.elapsed(),
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            std::fs::read_to_string(dir.join("sink.stdout")).unwrap_or_default(),
            relay.log_file(0).display()
        );
        std::thread::sleep(Duration::from_millis(250));
    };

    // The bounce log: one line per DSN, naming the row from the VERP token.
    let list = Suppressions::open(&db).unwrap();
    for a in HARD {
        let l = lines_for(&log, a);
        assert_eq!(l.len(), 1, "{l:?}");
        let v = l[0];
        assert_eq!(v["campaign"], "loop");
        assert_eq!(v["status"], "5.1.1");
        assert_eq!(v["reason"], "user_unknown");
        assert_eq!(v["hard"], true);
        assert_eq!(v["suppressed"], true);
        assert!(v["row"].as_u64().is_some_and(|r| (1..=rows).contains(&r)));
        let e = list.get(a).unwrap().expect("hard bounce suppressed");
        assert_eq!(e.reason, "user_unknown");
        assert_eq!(e.campaign.as_deref(), Some("loop"));
        assert_eq!(e.row, v["row"].as_u64());
    }
    // Deferrals never suppress: not the delay warning, not the expiry bounce (a soft bounce
    // counts once towards the limit of 3).
    for a in SOFT {
        for v in lines_for(&log, a) {
            assert_eq!(v["hard"], false, "{v}");
            assert_eq!(v["suppressed"], false, "{v}");
            assert_eq!(v["status"], "4.7.1", "{v}");
        }
        assert!(!list.contains(a).unwrap(), "{a} suppressed");
        assert_eq!(list.soft_count(a).unwrap(), 1, "{a}");
    }
    for a in OK {
        assert!(lines_for(&log, a).is_empty(), "{a}: {log:?}");
        assert!(!list.contains(a).unwrap());
    }
    assert_eq!(list.len().unwrap(), HARD.len() as u64);
    drop(list);

    // 3. `blast status` shows the bounces per reason for this campaign.
    let (code, status) = blast(&["status", "--json"], &path);
    assert_eq!(code, 0, "{status}");
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    let b = &v["bounces"];
    assert_eq!(b["suppressed"], HARD.len() as u64, "{v}");
    assert_eq!(
        b["by_reason"]["user_unknown"]["hard"],
        HARD.len() as u64,
        "{v}"
    );
    assert_eq!(b["by_reason"]["policy"]["soft"], SOFT.len() as u64, "{v}");
    assert_eq!(
        b["by_reason"]["policy"]["delayed"],
        SOFT.len() as u64,
        "{v}"
    );
    let (_, text) = blast(&["status"], &path);
    assert!(text.contains("bounces"), "{text}");

    // 4. The next send skips the hard-bounced rows, and mails the rest again.
    let (code, summary) = blast(&["send", "--quiet", "--new-run"], &path);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(
        summary_number(&summary, "suppressed", "rows"),
        HARD.len() as u64,
        "{summary}"
    );
    assert_eq!(
        summary_number(&summary, "outcomes", "accepted"),
        (SOFT.len() + OK.len()) as u64,
        "{summary}"
    );

    let (code, err) = sink.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("sink stopped"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "{:?}",
        started.elapsed()
    );
    drop(relay);
    remove_dir_unless_panicking(&dir);
}
