//! `campaign.toml` validation on real files: every error path of `src/campaign/`, each with
//! the exact line and column it must point at, plus valid files (relative paths, the shipped
//! campaigns).
//!
//! Each case writes a campaign file (and the list/templates it refers to) into its own
//! directory under `target/test-tmp/`, loads it with `Campaign::load` and compares the
//! reported problems with positions computed from the fixture text itself: a `^` in the
//! "needle" marks the character the problem must point at.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blast::campaign::{Campaign, CampaignError, NodeAddress, Problem, Rate, TlsSetting};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A fresh directory with a recipient list and a template; removed on drop unless the test
/// failed (then it is kept for inspection).
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-tmp")).join(format!(
            "campaign-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tpl")).unwrap();
        fs::write(
            dir.join("list.csv"),
            "email,first_name,last_name\nann@example.com,Ann,Lee\n",
        )
        .unwrap();
        fs::write(dir.join("tpl/body.txt"), "Hello {{ first_name }}\n").unwrap();
        fs::write(dir.join("tpl/body.html"), "<p>Hello {{ first_name }}</p>\n").unwrap();
        Fixture { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("campaign.toml")
    }

    fn load(&self, text: &str) -> Result<Campaign, CampaignError> {
        fs::write(self.path(), text).unwrap();
        Campaign::load(&self.path())
    }

    fn problems(&self, text: &str) -> Vec<Problem> {
        match self.load(text) {
            Ok(_) => panic!("expected problems, but the campaign loaded:\n{text}"),
            Err(e @ CampaignError::Read { .. }) => panic!("unexpected read error: {e}"),
            Err(e) => e.problems(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fixture kept: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// 1-based line and column (in characters) of the `^` in `needle`, which (without the `^`)
/// must occur exactly once in `text`. Independent of the implementation under test.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    let caret = needle.find('^').unwrap_or(0);
    let plain = needle.replacen('^', "", 1);
    let mut hits = text.match_indices(plain.as_str());
    let (start, _) = hits
        .next()
        .unwrap_or_else(|| panic!("needle {plain:?} not in fixture:\n{text}"));
    assert!(
        hits.next().is_none(),
        "needle {plain:?} occurs more than once in fixture:\n{text}"
    );
    let offset = start + caret;
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A campaign file as ordered sections; `""` is the top level.
#[derive(Clone)]
struct Spec {
    sections: Vec<(String, String)>,
}

impl Spec {
    /// A minimal valid campaign (see `valid_base_loads`).
    fn base() -> Spec {
        Spec {
            sections: [
                ("", "id = \"spring\"\n"),
                (
                    "[from]",
                    "name = \"Example Shop\"\naddress = \"news@example.com\"\n",
                ),
                ("[envelope]", "verp = \"b-{token}@bounce.example.com\"\n"),
                (
                    "[message]",
                    "subject = \"Hello {{ first_name }}\"\ntext = \"Hi {{ first_name }}\"\n",
                ),
                ("[recipients]", "path = \"list.csv\"\n"),
                ("[[node]]", "host = \"relay.example.com\"\n"),
            ]
            .into_iter()
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .collect(),
        }
    }

    /// Replaces the body of `header` (every `[[node]]` when it is `[[node]]`), or adds the
    /// section before the nodes.
    fn set(mut self, header: &str, body: &str) -> Spec {
        let body = format!("{}\n", body.trim_end_matches('\n'));
        if header == "[[node]]" {
            self.sections.retain(|(h, _)| h != "[[node]]");
            self.sections.push((header.to_string(), body));
        } else if let Some(s) = self.sections.iter_mut().find(|(h, _)| h == header) {
            s.1 = body;
        } else {
            let at = self
                .sections
                .iter()
                .position(|(h, _)| h == "[[node]]")
                .unwrap_or(self.sections.len());
            self.sections.insert(at, (header.to_string(), body));
        }
        self
    }

    /// Replaces all nodes.
    fn nodes(mut self, bodies: &[&str]) -> Spec {
        self.sections.retain(|(h, _)| h != "[[node]]");
        for b in bodies {
            self.sections.push((
                "[[node]]".to_string(),
                format!("{}\n", b.trim_end_matches('\n')),
            ));
        }
        self
    }

    fn remove(mut self, header: &str) -> Spec {
        self.sections.retain(|(h, _)| h != header);
        self
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (header, body) in &self.sections {
            if !header.is_empty() {
                out.push('\n');
                out.push_str(header);
                out.push('\n');
            }
            out.push_str(body);
        }
        out
    }
}

/// Loads `text` and asserts exactly one problem, in the campaign file, at the `^` of `needle`,
/// whose message contains `fragment`.
#[track_caller]
fn expect_one(label: &str, text: &str, needle: &str, fragment: &str) {
    let f = Fixture::new(label);
    let problems = f.problems(text);
    let (line, column) = locate(text, needle);
    assert_eq!(
        problems.len(),
        1,
        "{label}: expected one problem, got {problems:#?}\n--- fixture ---\n{text}"
    );
    let p = &problems[0];
    assert_eq!(p.file, f.path(), "{label}: file");
    assert!(
        p.message.contains(fragment),
        "{label}: message {:?} lacks {fragment:?}",
        p.message
    );
    assert_eq!(
        (p.line, p.column),
        (line, column),
        "{label}: wrong position for {:?} (expected at {needle:?})\n--- fixture ---\n{text}",
        p.message
    );
}

// ---------------------------------------------------------------------------------------------
// Valid files
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_base_loads() {
    let f = Fixture::new("base");
    let c = f.load(&Spec::base().text()).unwrap();
    assert_eq!(c.id, "spring");
    assert_eq!(c.name, "spring", "the name defaults to the id");
    assert_eq!(c.from.address, "news@example.com");
    assert_eq!(c.from.name.as_deref(), Some("Example Shop"));
    assert_eq!(c.envelope.verp_prefix, "b-");
    assert_eq!(c.envelope.verp_suffix, "");
    assert_eq!(c.envelope.secret_env, "BLAST_SECRET");
    assert_eq!(c.recipients.delimiter, b',');
    assert!(c.recipients.header && c.recipients.dedupe);
    assert_eq!(c.recipients.address_column, "email");
    assert_eq!(c.limits.queue_depth, 1000);
    assert_eq!(c.retry.attempts, 5);
    assert_eq!(c.retry.backoff, Duration::from_secs(30));
    assert_eq!(c.nodes.len(), 1);
    let n = &c.nodes[0];
    assert_eq!(n.name, "relay.example.com:25");
    assert_eq!(
        n.address,
        NodeAddress::Remote {
            host: "relay.example.com".into(),
            port: 25
        }
    );
    assert_eq!(n.tls, TlsSetting::Starttls);
    assert!(c.unsubscribe.is_none());
}

#[test]
fn relative_paths_resolve_against_the_campaign_file() {
    let f = Fixture::new("relative");
    let root = &f.dir;
    fs::create_dir_all(root.join("campaigns")).unwrap();
    fs::create_dir_all(root.join("lists")).unwrap();
    fs::write(root.join("lists/people.csv"), "email\na@example.com\n").unwrap();
    fs::write(root.join("tpl/ca.pem"), "not checked here\n").unwrap();
    let text = Spec::base()
        .set(
            "[message]",
            "subject = \"Hi\"\ntext_file = \"../tpl/body.txt\"\nhtml = \"\"\"\n<p>{{ email }}</p>\n\"\"\"",
        )
        .set("[recipients]", "path = \"../lists/people.csv\"")
        .set("[smtp]", "ca_file = \"../tpl/ca.pem\"")
        .set("[output]", "journal = \"state/j.sqlite\"")
        .text();
    let path = root.join("campaigns/spring.toml");
    fs::write(&path, &text).unwrap();
    // Loaded from another working directory: only the file's own directory matters.
    let c = Campaign::load(&path).unwrap();
    let same = |a: &Path, b: &Path| {
        assert_eq!(
            fs::canonicalize(a).unwrap(),
            fs::canonicalize(b).unwrap(),
            "{} vs {}",
            a.display(),
            b.display()
        )
    };
    same(&c.recipients.path, &root.join("lists/people.csv"));
    same(&c.smtp.ca_file.clone().unwrap(), &root.join("tpl/ca.pem"));
    let text_t = c.templates.text.as_ref().unwrap();
    same(&text_t.file, &root.join("tpl/body.txt"));
    assert_eq!(text_t.text, "Hello {{ first_name }}\n");
    assert_eq!(text_t.first_line, 1);
    // Inline templates point into the campaign file; a """ string starts on the next line.
    let subject = &c.templates.subject;
    assert_eq!(subject.file, path);
    assert_eq!(subject.first_line, locate(&text, "subject = ").0);
    let html = c.templates.html.as_ref().unwrap();
    assert_eq!(html.first_line, locate(&text, "<p>{{ email }}").0);
    assert_eq!(html.text, "<p>{{ email }}</p>\n");
    // Outputs: defaults beside the campaign file, named after it; explicit ones relative to it.
    let dir = root.join("campaigns");
    assert_eq!(c.output.delivery_log, dir.join("spring.delivery.jsonl"));
    assert_eq!(c.output.rejects, dir.join("spring.rejects.csv"));
    assert_eq!(c.output.journal, dir.join("state/j.sqlite"));
    assert_eq!(c.dir(), dir.as_path());
}

#[test]
fn shipped_example_campaign_loads() {
    let c = Campaign::load(Path::new("campaigns/example.toml")).unwrap();
    assert_eq!(c.id, "spring-sale-2026");
    assert_eq!(c.name, "Spring sale 2026");
    assert_eq!(
        c.recipients.path,
        Path::new("campaigns/example-recipients.csv")
    );
    assert!(c.recipients.path.is_file());
    assert!(c.templates.text.as_ref().unwrap().file.is_file());
    assert!(c.templates.html.as_ref().unwrap().file.is_file());
    assert_eq!(
        c.headers,
        [("X-Campaign".to_string(), "spring-sale-2026".to_string())]
    );
    assert_eq!(c.reply_to.as_ref().unwrap().address, "support@example.com");
    let u = c.unsubscribe.as_ref().unwrap();
    assert!(u.one_click && u.mailto.is_some() && u.url.is_some());
    assert_eq!(
        c.limits.rate,
        Some(Rate {
            count: 500,
            per: Duration::from_secs(1)
        })
    );
    assert_eq!(c.retry.max_backoff, Duration::from_secs(600));
    assert_eq!(c.retry.max_age, Duration::from_secs(4 * 3600));
    let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["relay-1", "relay-2", "fallback"]);
    let auth = c.nodes[0].auth.as_ref().unwrap();
    assert_eq!(auth.password_env, "BLAST_RELAY_PASSWORD");
    assert_eq!(c.nodes[0].weight, 2);
    assert_eq!(c.nodes[0].max_connections, 16);
    assert!(c.nodes[2].fallback && !c.nodes[0].fallback);
    assert!(!c.all_embedded());
}

#[test]
fn shipped_demo_campaign_loads() {
    let c = Campaign::load(Path::new("campaigns/demo.toml")).unwrap();
    assert_eq!(c.id, "demo");
    assert!(c.all_embedded());
    assert_eq!(c.recipients.generate, Some(200_000));
    assert_eq!(c.nodes[0].tls, TlsSetting::None);
    assert_eq!(c.nodes[0].messages_per_connection, 10_000);
    let u = c.unsubscribe.as_ref().unwrap();
    assert!(u.one_click, "one_click defaults to true with a url");
    assert!(u.mailto.is_none());
    assert_eq!(
        c.output.journal,
        Path::new("campaigns/../out/demo/journal.sqlite")
    );
}

#[test]
fn unreadable_file_is_one_problem_at_1_1() {
    let f = Fixture::new("missing");
    let err = Campaign::load(&f.path()).unwrap_err();
    assert!(matches!(err, CampaignError::Read { .. }));
    let p = err.problems();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].line, p[0].column), (1, 1));
    assert_eq!(p[0].file, f.path());
    assert!(p[0].message.starts_with("cannot read"), "{}", p[0].message);
}

// ---------------------------------------------------------------------------------------------
// TOML-level errors: reported alone (parsing stops), at the offending key or value
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_keys() {
    let t = Spec::base()
        .set("", "id = \"spring\"\ncolour = \"blue\"")
        .text();
    expect_one("unknown-top", &t, "^colour", "unknown field `colour`");
    let t = Spec::base()
        .nodes(&["host = \"relay.example.com\"\nhots = \"typo.example.com\""])
        .text();
    expect_one("unknown-node", &t, "^hots", "unknown field `hots`");
    let t = Spec::base()
        .set("[recipients]", "path = \"list.csv\"\ndelimeter = \";\"")
        .text();
    expect_one("unknown-recipients", &t, "^delimeter", "check the spelling");
    let t = Spec::base().set("[limts]", "rate = \"5/s\"").text();
    expect_one("unknown-section", &t, "[^limts]", "unknown field `limts`");
}

/// Unknown keys, wrong types and invalid values anywhere in the file are all reported at once
/// (serde stops at the first; blast reads on past each), in file order, each where it is.
#[test]
fn every_problem_in_one_pass() {
    let t = Spec::base()
        .set("", "id = \"spring\"\ncolour = \"blue\"")
        .set("[recipients]", "path = \"list.csv\"\ndelimeter = \";\"")
        .set("[limits]", "queue_depth = -1\nrate = \"5 per second\"")
        .nodes(&[
            "host = \"relay.example.com\"\nport = \"25\"",
            "host = \"relay2.example.com\"\nhots = \"typo.example.com\"",
        ])
        .text();
    let f = Fixture::new("all-at-once");
    let problems = f.problems(&t);
    let expected = [
        ("^colour", "unknown field `colour`"),
        ("^delimeter", "unknown field `delimeter`"),
        ("queue_depth = ^-1", "invalid value: integer `-1`"),
        ("rate = ^\"5 per second\"", "rate"),
        ("port = ^\"25\"", "invalid type: string \"25\""),
        ("^hots", "unknown field `hots`"),
    ];
    assert_eq!(
        problems.len(),
        expected.len(),
        "{problems:#?}\n--- fixture ---\n{t}"
    );
    for (p, (needle, fragment)) in problems.iter().zip(expected) {
        assert_eq!((p.line, p.column), locate(&t, needle), "{p} vs {needle:?}");
        assert!(p.message.contains(fragment), "{p} lacks {fragment:?}");
    }
}

#[test]
fn wrong_types() {
    let t = Spec::base()
        .nodes(&["host = \"relay.example.com\"\nport = \"25\""])
        .text();
    expect_one(
        "port-string",
        &t,
        "port = ^\"25\"",
        "invalid type: string \"25\"",
    );
    let t = Spec::base()
        .set("[recipients]", "path = \"list.csv\"\ndedupe = \"yes\"")
        .text();
    expect_one("bool-string", &t, "dedupe = ^\"yes\"", "invalid type");
    let t = Spec::base().set("", "id = 42").text();
    expect_one("id-int", &t, "id = ^42", "invalid type: integer");
    let t = Spec::base().set("[limits]", "queue_depth = -1").text();
    expect_one(
        "negative",
        &t,
        "queue_depth = ^-1",
        "invalid value: integer `-1`",
    );
    let t = Spec::base()
        .nodes(&["host = \"relay.example.com\"\ntls = \"ssl\""])
        .text();
    expect_one("tls-variant", &t, "tls = ^\"ssl\"", "unknown variant `ssl`");
}

#[test]
fn missing_required_fields() {
    let t = Spec::base().set("[message]", "text = \"Hi\"").text();
    expect_one("no-subject", &t, "^[message]", "missing field `subject`");
    let t = Spec::base().remove("[from]").text();
    expect_one("no-from", &t, "^id = ", "missing field `from`");
    let t = Spec::base().set("[envelope]", "secret_env = \"X\"").text();
    expect_one("no-verp", &t, "^[envelope]", "missing field `verp`");
}

#[test]
fn bad_rates_and_durations() {
    // "sec" is accepted (as are s, m, min, h, d, ...); "fortnight" is not.
    let f = Fixture::new("rate-sec");
    let c = f
        .load(&Spec::base().set("[limits]", "rate = \"500/sec\"").text())
        .unwrap();
    assert_eq!(c.limits.rate.unwrap().per_second(), 500.0);

    let t = Spec::base()
        .set("[limits]", "rate = \"500/fortnight\"")
        .text();
    expect_one(
        "rate-unit",
        &t,
        "rate = ^\"500/fortnight\"",
        "unknown unit \"fortnight\"",
    );
    let t = Spec::base().set("[limits]", "rate = \"500\"").text();
    expect_one(
        "rate-no-slash",
        &t,
        "rate = ^\"500\"",
        "invalid rate \"500\"",
    );
    let t = Spec::base().set("[limits]", "rate = \"0/s\"").text();
    expect_one("rate-zero", &t, "rate = ^\"0/s\"", "at least 1");
    let t = Spec::base()
        .nodes(&["host = \"relay.example.com\"\nrate = \"lots/s\""])
        .text();
    expect_one(
        "node-rate",
        &t,
        "rate = ^\"lots/s\"",
        "is not a whole number",
    );

    let t = Spec::base().set("[retry]", "backoff = \"30\"").text();
    expect_one("dur-no-unit", &t, "backoff = ^\"30\"", "missing unit");
    let t = Spec::base().set("[retry]", "max_age = \"3 weeks\"").text();
    expect_one(
        "dur-unit",
        &t,
        "max_age = ^\"3 weeks\"",
        "unknown unit \"weeks\"",
    );
    let t = Spec::base().set("[smtp]", "data_timeout = \"soon\"").text();
    expect_one(
        "dur-garbage",
        &t,
        "data_timeout = ^\"soon\"",
        "invalid duration",
    );
}

// ---------------------------------------------------------------------------------------------
// Validation errors
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_campaign_ids() {
    for (id, label) in [
        ("\"Spring\"", "uppercase"),
        ("\"-spring\"", "leading-dash"),
        ("\"spring_2026\"", "underscore"),
        ("\"\"", "empty"),
        ("\"aaaaaaaaaaaaaaaaaaaaaaaaa\"", "25-chars"),
    ] {
        let t = Spec::base().set("", &format!("id = {id}")).text();
        expect_one(label, &t, &format!("id = ^{id}"), "invalid campaign id");
    }
    // 24 characters is the maximum and fine.
    let f = Fixture::new("id-24");
    f.load(
        &Spec::base()
            .set("", &format!("id = \"{}\"", "a".repeat(24)))
            .text(),
    )
    .unwrap();
}

#[test]
fn bad_from_and_reply_to() {
    for (addr, label) in [
        ("not-an-address", "no-at"),
        ("news@localhost", "no-dot"),
        ("news@@example.com", "two-at"),
        ("a b@example.com", "space"),
        ("news@exa_mple.com", "bad-domain"),
        ("@example.com", "empty-local"),
    ] {
        let t = Spec::base()
            .set("[from]", &format!("address = \"{addr}\""))
            .text();
        expect_one(label, &t, &format!("address = ^\"{addr}\""), "from.address");
    }
    let t = Spec::base()
        .set(
            "[from]",
            "address = \"news@example.com\"\nreply_to = \"support at example.com\"",
        )
        .text();
    expect_one("reply-to", &t, "reply_to = ^\"", "from.reply_to");
}

#[test]
fn control_characters_in_the_display_name() {
    for (name, label) in [
        (r#""Shop\r\nBcc: x@evil.test""#, "crlf"),
        (r#""Shop\nBcc: x@evil.test""#, "lf"),
        (r#""Shop\u0000""#, "nul"),
        (r#""Shop\u0085""#, "c1"),
    ] {
        let t = Spec::base()
            .set(
                "[from]",
                &format!("name = {name}\naddress = \"news@example.com\""),
            )
            .text();
        expect_one(label, &t, &format!("name = ^{name}"), "control character");
    }
}

#[test]
fn reserved_and_invalid_header_names() {
    for key in [
        "Bcc",
        "bcc",
        "From",
        "Subject",
        "Message-ID",
        "Content-Type",
        "LIST-UNSUBSCRIBE",
        "List-Unsubscribe-Post",
        "Return-Path",
        "Reply-To",
    ] {
        let t = Spec::base()
            .set("[headers]", &format!("\"{key}\" = \"v-{key}\""))
            .text();
        // Only the value of a [headers] entry carries a position.
        expect_one(
            key,
            &t,
            &format!("= ^\"v-{key}\""),
            "written by blast itself",
        );
    }
    for key in ["X Campaign", "X:Campaign", "", "X-Ünï"] {
        let t = Spec::base()
            .set("[headers]", &format!("\"{key}\" = \"bad-name-value\""))
            .text();
        expect_one(
            &format!("name {key:?}"),
            &t,
            "= ^\"bad-name-value\"",
            "invalid header name",
        );
    }
    // Columns count characters, not bytes: "Ünï" is 3 characters, 5 bytes.
    let t = Spec::base()
        .set("[headers]", "\"X-Ünï\" = \"after-unicode\"")
        .text();
    let f = Fixture::new("header-col");
    let p = f.problems(&t);
    assert_eq!(p[0].column, "\"X-Ünï\" = ".chars().count() + 1);
    // Control characters in a value.
    let t = Spec::base()
        .set("[headers]", r#""X-Campaign" = "a\r\nBcc: x@evil.test""#)
        .text();
    expect_one(
        "value-crlf",
        &t,
        "= ^\"a\\r\\n",
        "contains a control character",
    );
    // A valid extra header is kept.
    let f = Fixture::new("header-ok");
    let c = f
        .load(
            &Spec::base()
                .set(
                    "[headers]",
                    "\"X-Campaign\" = \"spring\"\n\"X_Old\" = \"1\"",
                )
                .text(),
        )
        .unwrap();
    assert_eq!(c.headers.len(), 2);
}

#[test]
fn bad_verp_patterns() {
    for (verp, fragment, label) in [
        (
            "bounce@bounce.example.com",
            "{token} exactly once",
            "no-token",
        ),
        (
            "b-{token}-{token}@bounce.example.com",
            "{token} exactly once",
            "two-tokens",
        ),
        (
            "b@{token}.example.com",
            "{token} exactly once",
            "token-in-domain",
        ),
        ("b-{token}", "has no '@domain'", "no-at"),
        ("b {token}@bounce.example.com", "around {token}", "space"),
        (
            "b-{token}@localhost",
            "not a valid bounce domain",
            "domain-no-dot",
        ),
        (
            "b-{token}@bounce..example.com",
            "not a valid bounce domain",
            "domain-empty-label",
        ),
        (
            // 36 + 39 (token for "spring") = 75 > 64.
            "bounces-from-the-spring-campaign-xx-{token}@bounce.example.com",
            "over the 64-octet limit",
            "too-long",
        ),
    ] {
        let t = Spec::base()
            .set("[envelope]", &format!("verp = \"{verp}\""))
            .text();
        expect_one(label, &t, &format!("verp = ^\"{verp}\""), fragment);
    }
    // The limit depends on the id: 25 octets of affix fit for "spring" (6 chars: a token of
    // 6 + 1 + 13 row + 1 + 8 address tag + 10 MAC = 39)...
    let fits = format!("{}{{token}}@bounce.example.com", "b".repeat(25));
    let f = Fixture::new("verp-fits");
    f.load(
        &Spec::base()
            .set("[envelope]", &format!("verp = \"{fits}\""))
            .text(),
    )
    .unwrap();
    // ...but not for a 7-character id.
    let t = Spec::base()
        .set("", "id = \"spring2\"")
        .set("[envelope]", &format!("verp = \"{fits}\""))
        .text();
    expect_one("too-long-for-id", &t, "verp = ^\"", "can reach 65 octets");
}

#[test]
fn bad_secret_env_names() {
    for name in ["BLAST-SECRET", "1SECRET", "", "MY SECRET", "$BLAST_SECRET"] {
        let t = Spec::base()
            .set(
                "[envelope]",
                &format!("verp = \"b-{{token}}@bounce.example.com\"\nsecret_env = \"{name}\""),
            )
            .text();
        expect_one(
            &format!("secret_env {name:?}"),
            &t,
            &format!("secret_env = ^\"{name}\""),
            "not an environment variable name",
        );
    }
}

#[test]
fn message_body_errors() {
    let t = Spec::base()
        .set("[message]", "subject = \"No body\"")
        .text();
    expect_one(
        "no-body",
        &t,
        "subject = ^\"No body\"",
        "the message has no body",
    );

    let t = Spec::base()
        .set(
            "[message]",
            "subject = \"S\"\ntext = \"inline\"\ntext_file = \"tpl/body.txt\"",
        )
        .text();
    expect_one(
        "text-both",
        &t,
        "text = ^\"inline\"",
        "message.text and message.text_file",
    );

    let t = Spec::base()
        .set(
            "[message]",
            "subject = \"S\"\nhtml_file = \"tpl/body.html\"\nhtml = \"<p>x</p>\"",
        )
        .text();
    expect_one(
        "html-both",
        &t,
        "html = ^\"<p>",
        "message.html and message.html_file",
    );

    let t = Spec::base()
        .set(
            "[message]",
            "subject = \"S\"\ntext_file = \"tpl/missing.txt\"",
        )
        .text();
    expect_one(
        "missing-text-file",
        &t,
        "text_file = ^\"tpl/missing.txt\"",
        "cannot read template",
    );
    let t = Spec::base()
        .set(
            "[message]",
            "subject = \"S\"\ntext = \"t\"\nhtml_file = \"tpl/gone.html\"",
        )
        .text();
    expect_one(
        "missing-html-file",
        &t,
        "html_file = ^\"tpl/gone.html\"",
        "gone.html",
    );

    // html alone is a body.
    let f = Fixture::new("html-only");
    let c = f
        .load(
            &Spec::base()
                .set(
                    "[message]",
                    "subject = \"S\"\nhtml_file = \"tpl/body.html\"",
                )
                .text(),
        )
        .unwrap();
    assert!(c.templates.text.is_none() && c.templates.html.is_some());
}

#[test]
fn recipient_list_errors() {
    let t = Spec::base()
        .set("[recipients]", "path = \"nope.csv\"")
        .text();
    expect_one("missing-csv", &t, "path = ^\"nope.csv\"", "does not exist");
    // A directory or a device is not a list either, and the problem says what it is.
    let t = Spec::base().set("[recipients]", "path = \"tpl\"").text();
    expect_one("dir-csv", &t, "path = ^\"tpl\"", "is a directory");
    let t = Spec::base()
        .set("[recipients]", "path = \"/dev/zero\"")
        .text();
    expect_one(
        "device-csv",
        &t,
        "path = ^\"/dev/zero\"",
        "/dev/zero is not a regular file (a device)",
    );
    // ...unless the list is generated on first use.
    let f = Fixture::new("generate");
    let c = f
        .load(
            &Spec::base()
                .set("[recipients]", "path = \"gen/list.csv\"\ngenerate = 10")
                .text(),
        )
        .unwrap();
    assert_eq!(c.recipients.generate, Some(10));

    for (d, label) in [
        (r#"";;""#, "two-chars"),
        (r#""\"""#, "quote"),
        (r#""\n""#, "newline"),
        (r#""é""#, "non-ascii"),
        (r#""""#, "empty"),
    ] {
        let t = Spec::base()
            .set(
                "[recipients]",
                &format!("path = \"list.csv\"\ndelimiter = {d}"),
            )
            .text();
        expect_one(
            label,
            &t,
            &format!("delimiter = ^{d}"),
            "recipients.delimiter",
        );
    }
    for (d, byte) in [
        (r#"";""#, b';'),
        (r#""\t""#, b'\t'),
        (r"'\t'", b'\t'),
        (r#""|""#, b'|'),
    ] {
        let f = Fixture::new("delim-ok");
        let c = f
            .load(
                &Spec::base()
                    .set(
                        "[recipients]",
                        &format!("path = \"list.csv\"\ndelimiter = {d}"),
                    )
                    .text(),
            )
            .unwrap();
        assert_eq!(c.recipients.delimiter, byte, "{d}");
    }

    let t = Spec::base()
        .set("[recipients]", "path = \"list.csv\"\nheader = false")
        .text();
    expect_one(
        "no-header-no-columns",
        &t,
        "path = ^\"list.csv\"",
        "needs recipients.columns",
    );

    let t = Spec::base()
        .set(
            "[recipients]",
            "path = \"list.csv\"\nheader = false\ncolumns = [\"mail\", \"first_name\"]",
        )
        .text();
    expect_one(
        "columns-without-address",
        &t,
        "columns = ^[",
        "does not contain the address column \"email\"",
    );
    let t = Spec::base()
        .set(
            "[recipients]",
            "path = \"list.csv\"\ncolumns = [\"email\", \"first_name\"]\naddress_column = \"mail\"",
        )
        .text();
    expect_one(
        "columns-without-custom-address",
        &t,
        "columns = ^[",
        "address column \"mail\"",
    );
}

#[test]
fn unsubscribe_errors() {
    let t = Spec::base()
        .set("[unsubscribe]", "one_click = false")
        .text();
    expect_one(
        "no-targets",
        &t,
        "^[unsubscribe]",
        "needs a mailto and/or a url",
    );
    let t = Spec::base().set("[unsubscribe]", "").text();
    expect_one(
        "empty-section",
        &t,
        "^[unsubscribe]",
        "needs a mailto and/or a url",
    );

    let t = Spec::base()
        .set(
            "[unsubscribe]",
            "url = \"http://shop.example.com/u/{{ unsubscribe_token }}\"",
        )
        .text();
    expect_one(
        "http-url",
        &t,
        "url = ^\"http://",
        "must start with https://",
    );

    let t = Spec::base()
        .set(
            "[unsubscribe]",
            "mailto = \"unsubscribe+{{ unsubscribe_token }}@example.com\"\none_click = true",
        )
        .text();
    expect_one(
        "one-click-no-url",
        &t,
        "one_click = ^true",
        "needs an https unsubscribe.url",
    );

    // mailto alone without one_click is fine, and one_click defaults to false then.
    let f = Fixture::new("unsub-mailto");
    let c = f
        .load(
            &Spec::base()
                .set(
                    "[unsubscribe]",
                    "mailto = \"u+{{ unsubscribe_token }}@example.com\"",
                )
                .text(),
        )
        .unwrap();
    assert!(!c.unsubscribe.unwrap().one_click);
}

#[test]
fn out_of_range_numbers() {
    for (section, body, needle, fragment) in [
        (
            "[limits]",
            "queue_depth = 0",
            "queue_depth = ^0",
            "queue_depth = 0 is out of range: use 1 to 1000000",
        ),
        (
            "[limits]",
            "queue_depth = 1000001",
            "queue_depth = ^1000001",
            "queue_depth",
        ),
        (
            "[limits]",
            "render_threads = 0",
            "render_threads = ^0",
            "render_threads = 0",
        ),
        (
            "[limits]",
            "render_threads = 65",
            "render_threads = ^65",
            "use 1 to 64",
        ),
        (
            "[retry]",
            "attempts = 0",
            "attempts = ^0",
            "retry.attempts = 0",
        ),
        (
            "[retry]",
            "attempts = 101",
            "attempts = ^101",
            "retry.attempts = 101",
        ),
        (
            "[retry]",
            "fallback_after = 0",
            "fallback_after = ^0",
            "retry.fallback_after",
        ),
    ] {
        let t = Spec::base().set(section, body).text();
        expect_one(body, &t, needle, fragment);
    }
    for (body, needle, fragment) in [
        ("port = 0", "port = ^0", "port 0 is not 1-65535"),
        ("port = 65536", "port = ^65536", "port 65536 is not 1-65535"),
        ("weight = 0", "weight = ^0", "weight = 0 is out of range"),
        ("weight = 1001", "weight = ^1001", "weight = 1001"),
        (
            "max_connections = 0",
            "max_connections = ^0",
            "max_connections = 0",
        ),
        (
            "max_connections = 1001",
            "max_connections = ^1001",
            "max_connections",
        ),
        (
            "messages_per_connection = 0",
            "messages_per_connection = ^0",
            "messages_per_connection = 0",
        ),
        (
            "messages_per_connection = 10000001",
            "messages_per_connection = ^10000001",
            "use 1 to 10000000",
        ),
    ] {
        let t = Spec::base()
            .nodes(&[&format!("host = \"relay.example.com\"\n{body}")])
            .text();
        expect_one(body, &t, needle, fragment);
    }
    // The bounds themselves are accepted.
    let f = Fixture::new("bounds");
    let c = f
        .load(
            &Spec::base()
                .set("[limits]", "queue_depth = 1\nrender_threads = 64")
                .nodes(&["host = \"relay.example.com\"\nport = 65535\nweight = 1000"])
                .text(),
        )
        .unwrap();
    assert_eq!((c.limits.queue_depth, c.limits.render_threads), (1, 64));
    assert_eq!(c.nodes[0].weight, 1000);
}

#[test]
fn retry_and_smtp_errors() {
    let t = Spec::base()
        .set("[retry]", "backoff = \"10m\"\nmax_backoff = \"5m\"")
        .text();
    expect_one(
        "backoff",
        &t,
        "max_backoff = ^\"5m\"",
        "max_backoff is shorter",
    );
    let t = Spec::base().set("[smtp]", "helo = \"not a host\"").text();
    expect_one("helo", &t, "helo = ^\"not a host\"", "invalid EHLO name");
    let t = Spec::base()
        .set("[smtp]", "command_timeout = \"0s\"")
        .text();
    expect_one(
        "timeout-0",
        &t,
        "command_timeout = ^\"0s\"",
        "a timeout of 0",
    );
    let t = Spec::base().set("[smtp]", "ca_file = \"no-ca.pem\"").text();
    expect_one("ca-file", &t, "ca_file = ^\"no-ca.pem\"", "CA file");
}

#[test]
fn node_errors() {
    let t = Spec::base()
        .nodes(&["name = \"hostless\"\nport = 2525"])
        .text();
    expect_one("no-host", &t, "^[[node]]", "needs host = ");

    let t = Spec::base()
        .nodes(&["embedded = true\nhost = \"relay.example.com\""])
        .text();
    expect_one(
        "embedded-host",
        &t,
        "host = ^\"relay",
        "an embedded node has no host",
    );

    let t = Spec::base().nodes(&["embedded = true\nport = 2525"]).text();
    expect_one(
        "embedded-port",
        &t,
        "port = ^2525",
        "an embedded node has no port",
    );

    let t = Spec::base()
        .nodes(&["embedded = true\ntls = \"starttls\""])
        .text();
    expect_one("embedded-tls", &t, "tls = ^\"starttls\"", "plain SMTP");

    let t = Spec::base()
        .nodes(&["host = \"relay_1.example.com\""])
        .text();
    expect_one(
        "bad-host",
        &t,
        "host = ^\"relay_1",
        "neither an IP address nor a host name",
    );

    let t = Spec::base()
        .nodes(&["host = \"relay.example.com\"\ntls = \"none\"\nauth_user = \"blast\"\npassword_env = \"RELAY_PW\""])
        .text();
    expect_one(
        "auth-no-tls",
        &t,
        "auth_user = ^\"blast\"",
        "AUTH over plain TCP",
    );

    let t = Spec::base()
        .nodes(&["host = \"relay.example.com\"\nauth_user = \"blast\""])
        .text();
    expect_one(
        "auth-no-password",
        &t,
        "auth_user = ^\"blast\"",
        "needs password_env",
    );

    let t = Spec::base()
        .nodes(&["host = \"relay.example.com\"\npassword_env = \"RELAY_PW\""])
        .text();
    expect_one(
        "password-no-user",
        &t,
        "password_env = ^\"RELAY_PW\"",
        "password_env needs auth_user",
    );

    let t = Spec::base()
        .nodes(&[
            "host = \"relay.example.com\"\nauth_user = \"blast\"\npassword_env = \"relay-pw\"",
        ])
        .text();
    expect_one(
        "bad-password-env",
        &t,
        "password_env = ^\"relay-pw\"",
        "not an environment variable name",
    );

    // Duplicate names: reported at the second node.
    let t = Spec::base()
        .nodes(&[
            "name = \"relay\"\nhost = \"r1.example.com\"",
            "name = \"relay\"\nhost = \"r2.example.com\"",
        ])
        .text();
    expect_one(
        "dup-names",
        &t,
        "^[[node]]\nname = \"relay\"\nhost = \"r2",
        "two nodes are named \"relay\"",
    );
    // Default names (host:port) collide too.
    let t = Spec::base()
        .nodes(&[
            "host = \"relay.example.com\"\nmax_connections = 2",
            "host = \"relay.example.com\"\nmax_connections = 3",
        ])
        .text();
    expect_one(
        "dup-default-names",
        &t,
        "^[[node]]\nhost = \"relay.example.com\"\nmax_connections = 3",
        "two nodes are named \"relay.example.com:25\"",
    );

    let t = Spec::base()
        .nodes(&[
            "name = \"a\"\nhost = \"r1.example.com\"\nfallback = true",
            "name = \"b\"\nhost = \"r2.example.com\"\nfallback = true",
        ])
        .text();
    expect_one(
        "all-fallback",
        &t,
        "^[[node]]\nname = \"a\"",
        "every node is a fallback node",
    );

    let t = Spec::base().nodes(&[]).text();
    expect_one("no-nodes", &t, "^id = ", "no sender nodes");
}

// ---------------------------------------------------------------------------------------------
// All problems at once
// ---------------------------------------------------------------------------------------------

#[test]
fn every_problem_is_reported_at_once() {
    let text = Spec::base()
        .set("", "id = \"Bad Id\"")
        .set("[from]", "address = \"nobody\"")
        .set("[headers]", "\"Bcc\" = \"hidden@example.com\"")
        .set("[envelope]", "verp = \"bounce@bounce.example.com\"")
        .set(
            "[message]",
            "subject = \"S\"\ntext_file = \"tpl/absent.txt\"",
        )
        .set("[recipients]", "path = \"absent.csv\"\ndelimiter = \"::\"")
        .set("[unsubscribe]", "url = \"http://example.com/u\"")
        .set("[limits]", "queue_depth = 0")
        .set("[retry]", "attempts = 1000")
        .set("[smtp]", "helo = \"bad helo\"")
        .nodes(&[
            "name = \"x\"\nport = 25",
            "name = \"y\"\nhost = \"relay.example.com\"\nauth_user = \"u\"",
        ])
        .text();
    let f = Fixture::new("many");
    let problems = f.problems(&text);
    let expected = [
        ("id = ^\"Bad Id\"", "invalid campaign id"),
        ("address = ^\"nobody\"", "from.address"),
        ("\"Bcc\" = ^\"hidden", "written by blast itself"),
        ("verp = ^\"", "{token} exactly once"),
        ("text_file = ^\"tpl/absent.txt\"", "cannot read template"),
        ("path = ^\"absent.csv\"", "does not exist"),
        ("delimiter = ^\"::\"", "recipients.delimiter"),
        ("url = ^\"http://", "https://"),
        ("queue_depth = ^0", "queue_depth"),
        ("attempts = ^1000", "retry.attempts"),
        ("helo = ^\"bad helo\"", "EHLO"),
        ("^[[node]]\nname = \"x\"", "needs host"),
        ("auth_user = ^\"u\"", "needs password_env"),
    ];
    let mut missing = Vec::new();
    for (needle, fragment) in expected {
        let (line, column) = locate(&text, needle);
        if !problems
            .iter()
            .any(|p| p.line == line && p.column == column && p.message.contains(fragment))
        {
            missing.push(format!("{line}:{column} {fragment:?} ({needle:?})"));
        }
    }
    assert!(
        missing.is_empty(),
        "not reported: {missing:#?}\nreported: {problems:#?}"
    );
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    assert!(problems.iter().all(|p| p.file == f.path()));

    // The error's Display lists them all as file:line:col: message.
    let err = f.load(&text).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{} problems in campaign:", expected.len())),
        "{shown}"
    );
    for p in &problems {
        let l = format!(
            "{}:{}:{}: {}",
            f.path().display(),
            p.line,
            p.column,
            p.message
        );
        assert!(shown.contains(&l), "{shown}\nlacks {l}");
    }
}

#[test]
fn positions_are_the_same_with_crlf_line_endings() {
    let lf = Spec::base()
        .set("[limits]", "queue_depth = 0")
        .nodes(&["host = \"relay.example.com\"\nport = 0"])
        .text();
    let crlf = lf.replace('\n', "\r\n");
    let f = Fixture::new("crlf");
    let a: Vec<(usize, usize)> = f.problems(&lf).iter().map(|p| (p.line, p.column)).collect();
    let b: Vec<(usize, usize)> = f
        .problems(&crlf)
        .iter()
        .map(|p| (p.line, p.column))
        .collect();
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
    assert_eq!(a[0], locate(&lf, "queue_depth = ^0"));
}
