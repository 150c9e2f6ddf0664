//! Faults of real relay nodes: blast (the binary) → real Postfix relay instances → Postfix's
//! `smtp-sink`, all on 127.0.0.1, all started by the project's scripts (tests/common).
//!
//! - 50,000 recipients through 2 relays while one relay is stopped (`postfix stop`) in the
//!   middle and started again: nothing lost, the stopped node is marked down and re-admitted
//!   (summary and `blast status` show its down/up events), and it takes traffic again.
//! - STARTTLS against a relay with a self-signed certificate: trusted through `[smtp] ca_file`
//!   everything is accepted; without it the handshake fails, nothing is accepted and blast
//!   exits 75 after `retry.all_nodes_down`.
//! - AUTH against a relay with Cyrus SASL (sasldb, PLAIN/LOGIN after STARTTLS) that relays only
//!   for authenticated clients: the password from the environment works, a wrong one is refused.
//!
//! Needs root and the Debian packages of scripts/install-deps (postfix, sasl2-bin, openssl).
//! The misbehaving-node cases that need scripted replies (421/451 storms, tarpits, drops in
//! the middle of DATA, per-RCPT 5xx) are in tests/send.rs against in-process servers.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blast::generate::{GenOptions, write_recipients};
use common::{Blast, BlastChild, PostfixNodes, SmtpSink, test_dir};

const SECRET_VAR: &str = "BLAST_FAULTS_SECRET";
const SECRET: &str = "faults-secret-0123456789";
const PASSWORD_VAR: &str = "BLAST_FAULTS_RELAY_PASSWORD";

/// Removes a test directory when the test passes; keeps it (and says where) when it panics.
struct RemoveOnPass(PathBuf);

impl Drop for RemoveOnPass {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn campaign(dir: &Path, list: &Path, extra: &str, nodes: &str) -> PathBuf {
    let top = env!("CARGO_MANIFEST_DIR");
    let text = format!(
        r#"
id = "faults"
[from]
name = "Faults Shop"
address = "news@faults.example"
[envelope]
verp = "b-{{token}}@bounce.faults.example"
secret_env = "{SECRET_VAR}"
[message]
subject = "{{{{ first_name | default('Hello') }}}}, row {{{{ row }}}}"
to_name = "{{{{ first_name }}}} {{{{ last_name }}}}"
text_file = "{top}/templates/spring.txt"
html_file = "{top}/templates/spring.html"
[recipients]
path = "{list}"
[unsubscribe]
url = "https://shop.faults.example/u/{{{{ unsubscribe_token }}}}"
[output]
delivery_log = "{dir}/delivery.jsonl"
rejects = "{dir}/rejects.csv"
journal = "{dir}/journal.sqlite"
{extra}
{nodes}
"#,
        list = list.display(),
        dir = dir.display(),
    );
    let path = dir.join("campaign.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn generate(dir: &Path, rows: u64) -> PathBuf {
    let list = dir.join("recipients.csv");
    let f = std::io::BufWriter::new(std::fs::File::create(&list).unwrap());
    write_recipients(
        f,
        &GenOptions {
            rows,
            seed: 11,
            broken_per_million: 0,
            ..Default::default()
        },
    )
    .unwrap();
    list
}

/// `blast send --quiet CAMPAIGN` in the background, with its output in a file (`blast.out`
/// beside the campaign); killed if dropped while running.
struct Sending {
    child: BlastChild,
    started: Instant,
}

impl Sending {
    fn start(campaign: &Path, env: &[(&str, &str)]) -> Sending {
        let child = Blast::new()
            .args(["send", "--quiet"])
            .arg(campaign)
            .env(SECRET_VAR, SECRET)
            .envs(env.iter().copied())
            .output_to(campaign.with_file_name("blast.out"))
            .spawn();
        Sending {
            child,
            started: Instant::now(),
        }
    }

    /// Waits for blast to exit, until at most `limit` after its start (then kills it and
    /// panics with its output): (exit code, output).
    fn wait(self, limit: Duration) -> (i32, String) {
        let o = self
            .child
            .wait_bounded(limit.saturating_sub(self.started.elapsed()));
        (o.status().code().unwrap_or(-1), o.text())
    }
}

fn send(campaign: &Path, env: &[(&str, &str)], limit: Duration) -> (i32, String) {
    Sending::start(campaign, env).wait(limit)
}

/// The number just before `word` on the summary line starting with `prefix` (and containing
/// `contains`).
fn summary_number(summary: &str, prefix: &str, contains: &str, word: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains(contains))
        .unwrap_or_else(|| panic!("no {prefix:?}/{contains:?} line in summary:\n{summary}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.trim_end_matches(',') == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words[i - 1].parse().unwrap()
}

/// (recipient (X-Rcpt-Args), the relay's queue id) of each message `smtp-sink` dumped.
fn sink_recipients(sink: &SmtpSink) -> Vec<(String, String)> {
    sink.messages()
        .iter()
        .map(|f| {
            let mut head = vec![0u8; 2048];
            let n = std::fs::File::open(f).unwrap().read(&mut head).unwrap();
            let text = String::from_utf8_lossy(&head[..n]);
            // "by nodeN.blast.test (Postfix) with ESMTP id QUEUEID" in the relay's Received.
            let qid = text
                .split_once("(Postfix) with ")
                .and_then(|(_, rest)| rest.split_once(" id "))
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no relay queue id in {}", f.display()))
                .trim_end_matches(';')
                .to_string();
            let rcpt = text
                .lines()
                .find_map(|l| l.strip_prefix("X-Rcpt-Args: "))
                .unwrap_or_else(|| panic!("no X-Rcpt-Args in {}", f.display()))
                // "<rcpt> ORCPT=rfc822;rcpt" when a Postfix relay passed it on
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_matches(['<', '>'])
                .to_string();
            (rcpt, qid)
        })
        .collect()
}

fn list_addresses(list: &Path) -> HashSet<String> {
    let mut r = csv::Reader::from_path(list).unwrap();
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "email")
        .unwrap();
    r.records()
        .map(|rec| blast::send::source::check_address(&rec.unwrap()[col]).unwrap())
        .collect()
}

fn relay_nodes(ports: &[u16], extra: &str) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "[[node]]\nname = \"relay-{}\"\nhost = \"127.0.0.1\"\nport = {p}\n{extra}\n",
                i + 1
            )
        })
        .collect()
}

/// `blast status` of the campaign.
fn status(campaign: &Path) -> String {
    Blast::new().arg("status").arg(campaign).output().text()
}

#[test]
fn fifty_thousand_through_two_relays_one_stopped_and_restarted() {
    let dir = test_dir("faults-restart");
    let _remove = RemoveOnPass(dir.clone());
    let rows: u64 = 50_000;
    let list = generate(&dir, rows);
    let sink = SmtpSink::start();
    // Queues on tmpfs: the relays' disk queue, not blast, would set the pace (and the time).
    let relays = PostfixNodes::start_tmpfs(2, sink.port(), &[]);
    let path = campaign(
        &dir,
        &list,
        "[limits]\nqueue_depth = 2000\n\
         [retry]\nattempts = 30\nbackoff = \"1s\"\nmax_backoff = \"4s\"\nall_nodes_down = \"60s\"\n\
         [smtp]\nhelo = \"feeder.faults.example\"\nconnect_timeout = \"5s\"\n\
         command_timeout = \"30s\"\ndata_timeout = \"30s\"\n",
        &relay_nodes(
            &relays.ports(),
            "tls = \"none\"\nmax_connections = 8\nmessages_per_connection = 1000",
        ),
    );
    let blast = Sending::start(&path, &[]);

    // Stop relay-1 once a fifth of the list went through, start it again 5 s later.
    let t0 = Instant::now();
    let got = sink.wait_for_messages(rows as usize / 5, Duration::from_secs(120));
    assert!(got >= rows as usize / 5, "only {got} messages at the sink");
    let stopped_at = t0.elapsed();
    relays.stop_node(0);
    std::thread::sleep(Duration::from_secs(5));
    relays.start_node(0);
    let restarted_at = t0.elapsed();

    let (code, summary) = blast.wait(Duration::from_secs(400));
    let sent_in = t0.elapsed();
    eprintln!(
        "relay-1 stopped at {stopped_at:?}, started at {restarted_at:?}; blast done at {sent_in:?}\n{summary}"
    );
    assert_eq!(code, 0, "{summary}");
    let accepted = summary_number(&summary, "outcomes", "", "accepted");
    assert_eq!(accepted, rows, "{summary}");
    assert_eq!(summary_number(&summary, "outcomes", "", "failed"), 0);
    assert_eq!(summary_number(&summary, "outcomes", "", "unfinished"), 0);
    let dups = summary_number(&summary, "retries", "", "possibly");

    // The stopped node was marked down, came back, and took traffic again.
    let health: Vec<&str> = summary
        .lines()
        .filter(|l| l.trim_start().starts_with("health") && l.contains("relay-1"))
        .collect();
    let down = health.iter().position(|l| l.contains(" down "));
    let up = health.iter().rposition(|l| l.contains(" up "));
    assert!(
        matches!((down, up), (Some(d), Some(u)) if d < u),
        "relay-1 should go down, then up:\n{summary}"
    );
    let after_up = summary_number(health[up.unwrap()], "", "", "accepted");
    assert!(
        after_up > 1000,
        "relay-1 took {after_up} after coming back:\n{summary}"
    );
    let relay2_accepted = summary_number(&summary, "node", "relay-2", "accepted");
    let relay1_accepted = summary_number(&summary, "node", "relay-1", "accepted");
    assert_eq!(relay1_accepted + relay2_accepted, rows);
    assert!(
        !summary
            .lines()
            .any(|l| l.contains("health") && l.contains("relay-2") && l.contains(" down ")),
        "relay-2 never went down:\n{summary}"
    );

    // The journal has the same history (`blast status`).
    let st = status(&path);
    assert!(
        st.lines()
            .any(|l| l.starts_with("health") && l.contains("relay-1") && l.contains(" down ")),
        "{st}"
    );
    assert!(
        st.lines()
            .any(|l| l.starts_with("health") && l.contains("relay-1") && l.contains(" up ")),
        "{st}"
    );

    // Every recipient reached the sink (relay-1 delivers what it queued before the stop
    // after its restart). Copies beyond one per recipient can come from two places, told
    // apart by the relay's queue id: blast sending again a message cut off after its final
    // dot (another relay queue id; must be among blast's "possibly duplicated"), and a relay
    // redelivering a message it had passed on when it was stopped (Postfix's own
    // at-least-once: the same relay queue id twice).
    let got = sink.wait_for_messages(rows as usize, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    let got = got.max(sink.message_count()) as u64;
    assert!(got >= rows, "only {got} of {rows} at the sink");
    let copies = sink_recipients(&sink);
    assert_eq!(copies.len() as u64, got);
    let mut by_rcpt: std::collections::HashMap<&str, HashSet<&str>> = Default::default();
    for (rcpt, qid) in &copies {
        by_rcpt.entry(rcpt).or_default().insert(qid);
    }
    let blast_copies: u64 = by_rcpt.values().map(|q| q.len() as u64 - 1).sum();
    let relay_copies = got - rows - blast_copies;
    eprintln!(
        "sink: {got} messages, {} recipients; {blast_copies} sent again by blast ({dups} possibly duplicated), {relay_copies} redelivered by a relay",
        by_rcpt.len()
    );
    assert!(blast_copies <= dups, "{blast_copies} > {dups}");
    if dups == 0 && relay_copies == 0 {
        assert_eq!(got, accepted, "the sink's count equals blast's accepted");
    }
    let received: HashSet<String> = copies.into_iter().map(|(r, _)| r).collect();
    let expected = list_addresses(&list);
    assert_eq!(expected.len() as u64, rows);
    let missing: Vec<_> = expected.difference(&received).take(5).collect();
    assert!(missing.is_empty(), "not at the sink: {missing:?}");
    assert_eq!(received.len() as u64, rows);
    let log = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap();
    assert_eq!(log.lines().count() as u64, rows);
}

/// A self-signed certificate for relay.blast.test (and 127.0.0.1): (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("relay.pem"), dir.join("relay.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=relay.blast.test",
            "-addext",
            "subjectAltName=DNS:relay.blast.test,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Test files: readable by the Postfix daemons.
    use std::os::unix::fs::PermissionsExt;
    for f in [&cert, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    (cert, key)
}

fn tls_settings(cert: &Path, key: &Path) -> Vec<String> {
    vec![
        format!("smtpd_tls_cert_file = {}", cert.display()),
        format!("smtpd_tls_key_file = {}", key.display()),
        "smtpd_tls_security_level = may".into(),
        "smtpd_tls_received_header = yes".into(),
    ]
}

const TLS_EXTRA: &str = "[retry]\nbackoff = \"1s\"\nall_nodes_down = \"3s\"\n\
    [smtp]\nhelo = \"feeder.faults.example\"\nconnect_timeout = \"5s\"\n";

#[test]
fn starttls_to_postfix_with_a_self_signed_certificate() {
    let dir = test_dir("faults-tls");
    let _remove = RemoveOnPass(dir.clone());
    let rows = 300;
    let list = generate(&dir, rows);
    let (cert, key) = self_signed(&dir);
    let sink = SmtpSink::start();
    let settings = tls_settings(&cert, &key);
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let relays = PostfixNodes::start_with(1, sink.port(), &settings);
    let node = relay_nodes(
        &relays.ports(),
        "tls = \"starttls\"\ntls_server_name = \"relay.blast.test\"\nmax_connections = 4",
    );

    // Trusted through ca_file: everything goes through, over TLS.
    let trusted = dir.join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    let extra = format!("{TLS_EXTRA}ca_file = \"{}\"\n", cert.display());
    let path = campaign(&trusted, &list, &extra, &node);
    let (code, summary) = send(&path, &[], Duration::from_secs(120));
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary_number(&summary, "outcomes", "", "accepted"), rows);
    let got = sink.wait_for_messages(rows as usize, Duration::from_secs(60));
    assert_eq!(got as u64, rows);
    // Postfix notes the TLS session in its Received header.
    let first = std::fs::read_to_string(&sink.messages()[0]).unwrap();
    assert!(
        first.contains("using TLSv1.3") || first.contains("using TLSv1.2"),
        "{first}"
    );

    // Without the CA: the certificate does not verify, the node is down, nothing is sent,
    // and blast gives up after all_nodes_down with exit 75.
    let untrusted = dir.join("untrusted");
    std::fs::create_dir(&untrusted).unwrap();
    let path = campaign(&untrusted, &list, TLS_EXTRA, &node);
    let (code, summary) = send(&path, &[], Duration::from_secs(60));
    assert_eq!(code, 75, "{summary}");
    assert_eq!(
        summary_number(&summary, "outcomes", "", "accepted"),
        0,
        "{summary}"
    );
    assert!(summary.contains("no node reachable"), "{summary}");
    let down = summary
        .lines()
        .find(|l| l.contains("health") && l.contains(" down "))
        .unwrap_or_else(|| panic!("no down event:\n{summary}"));
    assert!(
        down.to_lowercase().contains("certificate") || down.contains("UnknownIssuer"),
        "{down}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.completed_count() as u64,
        rows,
        "nothing more reached the sink"
    );
}

/// The relay's main.cf settings for AUTH through Cyrus SASL.
fn sasl_settings() -> Vec<String> {
    vec![
        "smtpd_sasl_auth_enable = yes".into(),
        "smtpd_sasl_type = cyrus".into(),
        "smtpd_sasl_path = smtpd".into(),
        "smtpd_sasl_local_domain = blast.test".into(),
        "smtpd_sasl_security_options = noanonymous".into(),
        "smtpd_tls_auth_only = yes".into(),
        // Relay for authenticated clients only (loopback is in mynetworks, so say it here).
        "smtpd_relay_restrictions = permit_sasl_authenticated, reject".into(),
    ]
}

/// Cyrus SASL for node 0 of `relays`: a sasldb in `dir` with one user, and the node's
/// `sasl/smtpd.conf` (Debian's Postfix reads CONFIG_DIR/sasl/smtpd.conf and ignores
/// `cyrus_sasl_config_path`). An smtpd process reads it when it starts, and the one spawned
/// by the start-up greeting check may still be around: the node is restarted.
fn sasl_user(relays: &PostfixNodes, dir: &Path, user: &str, password: &str) {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let sasl = relays.config_dir(0).join("sasl");
    std::fs::create_dir_all(&sasl).unwrap();
    let db = dir.join("sasldb2");
    std::fs::write(
        sasl.join("smtpd.conf"),
        format!(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
            db.display()
        ),
    )
    .unwrap();
    let mut child = Command::new("saslpasswd2")
        .args(["-p", "-c", "-f"])
        .arg(&db)
        .args(["-u", "blast.test", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("saslpasswd2 (Debian package sasl2-bin; scripts/install-deps installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "saslpasswd2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [sasl.join("smtpd.conf"), db] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    relays.stop_node(0);
    relays.start_node(0);
}

#[test]
fn auth_against_postfix_with_cyrus_sasl() {
    let dir = test_dir("faults-auth");
    let _remove = RemoveOnPass(dir.clone());
    let rows = 200;
    let list = generate(&dir, rows);
    let (cert, key) = self_signed(&dir);
    let password = "relay-pass-4711";
    let mut settings = tls_settings(&cert, &key);
    settings.extend(sasl_settings());
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let sink = SmtpSink::start();
    let relays = PostfixNodes::start_with(1, sink.port(), &settings);
    sasl_user(&relays, &dir, "blast", password);
    let node = relay_nodes(
        &relays.ports(),
        &format!(
            "tls = \"starttls\"\ntls_server_name = \"relay.blast.test\"\nmax_connections = 4\n\
             auth_user = \"blast\"\npassword_env = \"{PASSWORD_VAR}\""
        ),
    );
    let extra = format!("{TLS_EXTRA}ca_file = \"{}\"\n", cert.display());

    // The right password, from the environment: everything is relayed.
    let good = dir.join("good");
    std::fs::create_dir(&good).unwrap();
    let path = campaign(&good, &list, &extra, &node);
    let (code, summary) = send(&path, &[(PASSWORD_VAR, password)], Duration::from_secs(120));
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary_number(&summary, "outcomes", "", "accepted"), rows);
    assert_eq!(
        sink.wait_for_messages(rows as usize, Duration::from_secs(60)) as u64,
        rows
    );
    let first = std::fs::read_to_string(&sink.messages()[0]).unwrap();
    assert!(
        first.contains("Authenticated sender") || first.contains("ESMTPSA"),
        "{first}"
    );

    // A wrong password: AUTH is refused, the node is down, nothing is sent, exit 75.
    let bad = dir.join("bad");
    std::fs::create_dir(&bad).unwrap();
    let path = campaign(&bad, &list, &extra, &node);
    let (code, summary) = send(&path, &[(PASSWORD_VAR, "wrong")], Duration::from_secs(60));
    assert_eq!(code, 75, "{summary}");
    assert_eq!(summary_number(&summary, "outcomes", "", "accepted"), 0);
    let down = summary
        .lines()
        .find(|l| l.contains("health") && l.contains(" down "))
        .unwrap_or_else(|| panic!("no down event:\n{summary}"));
    assert!(
        down.contains("535") || down.contains("authentication"),
        "{down}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.completed_count() as u64, rows);
}
