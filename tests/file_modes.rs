//! Files that hold recipients' addresses are created private (mode 0600, like the DKIM keys):
//! the journal (and its -wal/-shm and -log/-log2 files), the delivery log, the rejects file,
//! the suppression list (and its -wal/-shm), `suppress export --out`, and the sink's bounce log
//! and quarantined messages. Issue 13: they were 0644.
//!
//! A real `blast send` (the binary) into blast's in-process receiver (a `permfail+` row is
//! refused with 550 5.1.1 at RCPT, so the send itself creates the suppression list), then the
//! bounce sink, in process, receiving one DSN and one message it quarantines.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blast::bounce::sink::{SinkOptions, start};
use blast::bounce::suppression::Suppressions;
use blast::journal::Journal;
use blast::smtp::receiver::{Receiver, ReceiverOptions, Script};
use blast::verp::VerpKey;
use common::Blast;

const SECRET_VAR: &str = "BLAST_FILE_MODES_TEST_SECRET";
const SECRET: &str = "file-modes-secret-0123456789";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every path whose mode is not 0600, with its mode.
fn not_private(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter(|p| mode(p) != 0o600)
        .map(|p| format!("{} is {:o}", p.display(), mode(p)))
        .collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_campaign(dir: &Path, port: u16) -> PathBuf {
    let toml = dir.join("campaign.toml");
    std::fs::write(
        &toml,
        format!(
            r#"id = "modes"

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

[smtp]
helo = "feeder.example.com"

[output]
delivery_log = "delivery.jsonl"
rejects = "rejects.csv"
journal = "journal.sqlite"

[suppression]
path = "suppression.sqlite"

[[node]]
name = "n1"
host = "127.0.0.1"
port = {port}
tls = "none"
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("list.csv"),
        "email,name\nann@example.org,Ann\npermfail+bob@example.org,Bob\nnot-an-address,Eve\n",
    )
    .unwrap();
    toml
}

/// One SMTP transaction to the sink (blocking; the sink runs on the test's runtime).
fn deliver(addr: SocketAddr, rcpt: &str, body: &str) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut reply = |expect: &str| {
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(line.starts_with(expect), "expected {expect}, got {line:?}");
    };
    reply("220");
    for (cmd, expect) in [
        ("EHLO mx.test".to_string(), "250"),
        ("MAIL FROM:<>".to_string(), "250"),
        (format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        write!(w, "{cmd}\r\n").unwrap();
        reply(expect);
    }
    write!(w, "{}\r\n.\r\n", body.replace('\n', "\r\n")).unwrap();
    reply("250");
    write!(w, "QUIT\r\n").unwrap();
    reply("221");
}

const DSN: &str = "From: MAILER-DAEMON@mx.example.org\n\
To: b@bounce.example.com\n\
Subject: Undelivered Mail Returned to Sender\n\
MIME-Version: 1.0\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\n\
\n\
--BB\n\
Content-Type: text/plain\n\
\n\
Delivery failed.\n\
\n\
--BB\n\
Content-Type: message/delivery-status\n\
\n\
Reporting-MTA: dns; mx.example.org\n\
\n\
Final-Recipient: rfc822; ann@example.org\n\
Action: failed\n\
Status: 5.1.1\n\
Diagnostic-Code: smtp; 550 5.1.1 user unknown\n\
\n\
--BB--\n";

#[test]
fn files_holding_addresses_are_created_0600() {
    let dir = common::test_dir("file-modes");
    // The premise: this process's umask lets ordinary files be read by others, so a private
    // file is blast's doing.
    let control = dir.join("control");
    std::fs::write(&control, "x").unwrap();
    assert_ne!(
        mode(&control) & 0o044,
        0,
        "umask already private; test meaningless"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rx = rt
        .block_on(Receiver::start(ReceiverOptions {
            script: Some(Script::default()),
            ..ReceiverOptions::default()
        }))
        .unwrap();
    let toml = write_campaign(&dir, rx.addr().port());
    let send = Blast::new()
        .arg("send")
        .arg(&toml)
        .env(SECRET_VAR, SECRET)
        .timeout(Duration::from_secs(120))
        .output();
    assert_eq!(send.code(), 1, "one row refused: {}", send.text());

    let journal = dir.join("journal.sqlite");
    let list = dir.join("suppression.sqlite");
    let paths = [
        journal.clone(),
        dir.join("delivery.jsonl"),
        dir.join("rejects.csv"),
        list.clone(),
    ];
    let mut bad = not_private(&paths);
    // SQLite's -wal and -shm exist while a connection is open: open both databases.
    let j = Journal::open(&journal).unwrap();
    assert!(j.last_run("modes").unwrap().is_some());
    // The journal's crash-safe logs exist while a writer runs (a clean close removes them).
    let run = j
        .create_run("modes", "l", "t", Path::new("list.csv"))
        .unwrap();
    let w = j.writer(run, 16).unwrap();
    let logs = [
        with_suffix(&journal, "-log"),
        with_suffix(&journal, "-log2"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !logs.iter().all(|l| l.exists()) {
        assert!(std::time::Instant::now() < deadline, "no {logs:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    bad.extend(not_private(&logs));
    w.close().unwrap();
    let s = Suppressions::open(&list).unwrap();
    assert!(
        s.contains("permfail+bob@example.org").unwrap(),
        "suppressed at RCPT"
    );
    let wal_shm = |db: &Path| [with_suffix(db, "-wal"), with_suffix(db, "-shm")];
    let open_files: Vec<PathBuf> = wal_shm(&journal)
        .into_iter()
        .chain(wal_shm(&list))
        .collect();
    bad.extend(not_private(&open_files));
    drop((j, s));

    // suppress export --out.
    let export = dir.join("export.csv");
    let o = Blast::new()
        .args(["suppress", "--db"])
        .arg(&list)
        .args(["export", "--out"])
        .arg(&export)
        .output();
    assert!(o.success(), "{}", o.text());
    bad.extend(not_private(std::slice::from_ref(&export)));

    // The sink: a DSN for a valid token (suppression list, bounce log) and a message it
    // cannot act on (quarantine).
    let sink_db = dir.join("sink").join("bounces.sqlite");
    let bounce_log = dir.join("sink").join("bounces.jsonl");
    let quarantine = dir.join("sink").join("quarantine");
    let key = VerpKey::new(SECRET.as_bytes()).unwrap();
    let mut o = SinkOptions::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec!["bounce.example.com".into()],
        sink_db.clone(),
    );
    o.key = Some(key.clone());
    o.bounce_log = Some(bounce_log.clone());
    o.quarantine = Some(quarantine.clone());
    let sink = rt.block_on(start(o)).unwrap();
    let token = key.encode("modes", 1, "ann@example.org");
    deliver(sink.addr(), &format!("b-{token}@bounce.example.com"), DSN);
    deliver(
        sink.addr(),
        "b-nothing@bounce.example.com",
        "From: someone@example.net\nSubject: hi\n\nA human reply.\n",
    );
    let stats = rt.block_on(sink.shutdown());
    assert_eq!((stats.suppressed, stats.quarantined), (1, 1), "{stats:?}");
    let quarantined: Vec<PathBuf> = std::fs::read_dir(&quarantine)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1);
    let sink_files: Vec<PathBuf> = [sink_db.clone(), bounce_log]
        .into_iter()
        .chain(quarantined)
        .collect();
    bad.extend(not_private(&sink_files));
    let s = Suppressions::open(&sink_db).unwrap();
    assert!(s.contains("ann@example.org").unwrap());
    bad.extend(not_private(&wal_shm(&sink_db)));
    drop(s);
    if mode(&quarantine) & 0o077 != 0 {
        bad.push(format!(
            "the quarantine directory {} is {:o}",
            quarantine.display(),
            mode(&quarantine)
        ));
    }

    assert!(bad.is_empty(), "not 0600:\n{}", bad.join("\n"));
    drop(rx);
    common::remove_dir_unless_panicking(&dir);
}
