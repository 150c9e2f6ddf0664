//! `blast sink` on loopback: relay refusal, size, connection limit, timeouts, VERP trust, and a
//! real DSN from the corpus landing in the suppression list.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use blast::bounce::sink::{SinkHandle, SinkOptions, start};
use blast::bounce::suppression::Suppressions;
use blast::verp::VerpKey;
use common::{Blast, BlastOutput};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const SECRET: &[u8] = b"sink-test-secret-0123456789";
const T: Duration = Duration::from_secs(5);

fn key() -> VerpKey {
    VerpKey::new(SECRET).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blast-sink-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn sink(name: &str, f: impl FnOnce(&mut SinkOptions)) -> (SinkHandle, PathBuf) {
    let dir = tmp(name);
    let db = dir.join("s.sqlite");
    let mut o = SinkOptions::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec!["bounce.test".into()],
        db.clone(),
    );
    o.key = Some(key());
    o.quarantine = Some(dir.join("q"));
    f(&mut o);
    (start(o).await.unwrap(), db)
}

struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// One whole reply (multi-line joined); empty string on EOF.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if timeout(T, self.r.read_line(&mut line))
                .await
                .unwrap()
                .unwrap()
                == 0
            {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    async fn data(&mut self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        self.w.write_all(out.as_bytes()).await.unwrap();
        self.reply().await
    }

    /// Greeting + EHLO + MAIL FROM:<>.
    async fn start(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        assert!(c.reply().await.starts_with("220"));
        assert!(c.cmd("EHLO mx.test").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
        c
    }
}

fn corpus(file: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/bounces/eml/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn refuses_to_relay_and_disables_vrfy() {
    let (s, _) = sink("relay", |_| {}).await;
    let mut c = Client::start(s.addr()).await;
    assert!(
        c.cmd("RCPT TO:<victim@example.com>")
            .await
            .starts_with("550 5.7.1")
    );
    assert!(
        c.cmd("RCPT TO:<x@bounce.test.evil.com>")
            .await
            .starts_with("550 5.7.1")
    );
    assert!(c.cmd("RCPT TO:<b-x@BOUNCE.test>").await.starts_with("250"));
    assert!(c.cmd("VRFY postmaster").await.starts_with("502"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    s.shutdown().await;
}

#[tokio::test]
async fn oversize_message_gets_552() {
    let (s, _) = sink("size", |o| o.max_size = 200).await;
    let mut c = Client::connect(s.addr()).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO mx.test").await;
    assert!(ehlo.contains("SIZE 200"), "{ehlo}");
    assert!(c.cmd("MAIL FROM:<> SIZE=5000").await.starts_with("552"));
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b-x@bounce.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(c.data(&vec![b'x'; 1000]).await.starts_with("552"));
    s.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_wait() {
    let (s, _) = sink("conns", |o| o.max_connections = 1).await;
    let mut first = Client::connect(s.addr()).await;
    assert!(first.reply().await.starts_with("220"));
    let mut second = Client::connect(s.addr()).await;
    let mut line = String::new();
    let early = timeout(Duration::from_millis(400), second.r.read_line(&mut line)).await;
    assert!(
        early.is_err(),
        "second session served while the first holds the only slot: {line:?}"
    );
    assert!(first.cmd("QUIT").await.starts_with("221"));
    assert!(second.reply().await.starts_with("220"));
    s.shutdown().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let (s, _) = sink("slow", |o| {
        o.command_timeout = Duration::from_millis(300);
        o.data_timeout = Duration::from_millis(600);
    })
    .await;
    // Idle at the command prompt.
    let mut c = Client::connect(s.addr()).await;
    c.reply().await;
    let started = std::time::Instant::now();
    assert!(c.reply().await.starts_with("421"));
    assert!(c.reply().await.is_empty(), "connection closed after 421");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Trickling the body: one byte every 100 ms never ends before the data deadline.
    let mut c = Client::start(s.addr()).await;
    assert!(c.cmd("RCPT TO:<b-x@bounce.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let started = std::time::Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        if c.w.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
        let mut line = String::new();
        if let Ok(Ok(_)) = timeout(Duration::from_millis(100), c.r.read_line(&mut line)).await {
            assert!(line.is_empty() || line.starts_with("421"), "{line}");
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickling client was never cut off");
    assert!(started.elapsed() < Duration::from_secs(3));
    s.shutdown().await;
}

#[tokio::test]
async fn real_dsn_suppresses_and_forged_token_does_not() {
    let (s, db) = sink("dsn", |_| {}).await;
    let k = key();
    // A Gmail "5.1.1 does not exist" DSN from the corpus, for a valid VERP address.
    let valid = format!(
        "b-{}@bounce.test",
        k.encode("spring", 42, "neko-nyaan@example.org")
    );
    let mut c = Client::start(s.addr()).await;
    assert!(
        c.cmd(&format!("RCPT TO:<{valid}>"))
            .await
            .starts_with("250")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(
        c.data(&corpus("rhost-google-02.eml"))
            .await
            .starts_with("250")
    );
    // Another hard bounce, to a token with a forged MAC: accepted, never acted upon.
    let t = k.encode("spring", 43, "neko-nyaan@example.org");
    let forged = format!(
        "b-{}{}@bounce.test",
        &t[..t.len() - 1],
        if t.ends_with('a') { 'b' } else { 'a' }
    );
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(
        c.cmd(&format!("RCPT TO:<{forged}>"))
            .await
            .starts_with("250")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(
        c.data(&corpus("lhost-postfix-06.eml"))
            .await
            .starts_with("250")
    );
    // A soft bounce (policy block) is counted, not suppressed.
    let soft = blast::bounce::dsn::classify(&corpus("lhost-exim-01.eml"));
    let soft_rcpt = format!(
        "b-{}@bounce.test",
        k.encode("spring", 44, &soft.recipients[0].address)
    );
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(
        c.cmd(&format!("RCPT TO:<{soft_rcpt}>"))
            .await
            .starts_with("250")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(
        c.data(&corpus("lhost-exim-01.eml"))
            .await
            .starts_with("250")
    );
    c.cmd("QUIT").await;
    let stats = s.shutdown().await;
    assert_eq!(stats.messages, 3);
    assert_eq!(stats.forged, 1);
    assert_eq!(stats.soft, 1, "the soft bounce to its own token is counted");
    let list = Suppressions::open(&db).unwrap();
    let e = list
        .get("neko-nyaan@example.org")
        .unwrap()
        .expect("suppressed");
    assert_eq!(e.reason, "user_unknown");
    assert_eq!((e.campaign.as_deref(), e.row), (Some("spring"), Some(42)));
    let forged_rcpt = blast::bounce::dsn::classify(&corpus("lhost-postfix-06.eml"));
    for r in &forged_rcpt.recipients {
        assert!(
            !list.contains(&r.address).unwrap(),
            "forged token suppressed {}",
            r.address
        );
    }
    assert_eq!(
        list.len().unwrap(),
        1,
        "only the hard bounce with a valid token"
    );
}

#[test]
fn smtp_parser_survives_random_bytes() {
    // Random command soup over real sockets would be slow; the parser is reached the same way
    // through a session, so a few hundred bounded sessions suffice.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (s, _) = sink("fuzz", |o| o.command_timeout = Duration::from_millis(200)).await;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let pieces: &[&[u8]] = &[
            b"EHLO a\r\n",
            b"MAIL FROM:<>\r\n",
            b"RCPT TO:<b-x@bounce.test>\r\n",
            b"DATA\r\n",
            b".\r\n",
            b"\r\n",
            b"RSET\r\n",
            b"BDAT 10\r\n",
            b"\xff\x00",
            b"<",
            b"MAIL FROM:<a@b> SIZE=99999999999999999999\r\n",
            b"VRFY\r\n",
            b"NOOP\r\n",
            b"\n",
            b"STARTTLS\r\n",
        ];
        for _ in 0..150 {
            let mut msg = Vec::new();
            for _ in 0..20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(4) {
                    msg.extend(std::iter::repeat_n(
                        (x >> 16) as u8,
                        (x >> 40) as usize % 50,
                    ));
                } else {
                    msg.extend_from_slice(pieces[(x >> 8) as usize % pieces.len()]);
                }
            }
            msg.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let mut c = TcpStream::connect(s.addr()).await.unwrap();
            let _ = c.write_all(&msg).await;
            let mut buf = Vec::new();
            let _ = timeout(T, tokio::io::AsyncReadExt::read_to_end(&mut c, &mut buf)).await;
        }
        // Still serving.
        let mut c = Client::start(s.addr()).await;
        assert!(c.cmd("QUIT").await.starts_with("221"));
        s.shutdown().await;
    });
}

/// Writes a journal in which row `row` of campaign `campaign` was sent to `address`.
fn journal_with(path: &std::path::Path, campaign: &str, rows: &[(u64, &str)]) {
    use blast::journal::Journal;
    use blast::outcome::{Outcome, Status};
    let j = Journal::open(path).unwrap();
    let run = j
        .create_run(campaign, "l", "t", std::path::Path::new("list.csv"))
        .unwrap();
    let w = j.writer(run, 16).unwrap();
    let tx = w.sender();
    for &(row, address) in rows {
        assert!(tx.record(&Outcome {
            row,
            rcpt: address.into(),
            message_id: format!("m{row}@x"),
            status: Status::Accepted,
            node: "n1".into(),
            stage: None,
            reply: None,
            attempts: 1,
            possibly_duplicated: false,
            reason: None,
        }));
    }
    drop(tx);
    w.close().unwrap();
}

async fn send_bounce(c: &mut Client, rcpt: &str, msg: &[u8]) {
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(c.data(msg).await.starts_with("250"));
}

#[tokio::test]
async fn bounced_address_comes_from_the_journal_row_else_the_report() {
    let dir = tmp("journal-src");
    let journal = dir.join("spring.journal.sqlite");
    // Row 7 was sent to an address the DSN does not name (the mail was forwarded, and the
    // forwarding target bounced).
    journal_with(&journal, "spring", &[(7, "Sent.To@Example.NET")]);
    let (s, db) = sink("journal", |o| o.journal = Some(journal.clone())).await;
    let k = key();
    let dsn = corpus("rhost-google-02.eml"); // hard: neko-nyaan@example.org does not exist
    let reported = "neko-nyaan@example.org";
    let mut c = Client::connect(s.addr()).await;
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("EHLO mx.test").await.starts_with("250"));
    // 1. The row is in the journal: its address is the one suppressed.
    send_bounce(
        &mut c,
        &format!(
            "b-{}@bounce.test",
            k.encode("spring", 7, "Sent.To@Example.NET")
        ),
        &dsn,
    )
    .await;
    // 2. A row the journal does not have (yet): the report's Final-Recipient (the address the
    // token was made for).
    let other = corpus("lhost-postfix-06.eml");
    let fallback = blast::bounce::dsn::classify(&other);
    assert_eq!(fallback.recipients.len(), 1);
    send_bounce(
        &mut c,
        &format!(
            "b-{}@bounce.test",
            k.encode("spring", 8, &fallback.recipients[0].address)
        ),
        &other,
    )
    .await;
    // 3. Same row number, another campaign: not this journal's row either.
    send_bounce(
        &mut c,
        &format!("b-{}@bounce.test", k.encode("autumn", 7, reported)),
        &dsn,
    )
    .await;
    c.cmd("QUIT").await;
    let stats = s.shutdown().await;
    assert_eq!(stats.messages, 3);
    let list = Suppressions::open(&db).unwrap();
    let e = list
        .get("sent.to@example.net")
        .unwrap()
        .expect("journal address suppressed");
    assert_eq!((e.campaign.as_deref(), e.row), (Some("spring"), Some(7)));
    assert_eq!(e.reason, "user_unknown");
    assert!(fallback.recipients[0].hard, "{fallback:?}");
    let e = list
        .get(&fallback.recipients[0].address)
        .unwrap()
        .expect("report address suppressed for a row the journal lacks");
    assert_eq!(e.row, Some(8));
    let e = list
        .get(reported)
        .unwrap()
        .expect("other campaign: report address");
    assert_eq!((e.campaign.as_deref(), e.row), (Some("autumn"), Some(7)));
    assert_eq!(list.len().unwrap(), 3);
}

#[tokio::test]
async fn missing_journal_falls_back_to_the_report() {
    let dir = tmp("journal-missing");
    let (s, db) = sink("journal-missing-sink", |o| {
        o.journal = Some(dir.join("not-there.sqlite"))
    })
    .await;
    let mut c = Client::start(s.addr()).await;
    let rcpt = format!(
        "b-{}@bounce.test",
        key().encode("spring", 7, "neko-nyaan@example.org")
    );
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(
        c.data(&corpus("rhost-google-02.eml"))
            .await
            .starts_with("250")
    );
    c.cmd("QUIT").await;
    s.shutdown().await;
    let list = Suppressions::open(&db).unwrap();
    assert!(list.contains("neko-nyaan@example.org").unwrap());
    assert!(
        !dir.join("not-there.sqlite").exists(),
        "the sink never creates the journal"
    );
}

/// `blast ARGS`, with `stdin` fed to it; asserts success.
fn blast_cmd(args: &[&str], stdin: Option<&[u8]>) -> BlastOutput {
    let mut cmd = Blast::new().args(args);
    if let Some(bytes) = stdin {
        cmd = cmd.stdin(bytes);
    }
    let out = cmd.output();
    assert!(out.success(), "blast {args:?}: {}", out.stderr());
    out
}

#[test]
fn suppress_export_import_round_trip() {
    use blast::bounce::suppression::{Entry, Source};
    let dir = tmp("suppress-roundtrip");
    let (a, b) = (dir.join("a.sqlite"), dir.join("b.sqlite"));
    {
        let list = Suppressions::open(&a).unwrap();
        let mut e = Entry::new("Dead@Example.ORG", Source::Bounce, "user_unknown");
        e.status = Some("5.1.1".into());
        // Commas, quotes and a newline must survive the CSV.
        e.diagnostic = Some("550 5.1.1 \"dead\", gone,\nreally".into());
        e.campaign = Some("spring".into());
        e.row = Some(42);
        e.created_at = 1_700_000_000;
        list.add(&e).unwrap();
        let mut e = Entry::new("angry@example.net", Source::Complaint, "complaint");
        e.created_at = 1_700_000_001;
        list.add(&e).unwrap();
        let mut e = Entry::new("flaky@example.com", Source::SoftBounces, "mailbox_full");
        e.diagnostic = Some("3 soft bounces".into());
        e.created_at = 1_700_000_002;
        list.add(&e).unwrap();
        let mut e = Entry::new("asked@example.com", Source::Manual, "unsubscribed by phone");
        e.created_at = 1_700_000_003;
        list.add(&e).unwrap();
    }
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let csv = dir.join("a.csv");
    blast_cmd(
        &[
            "suppress",
            "--db",
            a_s,
            "export",
            "--out",
            csv.to_str().unwrap(),
        ],
        None,
    );
    let exported = std::fs::read_to_string(&csv).unwrap();
    assert!(
        exported.starts_with("address,source,reason,status,diagnostic,campaign,row,created_at\n")
    );
    assert_eq!(
        exported.lines().filter(|l| l.contains('@')).count(),
        4,
        "{exported}"
    );
    // Import into an empty list from a file, then again from stdin: nothing new the second time.
    blast_cmd(
        &["suppress", "--db", b_s, "import", csv.to_str().unwrap()],
        None,
    );
    let again = blast_cmd(
        &["suppress", "--db", b_s, "import", "-"],
        Some(exported.as_bytes()),
    );
    let (ea, eb) = (
        Suppressions::open(&a).unwrap(),
        Suppressions::open(&b).unwrap(),
    );
    assert_eq!(eb.len().unwrap(), 4, "{}", again.stderr());
    for addr in [
        "dead@example.org",
        "angry@example.net",
        "flaky@example.com",
        "asked@example.com",
    ] {
        assert_eq!(
            eb.get(addr).unwrap(),
            ea.get(addr).unwrap(),
            "{addr} changed in the round trip"
        );
    }
    // Byte for byte: exporting the imported list gives the same CSV.
    let out = blast_cmd(&["suppress", "--db", b_s, "export"], None);
    assert_eq!(std::str::from_utf8(out.stdout_bytes()).unwrap(), exported);
    // A plain list (header `email`, one address a line, mixed case, blank line) is accepted too:
    // new addresses get the --reason, known ones are left alone.
    blast_cmd(
        &[
            "suppress",
            "--db",
            b_s,
            "import",
            "-",
            "--reason",
            "legacy-list",
        ],
        Some(b"email\nNEW@Example.com\n\nDEAD@example.org\n"),
    );
    let eb = Suppressions::open(&b).unwrap();
    assert_eq!(eb.len().unwrap(), 5);
    let e = eb.get("new@example.com").unwrap().expect("imported");
    assert_eq!(
        (e.source, e.reason.as_str()),
        (Source::Manual, "legacy-list")
    );
    assert_eq!(
        eb.get("dead@example.org").unwrap().unwrap().reason,
        "user_unknown"
    );
}

#[tokio::test]
async fn soft_bounces_suppress_at_the_limit() {
    use blast::bounce::suppression::Source;
    // A policy block (5.7.0, soft) for the same address, five times, limit 3.
    let soft = corpus("lhost-exim-01.eml");
    let c = blast::bounce::dsn::classify(&soft);
    assert_eq!(c.recipients.len(), 1);
    assert!(!c.recipients[0].hard, "{c:?}");
    let addr = c.recipients[0].address.clone();
    for (limit, expect_suppressed_at) in [(3u32, Some(3u32)), (0, None)] {
        let (s, db) = sink(&format!("soft-limit-{limit}"), |o| {
            o.soft_bounce_limit = limit
        })
        .await;
        let rcpt = format!("b-{}@bounce.test", key().encode("spring", 5, &addr));
        for n in 1..=5u32 {
            let mut cl = Client::start(s.addr()).await;
            assert!(
                cl.cmd(&format!("RCPT TO:<{rcpt}>"))
                    .await
                    .starts_with("250")
            );
            assert!(cl.cmd("DATA").await.starts_with("354"));
            assert!(cl.data(&soft).await.starts_with("250"));
            cl.cmd("QUIT").await;
            // The worker is asynchronous: wait for it to have counted this one.
            let list = Suppressions::open(&db).unwrap();
            let deadline = std::time::Instant::now() + T;
            while list.soft_count(&addr).unwrap() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "soft bounce {n} not counted"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let suppressed = list.get(&addr).unwrap();
            match expect_suppressed_at {
                Some(at) if n >= at => {
                    let e = suppressed.expect("suppressed at the limit");
                    assert_eq!(e.source, Source::SoftBounces);
                    assert_eq!(
                        e.diagnostic.as_deref(),
                        Some("3 soft bounces"),
                        "set once, at the limit"
                    );
                }
                _ => assert!(suppressed.is_none(), "limit {limit}: suppressed after {n}"),
            }
        }
        let stats = s.shutdown().await;
        assert_eq!((stats.messages, stats.soft), (5, 5));
        assert_eq!(stats.suppressed, u64::from(limit == 3));
    }
}

/// The VERP token of `row` of `campaign`, sent to `address`.
fn token(campaign: &str, row: u64, address: &str) -> String {
    key().encode(campaign, row, address)
}

/// A Postfix-style DSN reporting a hard `5.1.1` for each of `recipients`.
fn dsn_naming(recipients: &[&str]) -> Vec<u8> {
    let mut s = String::from(
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n\
         To: b-x@bounce.test\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\r\n\
         \r\n\
         --BB\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         \r\n\
         --BB\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.example.org\r\n",
    );
    for r in recipients {
        s.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <{r}>: Recipient address rejected: User unknown\r\n"
        ));
    }
    s.push_str("\r\n--BB--\r\n");
    s.into_bytes()
}

/// Files in the sink's quarantine directory (`sink()` puts it at `<dir>/q`).
fn quarantined(db: &std::path::Path) -> usize {
    std::fs::read_dir(db.parent().unwrap().join("q"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Issue 13, item 1: every recipient can read their own token from Return-Path, so a report
/// sent to it that names other addresses must not suppress them. Only the token's own address
/// is acted on — found through the journal, or through the address bound into the token.
#[tokio::test]
async fn a_token_suppresses_only_its_own_address() {
    let own = "own@example.org";
    let victims = ["victim1@example.net", "victim2@example.com"];
    let report = dsn_naming(&[victims[0], own, victims[1]]);
    let c = blast::bounce::dsn::classify(&report);
    assert_eq!(c.recipients.len(), 3, "{c:?}");
    assert!(c.recipients.iter().all(|r| c.suppresses(r)), "{c:?}");
    for with_journal in [false, true] {
        let dir = tmp(&format!("own-only-{with_journal}"));
        let journal = dir.join("spring.journal.sqlite");
        if with_journal {
            journal_with(&journal, "spring", &[(9, own), (10, victims[0])]);
        }
        let (s, db) = sink(&format!("own-only-sink-{with_journal}"), |o| {
            if with_journal {
                o.journal = Some(journal.clone());
            }
        })
        .await;
        let mut c = Client::connect(s.addr()).await;
        assert!(c.reply().await.starts_with("220"));
        assert!(c.cmd("EHLO mx.test").await.starts_with("250"));
        let rcpt = format!("b-{}@bounce.test", token("spring", 9, own));
        send_bounce(&mut c, &rcpt, &report).await;
        c.cmd("QUIT").await;
        let stats = s.shutdown().await;
        let list = Suppressions::open(&db).unwrap();
        for v in victims {
            assert!(
                !list.contains(v).unwrap(),
                "journal {with_journal}: {v} suppressed by the token of {own}"
            );
        }
        let e = list.get(own).unwrap().expect("the token's own address");
        assert_eq!((e.campaign.as_deref(), e.row), (Some("spring"), Some(9)));
        assert_eq!(list.len().unwrap(), 1, "journal {with_journal}");
        assert_eq!(stats.suppressed, 1, "journal {with_journal}");
        // The report named addresses the token does not cover: kept for a human.
        assert_eq!(quarantined(&db), 1, "journal {with_journal}");
    }
}

/// Issue 13, item 1: a valid token whose report names an address that is not the token's own
/// acts on nothing and the report is quarantined — without a journal, with a journal that
/// does not have the token's campaign, and with a journal whose row went to another address
/// than the one the token was made for (a later run of a regenerated list).
#[tokio::test]
async fn a_token_never_acts_on_another_address() {
    let alice = "alice@example.org";
    let victim = "victim@example.net";
    for case in ["no-journal", "other-campaign", "row-reused"] {
        let dir = tmp(&format!("not-own-{case}"));
        let journal = dir.join("journal.sqlite");
        match case {
            "other-campaign" => journal_with(&journal, "autumn", &[(3, victim)]),
            "row-reused" => journal_with(&journal, "spring", &[(3, victim)]),
            _ => {}
        }
        let (s, db) = sink(&format!("not-own-sink-{case}"), |o| {
            if case != "no-journal" {
                o.journal = Some(journal.clone());
            }
        })
        .await;
        let mut c = Client::connect(s.addr()).await;
        assert!(c.reply().await.starts_with("220"));
        assert!(c.cmd("EHLO mx.test").await.starts_with("250"));
        let rcpt = format!("b-{}@bounce.test", token("spring", 3, alice));
        send_bounce(&mut c, &rcpt, &dsn_naming(&[victim])).await;
        c.cmd("QUIT").await;
        let stats = s.shutdown().await;
        let list = Suppressions::open(&db).unwrap();
        assert!(
            !list.contains(victim).unwrap(),
            "{case}: {victim} suppressed by the token of {alice}"
        );
        assert_eq!(list.len().unwrap(), 0, "{case}");
        assert_eq!((stats.suppressed, stats.soft), (0, 0), "{case}");
        assert_eq!(quarantined(&db), 1, "{case}: the report is quarantined");
    }
}
