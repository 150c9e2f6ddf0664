//! The real-server test infrastructure works end to end: an smtp-sink, two
//! Postfix relay nodes relaying to it, 20 messages through each node, all 40
//! arrive; and the nodes carry the relay tuning of scripts/postfix-relay-config. And the runner
//! of the `blast` binary (`common::Blast`) keeps its bounds.

mod common;

use common::{Blast, PostfixNodes, SmtpSink, free_port, parse_main_cf, script, send_messages};
use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

const PER_NODE: usize = 20;

#[test]
fn two_postfix_nodes_relay_everything_to_the_sink() {
    let sink = SmtpSink::start();
    let nodes = PostfixNodes::start(2, sink.port());
    let ports = nodes.ports();
    assert_eq!(ports.len(), 2);

    let started = Instant::now();
    let mut expected = BTreeSet::new();
    for (n, port) in ports.iter().enumerate() {
        let subjects: Vec<String> = (0..PER_NODE)
            .map(|i| format!("infra node{} msg{i:02}", n + 1))
            .collect();
        expected.extend(subjects.iter().cloned());
        send_messages(
            *port,
            "sender@blast.test",
            &format!("rcpt{n}@example.test"),
            &subjects,
        )
        .unwrap_or_else(|e| panic!("sending through node {} (127.0.0.1:{port}): {e}", n + 1));
    }

    let want = expected.len();
    let got = sink.wait_for_messages(want, Duration::from_secs(60));
    assert_eq!(
        got,
        want,
        "the sink got {got} of {want} messages within 60 s; node logs: {} {}",
        nodes.log_file(0).display(),
        nodes.log_file(1).display()
    );
    eprintln!("{want} messages relayed in {:.2?}", started.elapsed());

    // Every message arrived exactly once, through a relay (the sink saw Postfix
    // as the client), with its body intact.
    let mut seen = BTreeSet::new();
    for file in sink.messages() {
        let text = fs::read_to_string(&file).unwrap();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("no Subject in {}", file.display()))
            .to_string();
        assert!(
            text.contains("X-Helo-Args: node"),
            "not relayed by a node: {}",
            file.display()
        );
        assert!(
            text.contains(&format!("Test message: {subject}")),
            "body lost in {}",
            file.display()
        );
        assert!(
            text.contains("\n.leading dot line"),
            "dot-stuffing broken in {}",
            file.display()
        );
        assert!(seen.insert(subject.clone()), "duplicate message {subject}");
    }
    assert_eq!(seen, expected);
}

#[test]
fn nodes_carry_the_relay_tuning() {
    let sink = SmtpSink::start();
    let nodes = PostfixNodes::start(2, sink.port());

    // The one list of production settings.
    let out = Command::new(script("postfix-relay-config"))
        .arg("--main")
        .output()
        .unwrap();
    assert!(out.status.success(), "postfix-relay-config --main failed");
    let production = parse_main_cf(&String::from_utf8(out.stdout).unwrap());
    for (name, value) in [
        ("default_process_limit", "1000"),
        ("smtp_destination_concurrency_limit", "0"),
        ("qmgr_message_active_limit", "10000"),
        ("qmgr_message_recipient_limit", "10000"),
        ("hash_queue_names", "defer, deferred, incoming, active"),
        ("smtp_connect_timeout", "30s"),
        ("mynetworks", "127.0.0.0/8"),
        ("compatibility_level", "3.6"),
        ("enable_long_queue_ids", "yes"),
        ("smtpd_peername_lookup", "no"),
        ("mydestination", ""),
        ("alias_maps", ""),
        ("alias_database", ""),
    ] {
        assert_eq!(
            production.get(name).map(String::as_str),
            Some(value),
            "production {name}"
        );
    }

    // Loopback test nodes lower these (documented in scripts/postfix-nodes).
    let overrides = [
        ("default_process_limit", "100"),
        ("smtp_destination_concurrency_limit", "20"),
    ];

    for (i, port) in nodes.ports().into_iter().enumerate() {
        let cf = nodes.main_cf(i);
        let get = |name: &str| cf.get(name).map(String::as_str);
        for (name, value) in &production {
            if name == "maillog_file" {
                continue;
            }
            let want = overrides
                .iter()
                .find(|(n, _)| n == name)
                .map_or(value.as_str(), |(_, v)| v);
            assert_eq!(get(name), Some(want), "node{} {name}", i + 1);
        }
        let node_dir = nodes.dir().join(format!("node{}", i + 1));
        let log = node_dir.join("log").join("postfix.log");
        for (name, value) in [
            ("inet_protocols", "ipv4"),
            ("inet_interfaces", "127.0.0.1"),
            ("smtp_bind_address", "127.0.0.1"),
            ("relayhost", &format!("[127.0.0.1]:{}", sink.port())),
            ("myhostname", &format!("node{}.blast.test", i + 1)),
            ("maillog_file", &log.display().to_string()),
            (
                "data_directory",
                &node_dir.join("data").display().to_string(),
            ),
        ] {
            assert_eq!(get(name), Some(value), "node{} {name}", i + 1);
        }
        assert!(log.is_file(), "no log file {}", log.display());

        // master.cf: a listener on the node's port, no chroot, no port-25 listener.
        let master = fs::read_to_string(nodes.config_dir(i).join("master.cf")).unwrap();
        let services: Vec<Vec<&str>> = master
            .lines()
            .filter(|l| {
                !l.starts_with('#') && !l.starts_with(char::is_whitespace) && !l.trim().is_empty()
            })
            .map(|l| l.split_whitespace().collect())
            .collect();
        let listener = format!("127.0.0.1:{port}");
        assert!(
            services
                .iter()
                .any(|f| f[..3] == [listener.as_str(), "inet", "n"]
                    && f[4] == "n"
                    && f[7] == "smtpd"),
            "node{} master.cf has no smtpd listener on {listener}",
            i + 1
        );
        assert!(
            !services.iter().any(|f| f[0] == "smtp" && f[1] == "inet"),
            "node{} still listens on port 25",
            i + 1
        );
        assert!(
            services.iter().all(|f| f[4] != "y"),
            "node{} has chrooted services",
            i + 1
        );
    }
}

/// `common::Blast`: a blast still running at its time limit is killed and the test fails with
/// what it wrote; `signal("TERM")` stops it the way an operator would.
#[test]
fn blast_runner_kills_at_the_time_limit_and_signals() {
    let dir = common::test_dir("blast-runner");
    let port = free_port();
    // `blast sink` runs until it is signalled.
    let sink = || {
        Blast::new()
            .args(["sink", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--domain", "bounce.runner.test", "--db"])
            .arg(dir.join("suppression.sqlite"))
            .env("BLAST_SECRET", "runner-test-secret-0123456789")
    };
    let started = Instant::now();
    let panic = std::panic::catch_unwind(|| sink().timeout(Duration::from_secs(2)).output())
        .expect_err("blast sink ended by itself");
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("blast did not finish within 2s, killed: `blast sink --listen"),
        "{message}"
    );
    assert!(message.contains("--- stderr ---"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30));

    let mut child = sink().spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().is_none(), "blast sink exited");
        assert!(Instant::now() < deadline, "blast sink did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.signal("TERM");
    let o = child.wait_bounded(Duration::from_secs(10));
    assert_eq!(o.code(), 0, "{o:?}");
    assert!(o.stderr().contains("sink stopped"), "{o:?}");
    common::remove_dir_unless_panicking(&dir);
}
