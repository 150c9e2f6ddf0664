//! Error texts say each cause once (issue 13: "database or disk is full: database or disk is
//! full: …").
//!
//! blast prints an error with its whole `source()` chain (`{:#}`: "context: message: cause").
//! A thiserror variant that puts its cause in its message must therefore not also expose it as
//! `source()` (the cause field is named `cause`, not `source`), or the chain prints it twice —
//! and third-party causes such as `rusqlite::Error` repeat their own message in their own
//! source, so walking into them repeats it again.
//!
//! - `no_message_repeats_its_source`: every library error variant that carries a cause, walked
//!   through `source()`: no message contains its source's message.
//! - `error_attributes_do_not_interpolate_their_source`: the same rule for variants written
//!   later, checked on the text of `src/`: no `#[error("…")]` interpolates a field that is its
//!   variant's source (named `source`, or marked `#[source]` / `#[from]`).
//! - `cli_errors_say_each_cause_once`: the binary, with a delivery log, a journal and a
//!   suppression list that cannot be opened: each cause is in stderr once.

mod common;

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};

use blast::bounce::suppression::SuppressionError;
use blast::campaign::CampaignError;
use blast::journal::JournalError;
use blast::send::SendError;
use blast::send::log::LogError;
use blast::send::plan::PlanError;
use blast::send::source::SourceError;
use blast::smtp::{ReplyError, SmtpError};
use common::Blast;

fn sqlite_full() -> rusqlite::Error {
    // What SQLite says when the disk fills (SQLITE_FULL): its Display and its source's both
    // carry the text.
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(13),
        Some("database or disk is full".into()),
    )
}

fn io_error() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}

fn path() -> PathBuf {
    PathBuf::from("/var/blast/x")
}

/// One value of every variant with a cause (library errors only; `cli` adds `anyhow` context
/// around them).
fn samples() -> Vec<Box<dyn Error>> {
    let smtp_io = || SmtpError::Io {
        cause: io_error(),
        after_data: true,
    };
    let journal_sql = || JournalError::Sql {
        path: path(),
        cause: sqlite_full(),
    };
    vec![
        Box::new(CampaignError::Read {
            path: path(),
            cause: blast::private::ReadProblem::Io(io_error()),
        }),
        Box::new(journal_sql()),
        Box::new(JournalError::Io {
            path: path(),
            cause: io_error(),
        }),
        Box::new(SmtpError::Connect {
            addr: "127.0.0.1:25".parse().unwrap(),
            cause: io_error(),
        }),
        Box::new(smtp_io()),
        Box::new(SmtpError::Malformed {
            cause: ReplyError::TooLong,
            after_data: false,
        }),
        Box::new(SmtpError::TlsHandshake(io_error())),
        Box::new(SuppressionError::Sql {
            path: path(),
            cause: sqlite_full(),
        }),
        Box::new(SuppressionError::Create {
            path: path(),
            cause: io_error(),
        }),
        Box::new(SourceError::Open {
            path: path(),
            cause: io_error(),
        }),
        Box::new(SourceError::Read {
            path: path(),
            cause: csv::Error::from(io_error()),
        }),
        Box::new(SourceError::CreateRejects {
            path: path(),
            cause: io_error(),
        }),
        Box::new(SourceError::WriteRejects {
            path: path(),
            cause: csv::Error::from(io_error()),
        }),
        Box::new(LogError::Open {
            path: path(),
            cause: io_error(),
        }),
        Box::new(LogError::Write {
            path: path(),
            cause: io_error(),
        }),
        Box::new(LogError::Journal(journal_sql())),
        Box::new(SendError::Resolve {
            node: "relay-1".into(),
            host: "relay1.example.com".into(),
            port: 25,
            cause: io_error(),
        }),
        Box::new(SendError::Client {
            node: "relay-1".into(),
            cause: smtp_io(),
        }),
        Box::new(SendError::Receiver(io_error())),
        Box::new(SendError::Journal(journal_sql())),
        Box::new(SendError::Log(LogError::Journal(journal_sql()))),
        Box::new(PlanError::Lock {
            path: path(),
            source: io_error(),
        }),
        Box::new(PlanError::Io {
            what: "cannot read",
            path: path(),
            source: io_error(),
        }),
        Box::new(PlanError::SiblingJournal {
            path: path(),
            source: journal_sql(),
        }),
        Box::new(PlanError::Journal(journal_sql())),
    ]
}

/// The texts `{:#}` joins: the error's message, then each source's.
fn chain(err: &dyn Error) -> Vec<String> {
    let mut texts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        texts.push(e.to_string());
        cur = e.source();
    }
    texts
}

#[test]
fn no_message_repeats_its_source() {
    let mut bad = Vec::new();
    for err in samples() {
        let texts = chain(err.as_ref());
        for pair in texts.windows(2) {
            if pair[0].contains(&pair[1]) {
                bad.push(format!("{err:?}: {:?}", texts.join(": ")));
            }
        }
        // And the cause is said at all: once, in the printed chain.
        let printed = texts.join(": ");
        for cause in ["No space left on device", "database or disk is full"] {
            let n = printed.matches(cause).count();
            assert!(n <= 1, "{err:?} prints {cause:?} {n} times: {printed}");
        }
    }
    assert!(
        bad.is_empty(),
        "messages that repeat their source:\n{}",
        bad.join("\n")
    );
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text of an attribute starting at `start` (at `#[`), through its closing `]`, skipping
/// brackets inside string literals.
fn attribute(text: &str, start: usize) -> &str {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, c) in text[start..].char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return &text[start..start + i + 1];
                }
            }
            _ => {}
        }
    }
    &text[start..]
}

/// The names under which `variant` (its text after the `#[error]`, up to the next variant)
/// has a source: `source`, a `#[source]`/`#[from]` field, `0` for a tuple `#[from]`.
fn source_fields(variant: &str) -> Vec<String> {
    let mut names = Vec::new();
    let tokens: Vec<&str> = variant
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '(')
        .filter(|t| !t.is_empty())
        .collect();
    for (i, t) in tokens.iter().enumerate() {
        if *t == "source:" {
            names.push("source".to_string());
        }
        if (t.starts_with("#[source]") || t.starts_with("#[from]"))
            && let Some(next) = tokens.get(i + 1)
        {
            match next.strip_suffix(':') {
                Some(name) => names.push(name.to_string()),
                None => names.push("0".to_string()), // a tuple variant's field
            }
        }
    }
    names
}

#[test]
fn error_attributes_do_not_interpolate_their_source() {
    let mut files = Vec::new();
    rust_files(&common::project_dir().join("src"), &mut files);
    let mut bad = Vec::new();
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let starts: Vec<usize> = text.match_indices("#[error(").map(|(i, _)| i).collect();
        for (k, &start) in starts.iter().enumerate() {
            let attr = attribute(&text, start);
            if attr.contains("transparent") {
                continue;
            }
            let body_end = starts.get(k + 1).copied().unwrap_or(text.len());
            let mut variant = &text[start + attr.len()..body_end];
            // A last variant ends with its enum; a struct error ends at its first `}`/`;`.
            if let Some(end) = variant.find("\n}") {
                variant = &variant[..end];
            }
            checked += 1;
            for name in source_fields(variant) {
                let uses = [format!("{{{name}"), format!(".{name}")];
                if uses.iter().any(|u| attr.contains(u.as_str())) {
                    let line = text[..start].lines().count() + 1;
                    bad.push(format!(
                        "{}:{line}: {attr} interpolates its source `{name}`",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "found only {checked} #[error] attributes");
    assert!(
        bad.is_empty(),
        "a message that prints its source makes `{{:#}}` print the cause twice; name the \
         field `cause` (no #[source]) or leave it out of the message:\n{}",
        bad.join("\n")
    );
}

#[test]
fn cli_errors_say_each_cause_once() {
    let dir = common::test_dir("error-texts");
    std::fs::write(dir.join("a-file"), "").unwrap();
    std::fs::create_dir(dir.join("a-dir.sqlite")).unwrap();
    std::fs::write(dir.join("list.csv"), "email\na@example.com\n").unwrap();
    let campaign = |log: &str, journal: &str| {
        let toml = dir.join("campaign.toml");
        std::fs::write(
            &toml,
            format!(
                r#"id = "errors"
[from]
address = "news@example.com"
[envelope]
verp = "b-{{token}}@bounce.example.com"
[message]
subject = "Hello"
text = "Hi\n"
[recipients]
path = "list.csv"
[output]
delivery_log = "{log}"
rejects = "rejects.csv"
journal = "{journal}"
[[node]]
name = "embedded"
embedded = true
"#
            ),
        )
        .unwrap();
        toml
    };
    let once = |args: &[&std::ffi::OsStr], cause: &str| {
        let o = Blast::new().args(args).output();
        assert_eq!(o.code(), 70, "{o:?}");
        let err = o.stderr();
        assert_eq!(
            err.matches(cause).count(),
            1,
            "{cause:?} not said once: {o:?}"
        );
        assert_eq!(err.matches("blast: error:").count(), 1, "{o:?}");
    };

    // The delivery log's directory is a regular file: LogError::Open over an io::Error.
    let toml = campaign("a-file/delivery.jsonl", "journal.sqlite");
    once(
        &["send".as_ref(), "-q".as_ref(), toml.as_os_str()],
        "(os error",
    );
    // The journal is a directory: JournalError::Sql over rusqlite's error (which repeats its
    // own message in its own source).
    let toml = campaign("delivery.jsonl", "a-dir.sqlite");
    once(
        &["send".as_ref(), "-q".as_ref(), toml.as_os_str()],
        "unable to open database file",
    );
    once(&["status".as_ref(), toml.as_os_str()], "disk I/O error");
    // The suppression list is a directory: SuppressionError::Sql.
    once(
        &[
            "suppress".as_ref(),
            "--db".as_ref(),
            dir.join("a-dir.sqlite").as_os_str(),
            "list".as_ref(),
        ],
        "unable to open database file",
    );
    common::remove_dir_unless_panicking(&dir);
}
