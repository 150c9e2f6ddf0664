//! The `blast` binary as an operator runs it: `check`, `preview` and a dry-run `send`, with
//! their exit codes and output. `preview` output is parsed by Python's `email` package (an
//! independent MIME implementation), so these tests need `python3` on the PATH.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Blast, BlastOutput};

const SECRET: &str = "cli-test-secret-0123456789abcdef";

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `blast ARGS` from the project directory, with `env` on top of the clean environment for the
/// variables blast reads (other variables, e.g. PATH, are inherited).
fn blast(args: &[&str], env: &[(&str, &str)]) -> BlastOutput {
    Blast::new().args(args).envs(env.iter().copied()).output()
}

fn example_env() -> [(&'static str, &'static str); 2] {
    [
        ("BLAST_SECRET", SECRET),
        ("BLAST_RELAY_PASSWORD", "relay-password"),
    ]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-tmp")).join(format!(
            "cli-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Parses an RFC 5322 message with Python's `email` package (policy=default) and returns
/// what it saw as JSON.
fn python_parse(message: &[u8]) -> serde_json::Value {
    const SCRIPT: &str = r#"
import sys, json, email, email.policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
defects = []
for part in m.walk():
    defects += [type(d).__name__ + ": " + str(d) for d in part.defects]
    for name, value in part.items():
        defects += [name + ": " + type(d).__name__ for d in getattr(value, "defects", ())]
plain = m.get_body(("plain",))
html = m.get_body(("html",))
print(json.dumps({
    "defects": defects,
    "keys": [k.lower() for k in m.keys()],
    "subject": str(m["subject"]),
    "to": str(m["to"]),
    "to_name": m["to"].addresses[0].display_name,
    "to_addr": m["to"].addresses[0].addr_spec,
    "from": str(m["from"]),
    "message_id": str(m["message-id"]),
    "list_unsubscribe": str(m["list-unsubscribe"]),
    "list_unsubscribe_post": str(m["list-unsubscribe-post"]),
    "content_type": m.get_content_type(),
    "parts": [p.get_content_type() for p in m.iter_parts()],
    "text": plain.get_content() if plain is not None else None,
    "html": html.get_content() if html is not None else None,
}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to run this test");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `file:line:col: message` problem lines of `blast check`'s stderr, for `file`.
fn problem_lines(stderr: &str, file: &str) -> Vec<(usize, usize, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix(file)?.strip_prefix(':')?;
            let mut it = rest.splitn(3, ':');
            let line = it.next()?.parse().ok()?;
            let col = it.next()?.parse().ok()?;
            Some((line, col, it.next()?.trim().to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_lists_every_problem_with_file_line_col_and_exits_2() {
    let dir = TempDir::new("broken");
    fs::write(dir.0.join("list.csv"), "email\na@example.com\n").unwrap();
    let toml = r#"id = "Not Valid"

[from]
address = "news-at-example.com"

[envelope]
verp = "bounce@bounce.example.com"

[message]
subject = "Hi"
text = "Hello"

[recipients]
path = "list.csv"
delimiter = ";;"

[limits]
queue_depth = 0

[[node]]
name = "no-host"
"#;
    let path = dir.0.join("broken.toml");
    fs::write(&path, toml).unwrap();
    let file = path.to_str().unwrap();
    let o = blast(&["check", file], &[("BLAST_SECRET", SECRET)]);
    assert_eq!(o.code(), 2, "{o:?}");
    let stderr = o.stderr();
    let problems = problem_lines(&stderr, file);
    assert!(
        stderr.contains(&format!("{} problems found", problems.len())),
        "{stderr}"
    );
    // Every problem, each at its value (line and column computed from the file above).
    let at = |needle: &str| {
        let offset = toml.find(needle).unwrap();
        let line = toml[..offset].matches('\n').count() + 1;
        let col = offset - toml[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    };
    let expected = [
        (at("\"Not Valid\""), "invalid campaign id"),
        (at("\"news-at-example.com\""), "from.address"),
        (at("\"bounce@bounce"), "{token}"),
        (at("\";;\""), "recipients.delimiter"),
        (at("0\n"), "queue_depth"),
        (at("[[node]]"), "needs host"),
    ];
    assert_eq!(problems.len(), expected.len(), "{stderr}");
    for ((line, col), fragment) in expected {
        assert!(
            problems
                .iter()
                .any(|(l, c, m)| (*l, *c) == (line, col) && m.contains(fragment)),
            "no {fragment:?} at {line}:{col} in\n{stderr}"
        );
    }
    assert!(o.stdout_bytes().is_empty(), "{}", o.stdout());
}

#[test]
fn check_reports_template_and_environment_problems_together() {
    let dir = TempDir::new("late");
    fs::write(
        dir.0.join("list.csv"),
        "email,first_name\na@example.com,Ann\n",
    )
    .unwrap();
    fs::write(dir.0.join("body.txt"), "Hello\n{{ first_nmae }}\n").unwrap();
    let toml = r#"id = "late"

[from]
address = "news@example.com"

[envelope]
verp = "b-{token}@bounce.example.com"

[message]
subject = "Hi"
text_file = "body.txt"

[recipients]
path = "list.csv"

[[node]]
host = "relay.example.com"
auth_user = "blast"
password_env = "BLAST_RELAY_PASSWORD"
"#;
    let path = dir.0.join("late.toml");
    fs::write(&path, toml).unwrap();
    // check sends nothing: the missing secrets are warnings ("needed to send"), and the
    // template's unknown variable is still found, with its file and line.
    let body = dir.0.join("body.txt");
    let unknown = format!("{}:2: template uses \"first_nmae\"", body.display());
    for env in [&[][..], &example_env()[..]] {
        let o = blast(&["check", path.to_str().unwrap()], env);
        assert_eq!(o.code(), 2);
        let stderr = o.stderr();
        assert!(stderr.contains("1 problem found"), "{stderr}");
        assert!(stderr.contains(&unknown), "{stderr}");
        let warned = stderr.contains("warning: needed to send: environment variable BLAST_SECRET is not set")
            && stderr.contains("warning: needed to send: node \"relay.example.com:25\": environment variable BLAST_RELAY_PASSWORD");
        assert_eq!(warned, env.is_empty(), "{stderr}");
    }
    // send needs both: problems, before anything is sent.
    let o = blast(&["send", "--dry-run", path.to_str().unwrap()], &[]);
    assert_eq!(o.code(), 2);
    let stderr = o.stderr();
    assert!(
        stderr.contains("BLAST_SECRET is not set: it must hold"),
        "{stderr}"
    );
    assert!(
        stderr.contains("BLAST_RELAY_PASSWORD (its AUTH password) is not set"),
        "{stderr}"
    );
}

#[test]
fn check_example_with_secrets_exits_0() {
    let o = blast(&["check", "campaigns/example.toml"], &example_env());
    let stdout = o.stdout();
    assert_eq!(o.code(), 0, "{stdout}\n{}", o.stderr());
    assert!(stdout.contains("campaign   spring-sale-2026 (Spring sale 2026)"));
    assert!(
        stdout.contains("sampled    8 rows: 6 accepted, 2 rejected, 6 rendered"),
        "{stdout}"
    );
    assert!(stdout.contains("node       relay-1 relay1.example.com:25"));
    // The rejected rows, with their reasons, and where send writes them all.
    assert!(
        stdout.contains("  row 5 (line 6): empty address"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  row 7 (line 8): invalid address"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rejects    `blast send` writes every rejected row with its reason to "),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("ok"));

    // On a fresh clone (no secrets set) the example checks, with warnings for what only
    // send needs; preview works too.
    let o = blast(&["check", "campaigns/example.toml"], &[]);
    assert_eq!(o.code(), 0, "{}", o.stderr());
    assert_eq!(o.stdout().lines().last(), Some("ok"));
    let stderr = o.stderr();
    assert!(
        stderr.contains(
            "blast: warning: needed to send: environment variable BLAST_SECRET is not set"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("blast: warning: needed to send: node \"relay-1\": environment variable BLAST_RELAY_PASSWORD"),
        "{stderr}"
    );
    let o = blast(&["preview", "campaigns/example.toml", "--row", "1"], &[]);
    assert_eq!(o.code(), 0, "{}", o.stderr());
    assert!(
        o.stdout()
            .contains("Subject: Alice, our spring sale starts today")
    );
}

// ---------------------------------------------------------------------------------------------
// preview
// ---------------------------------------------------------------------------------------------

#[test]
fn preview_is_a_valid_mime_message() {
    let o = blast(
        &["preview", "campaigns/example.toml", "--row", "1"],
        &example_env(),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr());
    let m = python_parse(o.stdout_bytes());
    assert_eq!(m["defects"], serde_json::json!([]), "{m:#}");
    assert_eq!(m["subject"], "Alice, our spring sale starts today");
    assert_eq!(m["to_name"], "Alice Archer");
    assert_eq!(m["to_addr"], "alice@example.com");
    assert_eq!(m["from"], "Example Shop <news@example.com>");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["parts"], serde_json::json!(["text/plain", "text/html"]));
    let text_part = m["text"].as_str().unwrap().replace("\r\n", "\n");
    assert!(text_part.starts_with("Hello Alice,\n\n"), "{text_part}");
    assert!(text_part.contains("30% off"), "the pro branch: {text_part}");
    let html = m["html"].as_str().unwrap();
    assert!(html.contains("<h1 style=\"color: #2a7d2e;\">Hello Alice!</h1>"));
    assert!(html.contains("Free pick-up in our Berlin store."));
    assert!(
        m["list_unsubscribe"]
            .as_str()
            .unwrap()
            .contains("<https://shop.example.com/unsubscribe/1-"),
        "{m:#}"
    );
    assert_eq!(m["list_unsubscribe_post"], "List-Unsubscribe=One-Click");
    let keys: Vec<&str> = m["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(!keys.contains(&"bcc"));
    // stderr names the envelope.
    let stderr = o.stderr();
    assert!(
        stderr.contains("row 1 → alice@example.com (MAIL FROM:<b-spring-sale-2026-1-"),
        "{stderr}"
    );
    // Deterministic apart from the Date and the MIME boundary.
    let again = blast(
        &["preview", "campaigns/example.toml", "--row", "1"],
        &example_env(),
    );
    assert_eq!(
        python_parse(again.stdout_bytes())["message_id"],
        m["message_id"]
    );
}

#[test]
fn preview_encodes_non_ascii_names() {
    let o = blast(
        &["preview", "campaigns/example.toml", "--row", "3"],
        &example_env(),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr());
    let head_end = o
        .stdout_bytes()
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap();
    assert!(o.stdout_bytes()[..head_end].is_ascii(), "headers are 7-bit");
    let m = python_parse(o.stdout_bytes());
    assert_eq!(m["defects"], serde_json::json!([]), "{m:#}");
    assert_eq!(m["subject"], "Zoë, our spring sale starts today");
    assert_eq!(m["to_name"], "Zoë Żółć");
    assert!(m["html"].as_str().unwrap().contains("Kraków"));
}

#[test]
fn preview_of_a_rejected_row_exits_2() {
    // Row 5 of the example list has an empty address.
    let o = blast(
        &["preview", "campaigns/example.toml", "--row", "5"],
        &example_env(),
    );
    assert_eq!(o.code(), 2);
    assert!(o.stdout_bytes().is_empty());
    let stderr = o.stderr();
    assert!(
        stderr.contains("row 5 was rejected: empty address"),
        "{stderr}"
    );
    // Rows are numbered from 1.
    let o = blast(
        &["preview", "campaigns/example.toml", "--row", "0"],
        &example_env(),
    );
    assert_eq!(o.code(), 2);
    assert!(
        o.stderr().contains("no row 0: rows are numbered from 1"),
        "{}",
        o.stderr()
    );
    // A row past the end of the list.
    let o = blast(
        &["preview", "campaigns/example.toml", "--row", "99"],
        &example_env(),
    );
    assert_eq!(o.code(), 2);
    assert!(
        o.stderr().contains("row 99 not found: the list has 8 rows"),
        "{}",
        o.stderr()
    );
}

#[test]
fn preview_writes_to_a_file_with_out() {
    let dir = TempDir::new("preview-out");
    let out = dir.0.join("row2.eml");
    let o = blast(
        &[
            "preview",
            "campaigns/example.toml",
            "--row",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        &example_env(),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr());
    assert!(o.stdout_bytes().is_empty());
    let m = python_parse(&fs::read(&out).unwrap());
    assert_eq!(m["defects"], serde_json::json!([]));
    // The domain is lowercased, the local part kept.
    assert_eq!(m["to_addr"], "bob@example.org");
    assert_eq!(m["subject"], "Bob, our spring sale starts today");
}

// ---------------------------------------------------------------------------------------------
// send --dry-run
// ---------------------------------------------------------------------------------------------

/// A copy of campaigns/demo.toml in `dir`, its list and outputs under `dir/out`.
fn demo_copy(dir: &TempDir) -> std::path::PathBuf {
    let templates = project().join("templates");
    let demo = fs::read_to_string(project().join("campaigns/demo.toml")).unwrap();
    assert!(demo.contains("../out/demo/") && demo.contains("../templates/"));
    let copy = demo
        .replace("../templates/", &format!("{}/", templates.display()))
        .replace("../out/demo/", "out/");
    let path = dir.0.join("demo.toml");
    fs::write(&path, copy).unwrap();
    path
}

/// The application log goes through a background writer: the lines written just before the
/// process exits must still reach stderr (the writer is flushed, not forgotten).
#[test]
fn the_last_log_line_before_exit_reaches_stderr() {
    let dir = TempDir::new("last-log-line");
    let path = demo_copy(&dir);
    for _ in 0..3 {
        let o = blast(
            &[
                "send",
                path.to_str().unwrap(),
                "--dry-run",
                "--limit",
                "10",
                "--quiet",
            ],
            &[("RUST_LOG", "blast=debug")],
        );
        assert_eq!(o.code(), 0, "{}", o.stderr());
        let stderr = o.stderr();
        assert!(
            stderr
                .lines()
                .last()
                .is_some_and(|l| l.contains("exiting: ")),
            "the last log line is missing:\n{stderr}"
        );
    }
}

#[test]
fn dry_run_send_of_the_demo_prints_a_summary() {
    // A copy of campaigns/demo.toml whose list and outputs live in a temp dir, so the test
    // writes nothing into the repository. The list is generated there on first use.
    let dir = TempDir::new("demo");
    let path = demo_copy(&dir);

    let o = blast(
        &[
            "send",
            path.to_str().unwrap(),
            "--dry-run",
            "--limit",
            "2000",
            "--quiet",
            "--summary-json",
            dir.0.join("summary.json").to_str().unwrap(),
        ],
        &[],
    );
    let stdout = o.stdout();
    assert_eq!(o.code(), 0, "{stdout}\n{}", o.stderr());
    // The same numbers, machine-readable.
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.0.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rows"]["read"], 2000, "{summary}");
    assert_eq!(summary["rows"]["rejected"], 0, "{summary}");
    assert_eq!(summary["rows"]["rendered"], 2000, "{summary}");
    assert_eq!(summary["dry_run"], true, "{summary}");
    assert_eq!(summary["result"], "done", "{summary}");
    assert_eq!(summary["exit_code"], 0, "{summary}");
    assert_eq!(
        summary["run"],
        serde_json::Value::Null,
        "a dry run has no journal run"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("rows       2000 read, 0 rejected, 2000 rendered"),
        "{stdout}"
    );
    assert!(lines.contains(&"dry run    nothing sent"), "{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with("time       ")),
        "{stdout}"
    );
    assert_eq!(lines.last().copied(), Some("result     done, exit code 0"));
    // --quiet: the summary only (no progress lines).
    assert!(
        lines.iter().all(|l| [
            "rows ",
            "  rejected",
            "dry run",
            "time ",
            "result ",
            "embedded "
        ]
        .iter()
        .any(|p| l.starts_with(p))),
        "{stdout}"
    );
    // The demo list was generated beside the copy (200,000 rows plus the header); a dry run
    // writes no delivery log, rejects file or journal.
    let list = dir.0.join("out/recipients.csv");
    let rows = fs::read_to_string(&list).unwrap().lines().count();
    assert_eq!(rows, 200_001);
    let mut written: Vec<String> = fs::read_dir(dir.0.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["recipients.csv"]);
    assert!(dir.0.join("summary.json").exists());
    // The embedded-only demo runs without a secret, with a warning.
    assert!(o.stderr().contains("BLAST_SECRET is not set"));
}

/// The demo keeps one run's output: its first send says it is writing the list (a pause of a
/// few seconds otherwise unexplained), and `--new-run` replaces the previous run's journal and
/// delivery log instead of appending to them (the embedded receiver only: nothing left the
/// machine, nothing is worth keeping).
#[test]
fn the_demo_says_it_writes_its_list_and_new_run_starts_over() {
    let dir = TempDir::new("demo-new-run");
    let path = demo_copy(&dir);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("generate = 200000"));
    fs::write(&path, text.replace("generate = 200000", "generate = 3000")).unwrap();
    let log = dir.0.join("out/delivery.jsonl");
    let lines = || fs::read_to_string(&log).unwrap().lines().count();

    let o = blast(&["send", path.to_str().unwrap(), "--quiet"], &[]);
    assert_eq!(o.code(), 0, "{}", o.stderr());
    assert!(
        o.stderr()
            .contains("blast: writing the demo list (3000 rows) to "),
        "{}",
        o.stderr()
    );
    assert_eq!(lines(), 3000);
    let journal_size = fs::metadata(dir.0.join("out/journal.sqlite"))
        .unwrap()
        .len();

    for _ in 0..2 {
        let o = blast(
            &["send", path.to_str().unwrap(), "--quiet", "--new-run"],
            &[],
        );
        assert_eq!(o.code(), 0, "{}", o.stderr());
        let stderr = o.stderr();
        assert!(!stderr.contains("writing the demo list"), "{stderr}");
        assert!(
            stderr.contains("blast: embedded receiver only: --new-run starts over ("),
            "{stderr}"
        );
        assert_eq!(lines(), 3000, "the log holds one run");
        let size = fs::metadata(dir.0.join("out/journal.sqlite"))
            .unwrap()
            .len();
        assert!(
            size <= journal_size + 64 * 1024,
            "journal grew {journal_size} → {size}"
        );
    }
}
