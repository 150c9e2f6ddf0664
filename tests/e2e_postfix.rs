//! End to end against real Postfix: `blast send` (the binary) into Postfix's `smtp-sink`, and
//! through real Postfix relay instances. Started by the project's own scripts; needs the
//! `postfix` package (scripts/install-deps) and root for the relays.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use blast::generate::{GenOptions, write_recipients};
use blast::verp::VerpKey;
use common::{Blast, PostfixNodes, SmtpSink, remove_dir_unless_panicking, test_dir};

const SECRET_VAR: &str = "BLAST_E2E_SECRET";
const SECRET: &str = "e2e-secret-0123456789";

fn campaign(dir: &Path, list: &Path, nodes: &str) -> std::path::PathBuf {
    let top = env!("CARGO_MANIFEST_DIR");
    let text = format!(
        r#"
id = "e2e"
[from]
name = "E2E Shop"
address = "news@e2e.example"
[envelope]
verp = "b-{{token}}@bounce.e2e.example"
secret_env = "{SECRET_VAR}"
[message]
subject = "{{{{ first_name | default('Hello') }}}}, row {{{{ row }}}}"
to_name = "{{{{ first_name }}}} {{{{ last_name }}}}"
text_file = "{top}/templates/spring.txt"
html_file = "{top}/templates/spring.html"
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
{nodes}
"#,
        list = list.display(),
        dir = dir.display(),
    );
    let path = dir.join("campaign.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn generate(dir: &Path, rows: u64) -> std::path::PathBuf {
    let list = dir.join("recipients.csv");
    let f = std::io::BufWriter::new(std::fs::File::create(&list).unwrap());
    write_recipients(
        f,
        &GenOptions {
            rows,
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    list
}

/// address → (row, first_name, last_name), from the generated list.
fn rows_by_address(list: &Path) -> HashMap<String, (u64, String, String)> {
    let mut r = csv::Reader::from_path(list).unwrap();
    let headers = r.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let (e, f, l) = (col("email"), col("first_name"), col("last_name"));
    let mut map = HashMap::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.unwrap();
        let addr = blast::send::source::check_address(&rec[e]).unwrap();
        map.insert(addr, (i as u64 + 1, rec[f].to_string(), rec[l].to_string()));
    }
    map
}

fn send(campaign: &Path) -> (i32, String) {
    let out = Blast::new()
        .args(["send", "--quiet"])
        .arg(campaign)
        .env(SECRET_VAR, SECRET)
        .output();
    (out.status().code().unwrap_or(-1), out.text())
}

fn summary_number(summary: &str, prefix: &str, word: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in summary:\n{summary}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.trim_end_matches(',') == word)
        .unwrap();
    words[i - 1].parse().unwrap()
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

#[test]
fn hundred_thousand_recipients_into_smtp_sink() {
    let dir = test_dir("e2e-sink");
    let rows = 100_000;
    let list = generate(&dir, rows);
    let sink = SmtpSink::start();
    let path = campaign(
        &dir,
        &list,
        &format!(
            "[[node]]\nname = \"sink\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nmax_connections = 16\nmessages_per_connection = 5000\n",
            sink.port()
        ),
    );
    let (code, summary) = send(&path);
    assert_eq!(code, 0, "{summary}");
    let accepted = summary_number(&summary, "outcomes", "accepted");
    assert_eq!(accepted, rows, "{summary}");

    // What reached the sink equals what blast says was accepted.
    let dumped = sink.wait_for_messages(rows as usize, Duration::from_secs(60));
    assert_eq!(sink.completed_count() as u64, accepted);
    assert_eq!(dumped as u64, accepted);
    let log = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap();
    assert_eq!(log.lines().count() as u64, rows);

    // Personalised content on a sample of the dumped messages.
    let by_addr = rows_by_address(&list);
    let key = VerpKey::new(SECRET.as_bytes()).unwrap();
    let files = sink.messages();
    for f in files.iter().step_by(files.len() / 200) {
        let raw = std::fs::read(f).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let rcpt = header(&text, "X-Rcpt-Args")
            .unwrap()
            .trim_matches(['<', '>']);
        let (row, first, last) = by_addr
            .get(rcpt)
            .unwrap_or_else(|| panic!("{rcpt} not in the list"));
        let mail_from = header(&text, "X-Mail-Args").unwrap();
        let from_addr = mail_from.split_whitespace().next().unwrap();
        let token = from_addr
            .trim_matches(['<', '>'])
            .strip_prefix("b-")
            .and_then(|t| t.split('@').next())
            .unwrap();
        assert_eq!(key.decode(token).unwrap(), ("e2e".to_string(), *row));

        let body_start = text.find("\nReceived:").unwrap();
        let msg = mail_parser::MessageParser::default()
            .parse(&raw[body_start + 1..])
            .unwrap();
        let subject = msg.subject().unwrap();
        let greeting = if first.is_empty() { "Hello" } else { first };
        assert_eq!(subject, format!("{greeting}, row {row}"));
        let to = msg.to().unwrap().first().unwrap();
        assert_eq!(to.address().unwrap(), rcpt);
        assert_eq!(to.name().unwrap_or(""), format!("{first} {last}").trim());
        let html = msg.body_html(0).unwrap();
        let name = if first.is_empty() { "there" } else { first };
        assert!(html.contains(&format!("Hello {name}!")), "{html}");
        assert!(
            msg.message_id()
                .unwrap()
                .starts_with(&format!("e2e.{row:x}."))
        );
    }
}

#[test]
fn through_two_real_postfix_relays() {
    let dir = test_dir("e2e-relays");
    let rows = 2_000;
    let list = generate(&dir, rows);
    let sink = SmtpSink::start();
    let relays = PostfixNodes::start(2, sink.port());
    let ports = relays.ports();
    let nodes: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "[[node]]\nname = \"relay-{i}\"\nhost = \"127.0.0.1\"\nport = {p}\ntls = \"none\"\nmax_connections = 8\n"
            )
        })
        .collect();
    let path = campaign(&dir, &list, &nodes);
    let (code, summary) = send(&path);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary_number(&summary, "outcomes", "accepted"), rows);

    // Every accepted line carries the relay's queue id, and both relays took traffic.
    let log = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap();
    let mut per_node: HashMap<String, u64> = HashMap::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["outcome"], "accepted");
        assert!(
            v["queue_id"].as_str().is_some_and(|q| q.len() >= 8),
            "{line}"
        );
        *per_node
            .entry(v["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 2, "{per_node:?}");
    assert!(per_node.values().all(|&n| n > rows / 10), "{per_node:?}");

    // The relays deliver everything to the sink.
    let got = sink.wait_for_messages(rows as usize, Duration::from_secs(180));
    assert_eq!(got as u64, rows);
    remove_dir_unless_panicking(&dir);
}
