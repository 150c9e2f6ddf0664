//! What the fuzz targets check: one function per parser that takes arbitrary bytes, runs the
//! real code on them and panics when a property that must hold for every input breaks. The
//! libFuzzer targets in `fuzz/` call these, and `tests/fuzz_corpus.rs` replays the committed
//! corpora through them on every test run (stable toolchain, no fuzzer needed), so a finding
//! stays fixed.
//!
//! Owns no behaviour of blast's own; uses the parsers it checks: `smtp` (reply parser, the
//! receiver's dialogue, dot-stuffing), `bounce::dsn`, `send::source`, `campaign` and `verp`.
//! Nothing in blast imports it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::bounce::dsn::{self, Kind};
use crate::campaign::{Campaign, CampaignError};
use crate::send::source::{RejectKind, Source, SourceOptions, check_address};
use crate::smtp::Reply;
use crate::smtp::receiver::fuzz::{Dialogue, session};
use crate::smtp::{MAX_REPLY_BYTES, complete_len, stuff_body};
use crate::verp::{VerpError, VerpKey};

/// The SMTP reply parser (the client reads every relay reply through it): a parsed reply is a
/// well-formed one, its length does not depend on what follows it, and every prefix of it is
/// "need more bytes", never an error (else a reply split across TCP segments would fail).
pub fn reply(data: &[u8]) {
    let Ok(Some((r, n))) = Reply::parse(data) else {
        return;
    };
    assert!(n > 0 && n <= data.len() && n <= MAX_REPLY_BYTES);
    assert_eq!(data[n - 1], b'\n');
    assert!((100..600).contains(&r.code), "code {}", r.code);
    if let Some(e) = r.enhanced {
        assert_eq!(u16::from(e.class), r.code / 100, "enhanced class of {r:?}");
    }
    assert!(r.text.len() <= 512, "text of {} bytes", r.text.len());
    assert!(!r.text.contains('\n'), "newline in reply text {:?}", r.text);
    let exact = Reply::parse(&data[..n]).expect("the reply alone parses");
    assert_eq!(exact, Some((r.clone(), n)));
    // Every proper prefix: incomplete (sampled past 512 bytes, for speed).
    let step = (n / 512).max(1);
    for k in (0..n).step_by(step) {
        assert_eq!(complete_len(&data[..k]), Ok(None), "prefix of {k} bytes");
    }
    if r.queue_id().is_some() {
        assert!(r.is_positive());
    }
}

/// The receiver's command parser and DATA state machine (what `blast sink` runs on internet
/// input). The first bytes of `data` pick the mode and how the rest is cut into reads; the
/// session is run twice, once as one read and once in those pieces, and must come out the same:
/// the same replies, the same messages, the same end. Every reply line is a well-formed SMTP
/// reply of printable ASCII (nothing of the client's bytes is echoed raw), and no more than one
/// reply comes per command line (plus the greeting and a parting 421).
pub fn receiver(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let scripted = mode & 1 == 1;
    let (cuts, input) = rest.split_at(rest.len().min(usize::from(mode >> 1) % 16));
    let pieces: Vec<usize> = cuts.iter().map(|&b| usize::from(b) + 1).collect();
    let whole = session(input, &[], scripted);
    let split = session(input, &pieces, scripted);
    assert_eq!(whole, split, "one read vs reads of {pieces:?}");
    check_replies(&whole, input);
    for (_, _, body) in &whole.messages {
        assert!(
            body.len() <= 4096,
            "a {}-byte message past the cap",
            body.len()
        );
    }
}

fn check_replies(d: &Dialogue, input: &[u8]) {
    let mut finals = 0usize;
    for line in d.replies.split_inclusive(|&b| b == b'\n') {
        let ok = line.len() >= 5
            && line.ends_with(b"\r\n")
            && line[..3].iter().all(u8::is_ascii_digit)
            && matches!(line[3], b' ' | b'-' | b'\r')
            && line[..line.len() - 2]
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b));
        assert!(
            ok,
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
        if line[3] != b'-' {
            finals += 1;
        }
    }
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    assert!(
        finals <= lines + 2,
        "{finals} replies to {lines} input lines"
    );
}

/// Client dot-stuffing against the receiver's unstuffing: any body sent through
/// `smtp::client` arrives as sent, with line ends made CRLF and a final CRLF added, and
/// nothing in it can end the DATA early or start a second message.
pub fn dot_stuffing(body: &[u8]) {
    let mut wire = b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n".to_vec();
    stuff_body(body, &mut wire);
    wire.extend_from_slice(b"QUIT\r\n");
    let d = session(&wire, &[], false);
    let mut expected = Vec::with_capacity(body.len() + 8);
    for line in body.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        expected.extend_from_slice(text);
        expected.extend_from_slice(b"\r\n");
    }
    if expected.len() > 4096 || expected.first() == Some(&b'!') {
        return; // past the test receiver's size cap, or refused by its policy
    }
    assert_eq!(
        d.messages.len(),
        1,
        "replies {:?}",
        String::from_utf8_lossy(&d.replies)
    );
    assert_eq!(
        String::from_utf8_lossy(&d.messages[0].2),
        String::from_utf8_lossy(&expected)
    );
}

/// The bounce classifier (every message reaching `blast sink`): whatever it is given, it
/// returns in bounded time, names only addresses that could be written to the suppression list
/// (no whitespace or control characters, lowercased, bounded), folds diagnostics to one line,
/// and a VERP address replaces the report's own for a one-recipient report.
pub fn dsn(data: &[u8]) {
    let c = dsn::classify(data);
    assert!(
        c.recipients.len() <= 1000,
        "{} recipients",
        c.recipients.len()
    );
    for r in &c.recipients {
        assert!(
            r.address.len() <= 512,
            "address of {} bytes",
            r.address.len()
        );
        assert!(
            !r.address
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control()),
            "address {:?}",
            r.address
        );
        assert_eq!(
            r.address,
            r.address.to_lowercase(),
            "address not lowercased"
        );
        assert!(
            !r.diagnostic.contains(['\r', '\n']),
            "diagnostic {:?}",
            r.diagnostic
        );
        if let Some(code) = r.reply_code {
            assert!((200..600).contains(&code), "reply code {code}");
        }
    }
    let with = dsn::with_verp_address(c.clone(), "row@example.test");
    assert_eq!(with.kind, c.kind);
    if matches!(c.kind, Kind::Bounce | Kind::Complaint | Kind::Delivered) && c.recipients.len() == 1
    {
        assert_eq!(with.recipients[0].address, "row@example.test");
    }
}

/// A scratch directory for the file-based targets, one per process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("blast-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// The recipient list reader and row validator. The first byte picks the delimiter, the header
/// and small size caps; the rest is the list. Every row is counted once (accepted or rejected
/// for a reason); an accepted address is already in normal form and unique; accepted fields hold
/// no control characters but TAB and fit the caps; line numbers only grow.
pub fn csv(data: &[u8]) {
    let Some((&mode, list)) = data.split_first() else {
        return;
    };
    let path = scratch().join("list.csv");
    std::fs::write(&path, list).expect("write list");
    let mut opts = SourceOptions::new(&path);
    opts.delimiter = [b',', b';', b'\t', b'|'][usize::from(mode & 3)];
    opts.has_header = mode & 4 == 0;
    if !opts.has_header {
        opts.columns = Some(vec!["email".into(), "name".into()]);
    }
    opts.max_field_size = 64;
    opts.max_record_size = 256;
    opts.rejects_path = (mode & 8 == 8).then(|| scratch().join("rejects.csv"));
    let Ok(mut source) = Source::open(opts) else {
        return;
    };
    let mut seen = std::collections::HashSet::new();
    let (mut accepted, mut last_line) = (0u64, 0u64);
    while let Ok(Some(r)) = source.next_recipient() {
        accepted += 1;
        // Lines are LF-ended (as `sed -n Np` counts them): records ended by a lone CR share
        // one, so a line number may repeat, never go back.
        assert!(
            r.line >= last_line.max(1),
            "line {} after {last_line}",
            r.line
        );
        last_line = r.line;
        assert_eq!(check_address(&r.address).as_deref(), Ok(r.address.as_str()));
        assert!(
            seen.insert(r.address.to_lowercase()),
            "duplicate {:?}",
            r.address
        );
        let mut size = 0;
        for field in r.record.iter() {
            assert!(field.len() <= 64, "field of {} bytes", field.len());
            assert!(
                !field.chars().any(|c| c.is_control() && c != '\t'),
                "control character in {field:?}"
            );
            size += field.len();
        }
        assert!(size <= 256, "record of {size} bytes");
    }
    let stats = source.stats().clone();
    let rejected: u64 = RejectKind::ALL.iter().map(|&k| stats.rejected_for(k)).sum();
    assert_eq!(stats.accepted, accepted);
    assert_eq!(stats.rows, accepted + rejected, "{stats:?}");
}

/// The campaign loader: any text gives a campaign or a list of problems, each pointing at a
/// line and column inside the file, with a message that, as `blast check` prints it (through
/// `terminal::printable_lines`: file names and values echoed from the file may hold anything),
/// has no control characters.
pub fn campaign(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch().join("campaign");
    static FILES: OnceLock<()> = OnceLock::new();
    FILES.get_or_init(|| {
        std::fs::create_dir_all(dir.join("templates")).expect("campaign dir");
        for (name, body) in [
            ("list.csv", "email,name\na@example.test,A\n"),
            ("templates/body.txt", "Hello {{ name }}\n"),
            ("templates/body.html", "<p>Hello {{ name }}</p>\n"),
        ] {
            std::fs::write(dir.join(name), body).expect("campaign file");
        }
    });
    let path = dir.join("campaign.toml");
    let problems = match Campaign::parse(&path, text) {
        Ok(_) => return,
        Err(CampaignError::Invalid(p)) => p,
        Err(e) => panic!("parse gave {e}"),
    };
    assert!(!problems.is_empty(), "invalid without a problem");
    let lines = text.split('\n').count();
    for p in &problems {
        assert!(
            p.line >= 1 && p.line <= lines,
            "line {} of {lines}: {p}",
            p.line
        );
        assert!(p.column >= 1, "column 0: {p}");
        assert!(!p.message.trim().is_empty(), "empty message at {p}");
        let shown = crate::terminal::printable_lines(&p.to_string()).into_owned();
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "control character in {shown:?}"
        );
    }
}

/// The VERP token decoder (every RCPT TO reaching `blast sink`). Arbitrary text never verifies
/// (a forgery needs the key); a real token verifies to its campaign and row, bound to its
/// address, in any ASCII case; any other change to it is refused.
pub fn verp(data: &[u8]) {
    static KEY: OnceLock<VerpKey> = OnceLock::new();
    let key = KEY.get_or_init(|| VerpKey::new(b"fuzz-secret-0123456789abcdef").expect("key"));
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = key.verify(&text) {
        panic!("forged token verified: {text:?} -> {t:?}");
    }
    // A real token from the input's parts, then the input's edit applied to it.
    let mut parts = text.splitn(4, '\u{0}');
    let (Some(campaign), Some(row), Some(address)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let campaign: String = campaign
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(crate::verp::MAX_CAMPAIGN_ID_LEN)
        .collect();
    if !campaign.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return;
    }
    let row: u64 = row
        .bytes()
        .fold(0u64, |n, b| n.wrapping_mul(31) ^ u64::from(b));
    let token = key.encode(&campaign, row, address);
    let got = key.verify(&token).expect("a real token verifies");
    assert_eq!((got.campaign.as_str(), got.row), (campaign.as_str(), row));
    assert_eq!(key.is_bound_to(&got, address), Some(true));
    assert!(key.verify(&token.to_ascii_uppercase()).is_ok());
    let edit = parts.next().unwrap_or("").as_bytes();
    let mut edited = token.clone().into_bytes();
    for pair in edit.chunks(2) {
        let at = usize::from(pair[0]) % (edited.len() + 1);
        match pair.get(1) {
            Some(&b) if at < edited.len() => edited[at] = b,
            Some(&b) => edited.push(b),
            None if at < edited.len() => {
                edited.remove(at);
            }
            None => {}
        }
    }
    let edited = String::from_utf8_lossy(&edited);
    if edited.eq_ignore_ascii_case(&token) {
        return;
    }
    match key.verify(&edited) {
        Err(VerpError::Malformed | VerpError::BadMac) => {}
        other => panic!("edited token {edited:?} (from {token:?}) gave {other:?}"),
    }
}
