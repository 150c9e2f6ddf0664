//! The shared resolver, domain pre-validation and direct-to-MX delivery against a real DNS
//! server (dnsmasq via `scripts/dns-server`) and real SMTP servers (Postfix's `smtp-sink`),
//! all on 127.0.0.0/8. The resolver is always configured with explicit servers on loopback:
//! never the machine's own resolv.conf upstream.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blast::dns::{Dns, DnsConfig, LookupError, NoMail, Route};
use common::Blast;

/// dnsmasq on 127.0.0.1:PORT, stopped on drop.
struct DnsServer {
    dir: PathBuf,
    port: u16,
}

impl DnsServer {
    fn start(records: &[String]) -> DnsServer {
        let dir = common::test_dir("dns");
        for _ in 0..5 {
            let port = common::free_port();
            let mut args = vec![
                "start".to_string(),
                "--port".into(),
                port.to_string(),
                "--dir".into(),
                dir.display().to_string(),
                "--".into(),
            ];
            args.extend(records.iter().cloned());
            let out = Command::new(common::script("dns-server"))
                .args(&args)
                .output()
                .expect("run scripts/dns-server");
            if out.status.success() {
                return DnsServer { dir, port };
            }
            eprintln!("dns-server: {}", String::from_utf8_lossy(&out.stderr));
        }
        panic!("cannot start dnsmasq (scripts/install-deps installs dnsmasq-base)");
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Queries the server received for `name` and `rtype`.
    fn queries(&self, name: &str, rtype: &str) -> usize {
        let out = Command::new(common::script("dns-server"))
            .args([
                "queries",
                "--dir",
                &self.dir.display().to_string(),
                name,
                rtype,
            ])
            .output()
            .expect("run scripts/dns-server");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = Command::new(common::script("dns-server"))
            .args(["stop", "--dir", &self.dir.display().to_string()])
            .output();
        common::remove_dir_unless_panicking(&self.dir);
    }
}

/// A UDP "DNS server" that answers every query with SERVFAIL, counting them.
struct ServFail {
    port: u16,
    count: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ServFail {
    fn start() -> ServFail {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 12 {
                    continue;
                }
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut r = buf[..n].to_vec();
                r[2] = 0x80 | (r[2] & 0x01); // QR, keep RD
                r[3] = 0x80 | 2; // RA, RCODE = SERVFAIL
                r[6..12].fill(0); // no answer, authority or additional records
                let _ = sock.send_to(&r, from);
            }
        });
        ServFail { port, count, stop }
    }
}

impl Drop for ServFail {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn config(server: &str) -> DnsConfig {
    DnsConfig {
        servers: Some(vec![server.parse().unwrap()]),
        timeout: Duration::from_millis(500),
        attempts: 1,
        ..DnsConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn records() -> Vec<String> {
    [
        "--local=/test/",
        "--mx-host=pref.test,mx-b.pref.test,20",
        "--mx-host=pref.test,mx-a.pref.test,10",
        "--mx-host=pref.test,mx-c.pref.test,30",
        "--host-record=mx-a.pref.test,127.0.0.2",
        "--host-record=mx-b.pref.test,127.0.0.3",
        "--host-record=mx-c.pref.test,127.0.0.4",
        "--host-record=amx.test,127.0.0.5",
        "--mx-host=null.test,.,0",
        "--txt-record=noaddr.test,hello",
        "--txt-record=example.test,v=spf1 -all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn mx_preference_implicit_mx_nxdomain_null_mx() {
    let server = DnsServer::start(&records());
    let rt = rt();
    let dns = Dns::new(&config(&server.addr())).unwrap();
    rt.block_on(async {
        let Route::Hosts(hosts) = dns.mail_route("pref.test", true).await else {
            panic!("pref.test has MX hosts");
        };
        let names: Vec<_> = hosts
            .iter()
            .map(|h| (h.preference, h.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (10, "mx-a.pref.test"),
                (20, "mx-b.pref.test"),
                (30, "mx-c.pref.test")
            ]
        );
        assert_eq!(
            hosts[0].addrs,
            ["127.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            hosts[2].addrs,
            ["127.0.0.4".parse::<std::net::IpAddr>().unwrap()]
        );
        // No MX but an address: the domain is its own MX (RFC 5321 §5.1).
        let Route::Hosts(hosts) = dns.mail_route("amx.test", true).await else {
            panic!("amx.test is an implicit MX");
        };
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].name, "amx.test");
        assert_eq!(
            hosts[0].addrs,
            ["127.0.0.5".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            dns.mail_route("nope.test", false).await,
            Route::NoMail(NoMail::NxDomain)
        );
        assert_eq!(
            dns.mail_route("null.test", false).await,
            Route::NoMail(NoMail::NullMx)
        );
        assert_eq!(
            dns.mail_route("noaddr.test", false).await,
            Route::NoMail(NoMail::NoAddress)
        );
        assert_eq!(
            dns.txt("example.test").await.unwrap(),
            ["v=spf1 -all".to_string()]
        );
        assert_eq!(dns.txt("nope.test").await, Err(LookupError::NxDomain));
    });
}

#[test]
fn positive_and_negative_answers_are_cached() {
    let server = DnsServer::start(&records());
    let rt = rt();
    let mut cfg = config(&server.addr());
    // dnsmasq's local NXDOMAIN carries no SOA: give negative answers a floor.
    cfg.negative_min_ttl = Some(Duration::from_secs(60));
    let dns = Arc::new(Dns::new(&cfg).unwrap());
    rt.block_on(async {
        // 8 concurrent cold lookups of each name, then 8 warm ones.
        for _ in 0..2 {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                for d in ["pref.test", "nope.test", "null.test"] {
                    let dns = dns.clone();
                    tasks.push(tokio::spawn(async move { dns.mail_route(d, true).await }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    });
    assert_eq!(server.queries("pref.test", "MX"), 1);
    assert_eq!(server.queries("mx-a.pref.test", "A"), 1);
    assert_eq!(server.queries("null.test", "MX"), 1);
    assert_eq!(server.queries("nope.test", "MX"), 1, "NXDOMAIN is cached");
}

#[test]
fn servfail_and_timeouts_are_temporary_and_cached_briefly() {
    let fail = ServFail::start();
    // A UDP socket that never answers: timeouts.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut recs = records();
    recs.push(format!("--server=/fail.test/127.0.0.1#{}", fail.port));
    recs.push(format!(
        "--server=/slow.test/127.0.0.1#{}",
        silent.local_addr().unwrap().port()
    ));
    let server = DnsServer::start(&recs);
    let rt = rt();
    let mut cfg = config(&server.addr());
    cfg.error_ttl = Duration::from_secs(60);
    let dns = Dns::new(&cfg).unwrap();
    let (fail_queries, slow_queries, servfails) = rt.block_on(async {
        assert!(matches!(
            dns.mail_route("x.fail.test", false).await,
            Route::Unknown(_)
        ));
        let t = Instant::now();
        assert!(matches!(
            dns.mail_route("x.slow.test", false).await,
            Route::Unknown(_)
        ));
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        // hickory retries over UDP and TCP: a few upstream queries for this one lookup.
        let q = (
            server.queries("x.fail.test", "MX"),
            server.queries("x.slow.test", "MX"),
            fail.count.load(std::sync::atomic::Ordering::Relaxed),
        );
        assert!((1..=4).contains(&q.0) && (1..=4).contains(&q.1), "{q:?}");
        // Again: from blast's own negative cache, at once, without asking upstream.
        for _ in 0..5 {
            let t = Instant::now();
            assert!(matches!(
                dns.mail_route("x.slow.test", false).await,
                Route::Unknown(_)
            ));
            assert!(matches!(
                dns.mail_route("x.fail.test", false).await,
                Route::Unknown(_)
            ));
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );
        }
        q
    });
    // Nothing more went upstream.
    assert_eq!(server.queries("x.fail.test", "MX"), fail_queries);
    assert_eq!(server.queries("x.slow.test", "MX"), slow_queries);
    assert_eq!(
        fail.count.load(std::sync::atomic::Ordering::Relaxed),
        servfails
    );
    assert!(dns.stats.report().error_cache_hits >= 10);
    drop(silent);
}

#[test]
fn error_cache_off_asks_again() {
    let fail = ServFail::start();
    let mut recs = records();
    recs.push(format!("--server=/fail.test/127.0.0.1#{}", fail.port));
    let server = DnsServer::start(&recs);
    let rt = rt();
    let mut cfg = config(&server.addr());
    cfg.error_ttl = Duration::ZERO;
    let dns = Dns::new(&cfg).unwrap();
    rt.block_on(async {
        assert!(matches!(
            dns.mail_route("y.fail.test", false).await,
            Route::Unknown(_)
        ));
        let once = server.queries("y.fail.test", "MX");
        for _ in 0..2 {
            assert!(matches!(
                dns.mail_route("y.fail.test", false).await,
                Route::Unknown(_)
            ));
        }
        assert_eq!(
            server.queries("y.fail.test", "MX"),
            3 * once,
            "SERVFAIL is not cached by hickory"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Whole runs (the blast binary).
// ---------------------------------------------------------------------------------------------

const SECRET_VAR: &str = "BLAST_DNS_TEST_SECRET";

fn write_campaign(dir: &Path, top: &str, body: &str, rows: &[String]) -> PathBuf {
    let mut list = String::from("email\n");
    for r in rows {
        list.push_str(r);
        list.push('\n');
    }
    std::fs::write(dir.join("list.csv"), list).unwrap();
    let text = format!(
        r#"id = "dns-test"
{top}
[from]
address = "news@example.com"
[envelope]
verp = "b-{{token}}@bounce.example.com"
secret_env = "{SECRET_VAR}"
[message]
subject = "Hello"
text = "Hello {{{{ email }}}}"
[recipients]
path = "list.csv"
[smtp]
helo = "feeder.example.com"
connect_timeout = "2s"
[retry]
attempts = 2
backoff = "1s"
max_backoff = "1s"
{body}
"#
    );
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Run {
    code: i32,
    stdout: String,
    log: Vec<serde_json::Value>,
    elapsed: Duration,
}

fn send(campaign: &Path) -> Run {
    let t = Instant::now();
    let out = Blast::new()
        .args(["send", "--quiet"])
        .arg(campaign)
        .env(SECRET_VAR, "dns-tests-secret-0123456789abcdef")
        .timeout(Duration::from_secs(60))
        .output();
    let log_path = campaign.with_file_name("c.delivery.jsonl");
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stdout = out.stdout();
    eprintln!("{stdout}\n{}", out.stderr());
    Run {
        code: out.status().code().unwrap_or(-1),
        stdout,
        log,
        elapsed: t.elapsed(),
    }
}

fn count(log: &[serde_json::Value], f: impl Fn(&serde_json::Value) -> bool) -> usize {
    log.iter().filter(|v| f(v)).count()
}

fn rows(domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i}@{domain}")).collect()
}

#[test]
fn prevalidation_enforce_fails_dead_domains_without_a_relay() {
    let server = DnsServer::start(&[
        "--local=/test/".to_string(),
        "--mx-host=ok.test,mx.ok.test,10".into(),
        "--host-record=mx.ok.test,127.0.0.1".into(),
        "--host-record=relay.test,127.0.0.1".into(),
        "--mx-host=null.test,.,0".into(),
    ]);
    let sink = common::SmtpSink::start_counting();
    let dir = common::test_dir("dns-prevalidate");
    let mut list = rows("ok.test", 20);
    list.extend(rows("nx.test", 7));
    list.extend(rows("null.test", 5));
    let campaign = write_campaign(
        &dir,
        "",
        &format!(
            r#"[dns]
servers = ["{}"]
prevalidate = "enforce"
[[node]]
host = "relay.test"
port = {}
tls = "none"
"#,
            server.addr(),
            sink.port()
        ),
        &list,
    );
    let run = send(&campaign);
    assert_eq!(run.code, 1, "some rows failed");
    assert_eq!(sink.wait_for_messages(20, Duration::from_secs(10)), 20);
    assert_eq!(
        count(&run.log, |v| v["outcome"] == "accepted"
            && v["address"].as_str().unwrap().ends_with("@ok.test")),
        20
    );
    let dead = |v: &serde_json::Value| {
        v["outcome"] == "failed"
            && v["node"] == "dns"
            && v["text"]
                .as_str()
                .unwrap_or("")
                .contains("domain does not accept mail")
    };
    assert_eq!(count(&run.log, dead), 12, "{:?}", run.log.last());
    assert!(
        run.stdout
            .contains("dns        3 domain lookups, 29 cache hits, 2 negative"),
        "{}",
        run.stdout
    );
    // The counters are in the journal: `blast status` shows them (text and --json).
    let status = Blast::new()
        .args(["status", "--json"])
        .arg(&campaign)
        .output();
    assert!(status.success(), "{status:?}");
    let v: serde_json::Value = serde_json::from_slice(status.stdout_bytes()).unwrap();
    assert_eq!(v["dns"]["domain_lookups"], 3, "{v}");
    assert_eq!(v["dns"]["cache_hits"], 29, "{v}");
    assert_eq!(v["dns"]["negative"], 2, "{v}");
    assert_eq!(v["dns"]["rows_failed"], 12, "{v}");
    let text = Blast::new().arg("status").arg(&campaign).output().stdout();
    assert!(
        text.contains("dns        3 domain lookups, 29 cache hits, 2 negative (do not accept mail), 0 temporary failures; 12 rows failed by DNS"),
        "{text}"
    );
    // Each domain asked once; the node's host name resolved through the same resolver.
    assert_eq!(server.queries("ok.test", "MX"), 1);
    assert_eq!(server.queries("nx.test", "MX"), 1);
    assert_eq!(server.queries("relay.test", "A"), 1);
    common::remove_dir_unless_panicking(&dir);
}

#[test]
fn prevalidation_warn_sends_anyway() {
    let server = DnsServer::start(&[
        "--local=/test/".to_string(),
        "--host-record=ok.test,127.0.0.1".into(),
    ]);
    let sink = common::SmtpSink::start_counting();
    let dir = common::test_dir("dns-warn");
    let mut list = rows("ok.test", 5);
    list.extend(rows("nx.test", 5));
    let campaign = write_campaign(
        &dir,
        "",
        &format!(
            "[dns]\nservers = [\"{}\"]\nprevalidate = \"warn\"\n[[node]]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            server.addr(),
            sink.port()
        ),
        &list,
    );
    let run = send(&campaign);
    assert_eq!(run.code, 0);
    assert_eq!(count(&run.log, |v| v["outcome"] == "accepted"), 10);
    assert!(
        run.stdout.contains("5 sent despite a warning"),
        "{}",
        run.stdout
    );
    common::remove_dir_unless_panicking(&dir);
}

/// Postfix's smtp-sink on ADDR:PORT (any 127.0.0.x), with extra arguments; killed on drop.
struct Sink {
    child: Child,
    counters: PathBuf,
}

impl Sink {
    fn start(addr: &str, port: u16, extra: &[&str], dir: &Path) -> Sink {
        let tool = [
            "/usr/sbin/smtp-sink",
            "/usr/lib/postfix/sbin/smtp-sink",
            "smtp-sink",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("smtp-sink");
        let counters = dir.join(format!("{addr}.counters"));
        let mut cmd = Command::new(tool);
        cmd.arg("-c");
        if common::is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(extra)
            .arg(format!("{addr}:{port}"))
            .arg("100")
            .stdout(std::fs::File::create(&counters).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink (Debian postfix; scripts/install-deps)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((addr, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "smtp-sink on {addr}:{port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sink { child, counters }
    }

    /// The most sessions the sink has counted (the start-up probe's connection included).
    fn sessions(&self) -> u64 {
        let text = std::fs::read_to_string(&self.counters).unwrap_or_default();
        text.split(['\r', '\n'])
            .filter_map(|r| r.split_whitespace().find_map(|w| w.strip_prefix("sess=")))
            .filter_map(|n| n.parse().ok())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn direct_delivery_mx_order_fallback_failures_and_limits() {
    let dir = common::test_dir("dns-direct");
    let port = common::free_port();
    // one.test: MX 10 on 127.0.0.9 (nothing listens), MX 20 on sink A at 127.0.0.2.
    // two.test: MX 10 on sink B at 127.0.0.3, which refuses every RCPT (5xx).
    let server = DnsServer::start(&[
        "--local=/test/".to_string(),
        "--mx-host=one.test,dead.mx.test,10".into(),
        "--mx-host=one.test,a.mx.test,20".into(),
        "--host-record=dead.mx.test,127.0.0.9".into(),
        "--host-record=a.mx.test,127.0.0.2".into(),
        "--mx-host=two.test,b.mx2.test,10".into(),
        "--host-record=b.mx2.test,127.0.0.3".into(),
        "--mx-host=null.test,.,0".into(),
    ]);
    let sink_a = Sink::start("127.0.0.2", port, &[], &dir);
    let sink_b = Sink::start("127.0.0.3", port, &["-f", "RCPT"], &dir);
    let mut list = rows("one.test", 40);
    list.extend(rows("two.test", 10));
    list.extend(rows("nx.test", 3));
    list.extend(rows("null.test", 2));
    let campaign = write_campaign(
        &dir,
        "delivery = \"direct\"",
        &format!(
            r#"[dns]
servers = ["{}"]
[direct]
port = {port}
max_connections = 4
tls = "opportunistic"
[[direct.rule]]
domain = "one.test"
rate = "20/s"
[[direct.rule]]
mx_suffix = "mx2.test"
max_connections = 1
"#,
            server.addr()
        ),
        &list,
    );
    let run = send(&campaign);
    assert_eq!(run.code, 1, "two.test, nx.test and null.test failed");
    // one.test: all accepted by the second MX after the first refused connections.
    assert_eq!(
        count(&run.log, |v| v["outcome"] == "accepted"
            && v["node"] == "a.mx.test"),
        40
    );
    // two.test: the MX refused RCPT: failed, final, not retried.
    assert_eq!(
        count(&run.log, |v| v["outcome"] == "failed"
            && v["node"] == "b.mx2.test"
            && v["code"].as_u64().is_some_and(|c| c / 100 == 5)),
        10
    );
    assert_eq!(
        count(&run.log, |v| v["outcome"] == "failed" && v["node"] == "dns"),
        5
    );
    assert_eq!(run.log.len(), 55);
    // The rate rule: 40 messages at 20/s (burst 1) take at least ~2 s.
    assert!(
        run.elapsed >= Duration::from_millis(1800),
        "{:?}",
        run.elapsed
    );
    // The connection rule: one connection at a time to two.test's MX, reused.
    // (Sessions include the probe connection of `Sink::start`.)
    assert_eq!(sink_b.sessions(), 2, "one connection to b.mx2.test");
    assert!(
        (2..=5).contains(&sink_a.sessions()),
        "{}",
        sink_a.sessions()
    );
    assert!(run.stdout.contains("a.mx.test"), "{}", run.stdout);
    drop((sink_a, sink_b));
    common::remove_dir_unless_panicking(&dir);
}

#[test]
fn check_warns_about_missing_spf_and_dmarc() {
    let server = DnsServer::start(&[
        "--local=/test/".to_string(),
        "--txt-record=good.test,v=spf1 ip4:127.0.0.1 -all".into(),
        "--txt-record=_dmarc.good.test,v=DMARC1; p=none".into(),
        "--txt-record=bounce.good.test,v=spf1 ip4:127.0.0.1 -all".into(),
    ]);
    let dir = common::test_dir("dns-check");
    let check = |from: &str| {
        let campaign = write_campaign(
            &dir,
            "",
            &format!(
                "[dns]\nservers = [\"{}\"]\n[[node]]\nhost = \"127.0.0.1\"\ntls = \"none\"\n",
                server.addr()
            ),
            &rows("ok.test", 1),
        );
        let text = std::fs::read_to_string(&campaign)
            .unwrap()
            .replace("news@example.com", from)
            .replace("bounce.example.com", "bounce.good.test");
        std::fs::write(&campaign, text).unwrap();
        let out = Blast::new()
            .arg("check")
            .arg(&campaign)
            .env(SECRET_VAR, "dns-tests-secret-0123456789abcdef")
            .output();
        assert!(out.success(), "{out:?}");
        out.stderr()
    };
    let good = check("news@good.test");
    assert!(!good.contains("SPF") && !good.contains("DMARC"), "{good}");
    let bad = check("news@bad.test");
    assert!(bad.contains("bad.test has no SPF record"), "{bad}");
    assert!(bad.contains("bad.test has no DMARC record"), "{bad}");
    assert_eq!(server.queries("_dmarc.bad.test", "TXT"), 1);
    common::remove_dir_unless_panicking(&dir);
}
