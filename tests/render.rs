//! Rendering end to end on real files: campaign.toml + templates + CSV → `Source` → `Renderer`
//! → RFC 5322 bytes, every message parsed back with `mail-parser`.
//!
//! Covers header injection (hostile CSV rows never reach the renderer; templates that contain
//! newlines still give one Subject line), the exact header set, personalisation and RFC 2047,
//! deterministic Message-IDs, per-recipient List-Unsubscribe, HTML escaping, `default(...)`,
//! line lengths and CRLF, template errors with file and line, and VERP round trips.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use blast::campaign::Campaign;
use blast::send::render::{Message, RenderError, Renderer};
use blast::send::source::{RejectKind, Source, SourceStats};
use blast::verp::VerpKey;
use mail_parser::{MessageParser, MimeHeaders};

/// A fixed Date for every render (2026-02-02T02:40:00Z).
const DATE: i64 = 1_770_000_000;
const SECRET: &[u8] = b"render-test-secret-0123456789";
const HOSTILE: &str = "Bob\r\nBcc: x@evil.test";

fn key() -> VerpKey {
    VerpKey::new(SECRET).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    /// Writes `files` (path, content) into a fresh directory; `campaign.toml` is among them.
    fn new(label: &str, files: &[(&str, &str)]) -> Fixture {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-tmp")).join(format!(
            "render-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            let p = dir.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn campaign(&self) -> Campaign {
        Campaign::load(&self.path("campaign.toml"))
            .unwrap_or_else(|e| panic!("fixture campaign invalid: {e}"))
    }

    fn open(&self) -> (Campaign, Source, Result<Renderer, Vec<RenderError>>) {
        let campaign = self.campaign();
        let opts = blast::cli::source_options(&campaign, None).unwrap();
        let source = Source::open(opts).unwrap();
        let renderer = Renderer::new(&campaign, source.columns().clone(), key());
        (campaign, source, renderer)
    }

    /// Every accepted row rendered once.
    fn render_all(&self) -> (Campaign, Vec<Message>, SourceStats) {
        let (campaign, mut source, renderer) = self.open();
        let renderer = renderer.unwrap_or_else(|e| panic!("renderer: {e:?}"));
        let mut out = Vec::new();
        while let Some(r) = source.next_recipient().unwrap() {
            out.push(renderer.render(r, DATE).unwrap());
        }
        (campaign, out, source.finish().unwrap())
    }

    fn renderer_errors(&self) -> Vec<RenderError> {
        match self.open().2 {
            Ok(_) => panic!("expected template errors"),
            Err(e) => e,
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

const CAMPAIGN: &str = r#"id = "spring"

[from]
name = "Example Shop"
address = "news@example.com"
reply_to = "support@example.com"

[headers]
"X-Campaign" = "spring"

[envelope]
verp = "b-{token}@bounce.example.com"

[message]
subject = "{{ first_name | default('Hello') }}, our sale starts today"
to_name = "{{ first_name }} {{ last_name }}"
text_file = "tpl/body.txt"
html_file = "tpl/body.html"

[recipients]
path = "list.csv"

[unsubscribe]
mailto = "unsubscribe+{{ unsubscribe_token }}@example.com"
url = "https://shop.example.com/u/{{ unsubscribe_token }}"

[[node]]
host = "relay.example.com"
"#;

const TEXT: &str = "Hello {{ first_name | default(\"there\") }},\n\nNote: {{ note }}\n\nUnsubscribe: {{ unsubscribe_url }}\n";

fn html() -> String {
    format!(
        "<html><body>\n<h1>Hello {{{{ first_name | default(\"there\") }}}}!</h1>\n<p>{{{{ note }}}}</p>\n<p>{}</p>\n<a href=\"{{{{ unsubscribe_url }}}}\">Unsubscribe</a>\n</body></html>\n",
        "x".repeat(5000)
    )
}

/// The header names every message of [`CAMPAIGN`] has (lowercased).
const EXPECTED_HEADERS: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "x-campaign",
    "mime-version",
    "content-type",
];

fn standard(label: &str, csv: &str) -> Fixture {
    let html = html();
    Fixture::new(
        label,
        &[
            ("campaign.toml", CAMPAIGN),
            ("tpl/body.txt", TEXT),
            ("tpl/body.html", &html),
            ("list.csv", csv),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Checks applied to every rendered message
// ---------------------------------------------------------------------------------------------

/// Wire-format invariants: CRLF everywhere, no line over 998 octets, no Bcc, and a parse
/// with mail-parser whose top-level header names are exactly `expected` (each once).
fn check_wire(m: &Message, expected: &[&str]) -> mail_parser::Message<'static> {
    let b = &m.bytes;
    assert!(b.ends_with(b"\r\n"), "row {}: does not end in CRLF", m.row);
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            assert!(i > 0 && b[i - 1] == b'\r', "row {}: bare LF at {i}", m.row);
        }
        if c == b'\r' {
            assert_eq!(b.get(i + 1), Some(&b'\n'), "row {}: bare CR at {i}", m.row);
        }
    }
    for (n, line) in b.split(|&c| c == b'\n').enumerate() {
        let len = line.strip_suffix(b"\r").unwrap_or(line).len();
        assert!(len <= 998, "row {}: line {} is {len} octets", m.row, n + 1);
    }
    let parsed = MessageParser::default()
        .parse(b.as_slice())
        .unwrap_or_else(|| panic!("row {}: mail-parser cannot parse the message", m.row))
        .into_owned();
    let names: Vec<String> = parsed
        .headers()
        .iter()
        .map(|h| h.name().to_ascii_lowercase())
        .collect();
    let set: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names.len(),
        set.len(),
        "row {}: repeated header: {names:?}",
        m.row
    );
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(set, want, "row {}: header names", m.row);
    assert!(parsed.bcc().is_none());
    // The header block, as raw text, has exactly one line starting with each name.
    let head_end = b.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&b[..head_end]).unwrap();
    for name in expected {
        let starts = head
            .split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .count();
        assert_eq!(starts, 1, "row {}: {name} lines in\n{head}", m.row);
    }
    assert!(
        !head.to_ascii_lowercase().contains("\r\nbcc:"),
        "row {}: {head}",
        m.row
    );
    parsed
}

fn addr(parsed: &mail_parser::Message<'_>, which: &str) -> (Option<String>, String) {
    let a = match which {
        "from" => parsed.from(),
        "to" => parsed.to(),
        "reply-to" => parsed.reply_to(),
        _ => unreachable!(),
    }
    .unwrap_or_else(|| panic!("no {which}"));
    let list = a.as_list().expect("a plain address list");
    assert_eq!(list.len(), 1, "{which}: {list:?}");
    (
        list[0].name().map(str::to_string),
        list[0].address().unwrap().to_string(),
    )
}

/// The text part with line breaks as `\n` (mail-parser keeps the CRLFs of the wire).
fn body_text(parsed: &mail_parser::Message<'_>) -> String {
    parsed.body_text(0).unwrap().replace("\r\n", "\n")
}

fn raw_header(bytes: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next().unwrap();
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let prefix = format!("{}:", name.to_ascii_lowercase());
    unfolded
        .split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
        .unwrap_or_else(|| panic!("no {name} header in\n{head}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_parse_back_to_the_personalised_values() {
    let long_note = "n".repeat(2000);
    let csv = format!(
        "email,first_name,last_name,note\n\
         alice@example.com,Alice,Archer,plain note\n\
         zoe@Example.NET,Zoë,Żółć,\"<script>alert('x')</script> & co\"\n\
         nobody@example.org,,Smith,{long_note}\n\
         jose@bücher.example,José,\"Núñez, Jr.\",\"quote \"\"this\"\"\"\n"
    );
    let f = standard("personal", &csv);
    let (campaign, messages, stats) = f.render_all();
    assert_eq!(stats.accepted, 4);
    assert_eq!(messages.len(), 4);
    let k = key();
    let mut ids = BTreeSet::new();
    for m in &messages {
        let p = check_wire(m, EXPECTED_HEADERS);
        // From / Reply-To are the campaign's.
        assert_eq!(
            addr(&p, "from"),
            (Some("Example Shop".into()), "news@example.com".into())
        );
        assert_eq!(addr(&p, "reply-to"), (None, "support@example.com".into()));
        assert_eq!(p.message_id(), Some(m.message_id.as_str()));
        assert!(ids.insert(m.message_id.clone()), "Message-ID repeated");
        assert_eq!(
            p.header_raw("X-Campaign").map(str::trim),
            Some("spring"),
            "fixed extra header"
        );
        // multipart/alternative with text/plain then text/html.
        let ct = p.content_type().unwrap();
        assert_eq!(
            (ct.ctype(), ct.subtype()),
            ("multipart", Some("alternative"))
        );
        assert_eq!(p.text_body_count(), 1);
        assert_eq!(p.html_body_count(), 1);
        // List-Unsubscribe: per-recipient mailto + https URL with this row's token.
        let token = k.unsubscribe_token(&campaign.id, m.row, &m.rcpt);
        assert_eq!(
            raw_header(&m.bytes, "List-Unsubscribe"),
            format!(
                "<mailto:unsubscribe+{token}@example.com>, <https://shop.example.com/u/{token}>"
            ),
            "row {}",
            m.row
        );
        assert_eq!(
            raw_header(&m.bytes, "List-Unsubscribe-Post"),
            "List-Unsubscribe=One-Click"
        );
        // The URL is the same in the bodies.
        let text = p.body_text(0).unwrap();
        assert!(text.contains(&format!("Unsubscribe: https://shop.example.com/u/{token}")));
        let html = p.body_html(0).unwrap();
        assert!(html.contains(&format!("href=\"https://shop.example.com/u/{token}\"")));
        assert!(
            html.contains(&"x".repeat(5000)),
            "the long html line survives"
        );
        // VERP: MAIL FROM decodes to this campaign and row.
        let token = m
            .mail_from
            .strip_prefix("b-")
            .and_then(|s| s.strip_suffix("@bounce.example.com"))
            .unwrap_or_else(|| panic!("VERP shape: {}", m.mail_from));
        assert_eq!(k.decode(token).unwrap(), ("spring".to_string(), m.row));
    }

    // Row by row: personalisation.
    let p: Vec<_> = messages
        .iter()
        .map(|m| MessageParser::default().parse(&m.bytes).unwrap())
        .collect();
    assert_eq!(p[0].subject(), Some("Alice, our sale starts today"));
    assert_eq!(
        addr(&p[0], "to"),
        (Some("Alice Archer".into()), "alice@example.com".into())
    );
    assert!(body_text(&p[0]).starts_with("Hello Alice,\n\nNote: plain note\n"));

    // Non-ASCII round-trips through RFC 2047 (and is encoded on the wire).
    assert_eq!(p[1].subject(), Some("Zoë, our sale starts today"));
    assert_eq!(
        addr(&p[1], "to"),
        (Some("Zoë Żółć".into()), "zoe@example.net".into())
    );
    let raw_subject = raw_header(&messages[1].bytes, "Subject");
    assert!(
        raw_subject.is_ascii() && raw_subject.contains("=?"),
        "{raw_subject}"
    );
    // A CSV field is HTML-escaped in the html part and verbatim in the text part.
    let html = p[1].body_html(0).unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"));
    let text = body_text(&p[1]);
    assert!(
        text.contains("\nNote: <script>alert('x')</script> & co\n"),
        "{text}"
    );

    // An empty field is undefined: default("there") / default('Hello') apply, and the To
    // display name is just the last name.
    assert_eq!(p[2].subject(), Some("Hello, our sale starts today"));
    assert!(body_text(&p[2]).starts_with("Hello there,\n"));
    assert!(p[2].body_html(0).unwrap().contains("<h1>Hello there!</h1>"));
    assert_eq!(
        addr(&p[2], "to"),
        (Some("Smith".into()), "nobody@example.org".into())
    );
    // The 2,000-character field survives whole in both parts (lines were checked above).
    assert!(p[2].body_text(0).unwrap().contains(&long_note));
    assert!(p[2].body_html(0).unwrap().contains(&long_note));

    // IDN domain → punycode RCPT; specials in the display name are quoted, not split.
    assert_eq!(messages[3].rcpt, "jose@xn--bcher-kva.example");
    assert_eq!(
        addr(&p[3], "to"),
        (
            Some("José Núñez, Jr.".into()),
            "jose@xn--bcher-kva.example".into()
        )
    );
    assert!(
        p[3].body_html(0)
            .unwrap()
            .contains("quote &quot;this&quot;")
    );
}

#[test]
fn message_id_is_deterministic_per_row_and_distinct_between_rows() {
    let f = standard(
        "msgid",
        "email,first_name,last_name,note\na@example.com,A,B,n\nb@example.com,A,B,n\n",
    );
    let (_, mut source, renderer) = f.open();
    let renderer = renderer.unwrap();
    let r1 = source.next_recipient().unwrap().unwrap();
    let r2 = source.next_recipient().unwrap().unwrap();
    let a = renderer.render(r1.clone(), DATE).unwrap();
    // Another render of the same row, at another time, by another renderer.
    let renderer2 = Renderer::new(&f.campaign(), source.columns().clone(), key()).unwrap();
    let b = renderer2.render(r1, DATE + 3600).unwrap();
    let c = renderer.render(r2, DATE).unwrap();
    for m in [&a, &b, &c] {
        check_wire(m, EXPECTED_HEADERS);
    }
    let id = |m: &Message| {
        MessageParser::default()
            .parse(&m.bytes)
            .unwrap()
            .message_id()
            .unwrap()
            .to_string()
    };
    assert_eq!(a.message_id, b.message_id);
    assert_eq!(id(&a), id(&b));
    assert_eq!(id(&a), a.message_id);
    assert_ne!(a.message_id, c.message_id);
    assert_ne!(id(&a), id(&c));
    assert!(a.message_id.ends_with("@example.com"), "{}", a.message_id);
    // The envelope is per row too.
    assert_eq!(a.mail_from, b.mail_from);
    assert_ne!(a.mail_from, c.mail_from);
}

#[test]
fn hostile_rows_are_rejected_by_the_source_and_never_rendered() {
    let h = HOSTILE;
    let lf = "Bob\nBcc: x@evil.test";
    let cr = "Bob\rBcc: x@evil.test";
    let ls = "Bob\u{2028}Bcc: x@evil.test";
    let ps = "Bob\u{2029}Bcc: x@evil.test";
    let nel = "Bob\u{85}Bcc: x@evil.test";
    // Every field of a row hostile (address included), then one field at a time, for each
    // kind of line break. Fields are quoted, as a spreadsheet export would.
    let mut csv = String::from("email,first_name,last_name,note\n");
    let mut hostile_rows = 0;
    csv.push_str("ok1@example.com,Ann,Lee,fine\n");
    for bad in [h, lf, cr, ls, ps, nel] {
        csv.push_str(&format!("\"{bad}\",\"{bad}\",\"{bad}\",\"{bad}\"\n"));
        csv.push_str(&format!("\"x{bad}@example.com\",Ann,Lee,n\n"));
        csv.push_str(&format!("ok@example.com,\"{bad}\",Lee,n\n"));
        csv.push_str(&format!("ok@example.com,Ann,\"{bad}\",n\n"));
        csv.push_str(&format!("ok@example.com,Ann,Lee,\"{bad}\"\n"));
        hostile_rows += 5;
    }
    csv.push_str("ok2@example.com,Bob,Bcc: x@evil.test,fine\n");
    let f = standard("hostile", &csv);
    let (_, messages, stats) = f.render_all();

    assert_eq!(stats.rows, hostile_rows + 2);
    assert_eq!(stats.rejected, hostile_rows);
    assert_eq!(
        stats.rejected_for(RejectKind::ControlCharacter),
        hostile_rows
    );
    let rcpts: Vec<(u64, &str)> = messages.iter().map(|m| (m.row, m.rcpt.as_str())).collect();
    assert_eq!(
        rcpts,
        [
            (1, "ok1@example.com"),
            (hostile_rows + 2, "ok2@example.com")
        ]
    );
    for m in &messages {
        let p = check_wire(m, EXPECTED_HEADERS);
        assert!(!String::from_utf8_lossy(&m.bytes).contains("\r\nBcc:"));
        assert_eq!(p.to().unwrap().as_list().unwrap().len(), 1);
    }
    // A "Bcc:" text without a line break is just text in a display name.
    let last = MessageParser::default().parse(&messages[1].bytes).unwrap();
    assert_eq!(
        addr(&last, "to"),
        (
            Some("Bob Bcc: x@evil.test".into()),
            "ok2@example.com".into()
        )
    );
}

#[test]
fn hostile_values_that_bypass_the_source_still_cannot_add_headers() {
    // Defence in depth: a Recipient built by hand (not through `Source`) with line breaks in
    // every field still gives one-line headers.
    let f = standard(
        "bypass",
        "email,first_name,last_name,note\nok@example.com,Ann,Lee,n\n",
    );
    let (_, mut source, renderer) = f.open();
    let renderer = renderer.unwrap();
    let mut r = source.next_recipient().unwrap().unwrap();
    for bad in [HOSTILE, "Bob\nBcc: x@evil.test", "Bob\rBcc: x@evil.test"] {
        r.record = csv::StringRecord::from(vec!["ok@example.com", bad, bad, bad]);
        let m = renderer.render(r.clone(), DATE).unwrap();
        let p = check_wire(&m, EXPECTED_HEADERS);
        let subject = p.subject().unwrap();
        assert!(!subject.contains(['\r', '\n']), "{subject:?}");
        assert!(subject.starts_with("Bob") && subject.ends_with("our sale starts today"));
        let (name, address) = addr(&p, "to");
        assert!(!name.unwrap().contains(['\r', '\n']));
        assert_eq!(address, "ok@example.com");
    }
}

#[test]
fn newlines_in_header_templates_give_a_single_header_line() {
    // The templates themselves contain line breaks (and a would-be header).
    let campaign = CAMPAIGN
        .replace(
            "subject = \"{{ first_name | default('Hello') }}, our sale starts today\"",
            "subject = \"\"\"\nHello\n{{ first_name }},\r\nBcc: x@evil.test\n\nsale\n\"\"\"",
        )
        .replace(
            "to_name = \"{{ first_name }} {{ last_name }}\"",
            "to_name = \"{{ first_name }}\\n{{ last_name }}\\r\\nCc: y@evil.test\"",
        );
    let html = html();
    let f = Fixture::new(
        "subject-newlines",
        &[
            ("campaign.toml", &campaign),
            ("tpl/body.txt", TEXT),
            ("tpl/body.html", &html),
            (
                "list.csv",
                "email,first_name,last_name,note\nann@example.com,Ann,Lee,n\n",
            ),
        ],
    );
    let (_, messages, _) = f.render_all();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    let p = check_wire(m, EXPECTED_HEADERS);
    assert!(p.cc().is_none());
    let subject = p.subject().unwrap();
    assert!(!subject.contains(['\r', '\n']), "{subject:?}");
    assert!(
        subject.starts_with("Hello Ann,") && subject.ends_with("sale"),
        "{subject:?}"
    );
    let raw = String::from_utf8_lossy(&m.bytes);
    let subject_lines = raw
        .split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("Subject:"))
        .count();
    assert_eq!(subject_lines, 1);
    let (name, address) = addr(&p, "to");
    assert_eq!(name.as_deref(), Some("Ann Lee  Cc: y@evil.test"));
    assert_eq!(address, "ann@example.com");
}

#[test]
fn long_header_values_are_folded_under_998_octets() {
    // A 2,000-character CSV field in the Subject and To display name: ASCII without spaces,
    // ASCII with spaces and non-ASCII.
    let csv = format!(
        "email,first_name,last_name,note\n\
         a@example.com,{},Lee,n\n\
         b@example.com,{},Lee,n\n\
         c@example.com,{},Lee,n\n",
        "A".repeat(2000),
        "word ".repeat(400).trim_end(),
        "é".repeat(2000),
    );
    let f = standard("long-headers", &csv);
    let (_, messages, _) = f.render_all();
    assert_eq!(messages.len(), 3);
    let expected = [
        "A".repeat(2000),
        "word ".repeat(400).trim_end().to_string(),
        "é".repeat(2000),
    ];
    for (m, first) in messages.iter().zip(&expected) {
        let p = check_wire(m, EXPECTED_HEADERS);
        assert_eq!(
            p.subject().unwrap(),
            format!("{first}, our sale starts today"),
            "row {}",
            m.row
        );
        assert_eq!(addr(&p, "to").0.unwrap(), format!("{first} Lee"));
    }
}

#[test]
fn text_only_and_html_only_messages() {
    // Single-part messages: the whole message is the one part, and a 2,000-character field
    // (no spaces) still gives lines under 998 octets and a final CRLF.
    let csv = format!(
        "email,first_name,last_name,note\na@example.com,Ann,Lee,{}\n",
        "z".repeat(2000)
    );
    for (label, drop, subtype) in [
        ("text-only", "html_file = \"tpl/body.html\"\n", "plain"),
        ("html-only", "text_file = \"tpl/body.txt\"\n", "html"),
    ] {
        let campaign = CAMPAIGN
            .replace(drop, "")
            .replace("[unsubscribe]\n", "[unsubscribe]\none_click = false\n");
        let html = html();
        let f = Fixture::new(
            label,
            &[
                ("campaign.toml", &campaign),
                ("tpl/body.txt", TEXT),
                ("tpl/body.html", &html),
                ("list.csv", &csv),
            ],
        );
        let (_, messages, _) = f.render_all();
        let mut expected: Vec<&str> = EXPECTED_HEADERS
            .iter()
            .copied()
            .filter(|h| *h != "list-unsubscribe-post")
            .collect();
        expected.push("content-transfer-encoding");
        let p = check_wire(&messages[0], &expected);
        let ct = p.content_type().unwrap();
        assert_eq!(
            (ct.ctype(), ct.subtype()),
            ("text", Some(subtype)),
            "{label}"
        );
        assert_eq!(p.parts.len(), 1, "{label}");
        let body = if subtype == "plain" {
            p.body_text(0).unwrap()
        } else {
            p.body_html(0).unwrap()
        };
        assert!(body.contains(&"z".repeat(2000)), "{label}");
    }
}

#[test]
fn template_syntax_errors_name_the_file_and_line() {
    // In a template file: line 3.
    let f = Fixture::new(
        "syntax-file",
        &[
            ("campaign.toml", CAMPAIGN),
            ("tpl/body.txt", TEXT),
            (
                "tpl/body.html",
                "<p>line 1</p>\n<p>{{ first_name }}</p>\n<p>{% if note %}broken{% endfi %}</p>\n",
            ),
            (
                "list.csv",
                "email,first_name,last_name,note\na@example.com,A,B,n\n",
            ),
        ],
    );
    let errors = f.renderer_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    match &errors[0] {
        RenderError::Template { file, line, .. } => {
            assert_eq!(file, &f.path("tpl/body.html"));
            assert_eq!(*line, 3);
        }
        e => panic!("unexpected {e:?}"),
    }
    let shown = errors[0].to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:3: template error",
            f.path("tpl/body.html").display()
        )),
        "{shown}"
    );

    // Inline in campaign.toml: the line of the TOML file, for "..." and """...""" strings.
    let campaign = CAMPAIGN
        .replace(
            "text_file = \"tpl/body.txt\"",
            "text = \"\"\"\nline one\nline two {{ first_name | }}\nline three\n\"\"\"",
        )
        .replace("subject = \"{{ first_name", "subject = \"{{ first_name }");
    let html = html();
    let f = Fixture::new(
        "syntax-inline",
        &[
            ("campaign.toml", &campaign),
            ("tpl/body.html", &html),
            (
                "list.csv",
                "email,first_name,last_name,note\na@example.com,A,B,n\n",
            ),
        ],
    );
    let errors = f.renderer_errors();
    let toml = f.path("campaign.toml");
    let line_of = |needle: &str| {
        campaign[..campaign.find(needle).unwrap()]
            .matches('\n')
            .count()
            + 1
    };
    let mut got: Vec<(PathBuf, usize)> = errors
        .iter()
        .map(|e| match e {
            RenderError::Template { file, line, .. } => (file.clone(), *line),
            e => panic!("unexpected {e:?}"),
        })
        .collect();
    got.sort_by_key(|g| g.1);
    assert_eq!(
        got,
        [
            (toml.clone(), line_of("subject = ")),
            // A """ string starts on the line after the quotes.
            (toml.clone(), line_of("line two")),
        ]
    );
}

#[test]
fn unknown_variables_fail_in_renderer_new_with_file_and_line() {
    let campaign = CAMPAIGN.replace(
        "subject = \"{{ first_name | default('Hello') }}, our sale starts today\"",
        "subject = \"{{ frist_name }}, sale\"",
    );
    let f = Fixture::new(
        "unknown-var",
        &[
            ("campaign.toml", &campaign),
            ("tpl/body.txt", "Hello\n\n{% if vip %}VIP{% endif %}\n"),
            (
                "tpl/body.html",
                "<p>\n{{ first_name }}\n</p>\n<p>{{ city | upper }}</p>\n",
            ),
            (
                "list.csv",
                "email,first_name,last_name,note\na@example.com,A,B,n\n",
            ),
        ],
    );
    let errors = f.renderer_errors();
    let mut got: Vec<(String, PathBuf, usize)> = errors
        .iter()
        .map(|e| match e {
            RenderError::UnknownVariable {
                name, file, line, ..
            } => (name.clone(), file.clone(), *line),
            e => panic!("unexpected {e:?}"),
        })
        .collect();
    got.sort();
    let subject_line = campaign[..campaign.find("subject =").unwrap()]
        .matches('\n')
        .count()
        + 1;
    assert_eq!(
        got,
        [
            ("city".to_string(), f.path("tpl/body.html"), 4),
            (
                "frist_name".to_string(),
                f.path("campaign.toml"),
                subject_line
            ),
            ("vip".to_string(), f.path("tpl/body.txt"), 3),
        ]
    );
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        shown.iter().any(|s| s.starts_with(&format!(
            "{}:4: template uses \"city\", which is not a column",
            f.path("tpl/body.html").display()
        ))),
        "{shown:#?}"
    );
    assert!(shown[0].contains("columns: email, first_name, last_name, note"));
}

#[test]
fn verp_mail_from_decodes_to_campaign_and_row() {
    let campaign = CAMPAIGN.replace(
        "verp = \"b-{token}@bounce.example.com\"",
        "verp = \"bounce+{token}.x@Bounce.Example.COM\"",
    );
    let html = html();
    let mut csv = String::from("email,first_name,last_name,note\n");
    for i in 0..40 {
        if i % 7 == 3 {
            csv.push_str("broken-address,A,B,n\n");
        } else {
            csv.push_str(&format!("user{i}@example.com,A,B,n\n"));
        }
    }
    let f = Fixture::new(
        "verp",
        &[
            ("campaign.toml", &campaign),
            ("tpl/body.txt", TEXT),
            ("tpl/body.html", &html),
            ("list.csv", &csv),
        ],
    );
    let (c, messages, stats) = f.render_all();
    assert_eq!(stats.rejected, 6);
    let k = key();
    let mut rows = Vec::new();
    for m in &messages {
        let local = m
            .mail_from
            .strip_suffix("@bounce.example.com")
            .unwrap_or_else(|| panic!("domain lowercased: {}", m.mail_from));
        assert!(local.len() <= 64, "{local}");
        let token = local
            .strip_prefix("bounce+")
            .and_then(|t| t.strip_suffix(".x"))
            .unwrap();
        assert_eq!(k.decode(token).unwrap(), (c.id.clone(), m.row));
        // Also after an MTA folded the case.
        assert_eq!(k.decode(&token.to_uppercase()).unwrap().1, m.row);
        // Another key cannot vouch for it.
        assert!(
            VerpKey::new(b"another-secret-0123456789")
                .unwrap()
                .decode(token)
                .is_err()
        );
        rows.push(m.row);
        // The rendered message itself does not carry the envelope.
        check_wire(m, EXPECTED_HEADERS);
    }
    // Rows count rejected records too: 4, 11, 18, ... are missing.
    let expected: Vec<u64> = (1..=40).filter(|r| (r - 1) % 7 != 3).collect();
    assert_eq!(rows, expected);
}

#[test]
fn template_line_endings_become_crlf() {
    // Template files saved with CRLF, bare CR (old Mac) or LF line endings, as short lines
    // (7bit) and as long ones (quoted-printable), all give CRLF-only messages.
    let long = "y ".repeat(600);
    for (label, text) in [
        ("lf", "Hello {{ first_name }},\nline 2\n".to_string()),
        ("crlf", "Hello {{ first_name }},\r\nline 2\r\n".to_string()),
        ("cr", "Hello {{ first_name }},\rline 2\r".to_string()),
        (
            "mixed-long",
            format!("Hello {{{{ first_name }}}},\r{long}\r\nline 2\n"),
        ),
    ] {
        let campaign = CAMPAIGN
            .replace("html_file = \"tpl/body.html\"\n", "")
            .replace("[unsubscribe]\n", "[unsubscribe]\none_click = false\n");
        let html = format!("<p>{}</p>", text.replace("line 2", "<b>line 2</b>"));
        for (with_html, expected) in [(false, &["content-transfer-encoding"][..]), (true, &[][..])]
        {
            let campaign = if with_html {
                campaign.replace("text_file", "html_file = \"tpl/body.html\"\ntext_file")
            } else {
                campaign.clone()
            };
            let f = Fixture::new(
                label,
                &[
                    ("campaign.toml", &campaign),
                    ("tpl/body.txt", &text),
                    ("tpl/body.html", &html),
                    (
                        "list.csv",
                        "email,first_name,last_name,note\na@example.com,Ann,B,n\n",
                    ),
                ],
            );
            let (_, m, _) = f.render_all();
            let mut headers: Vec<&str> = EXPECTED_HEADERS
                .iter()
                .copied()
                .filter(|h| *h != "list-unsubscribe-post")
                .collect();
            headers.extend_from_slice(expected);
            let p = check_wire(&m[0], &headers);
            let body = body_text(&p);
            assert!(body.starts_with("Hello Ann,\n"), "{label}: {body:?}");
            assert!(body.trim_end().ends_with("line 2"), "{label}: {body:?}");
            assert!(!body.contains('\r'), "{label}: {body:?}");
            if with_html {
                let html = p.body_html(0).unwrap();
                assert!(!html.replace("\r\n", "").contains(['\r', '\n']), "{label}");
            }
        }
    }
}
