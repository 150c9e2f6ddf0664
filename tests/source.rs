//! Behaviour of the streaming recipient source on real files in `tests/data/`
//! and on generated lists.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use blast::generate::{GenOptions, write_recipients};
use blast::send::source::{
    AddressProblem, RejectKind, RejectReason, Source, SourceError, SourceOptions, SourceStats,
};

/// Counts live heap bytes per thread, so one test can measure its own memory
/// while others run in parallel.
struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Starts a peak measurement; returns the baseline.
fn reset_peak() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(live));
    live
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("source-{name}"))
}

/// Accepted `(row, line, address)` and the final stats.
fn read_all(opts: SourceOptions) -> (Vec<(u64, u64, String)>, SourceStats) {
    let mut source = Source::open(opts).unwrap();
    let mut accepted = Vec::new();
    while let Some(r) = source.next_recipient().unwrap() {
        assert_eq!(r.record.len(), source.columns().names().len());
        assert!(!r.field(source.columns().address_index()).trim().is_empty());
        accepted.push((r.row, r.line, r.address));
    }
    assert_eq!(
        source.stats().rows,
        source.stats().accepted + source.stats().rejected
    );
    (accepted, source.finish().unwrap())
}

/// Rejects file as records (header first).
fn read_rejects(path: &PathBuf) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .unwrap()
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn with_rejects(file: &str) -> (SourceOptions, PathBuf) {
    let rejects = tmp(&format!("{file}.rejects.csv"));
    let mut opts = SourceOptions::new(data(file));
    opts.rejects_path = Some(rejects.clone());
    (opts, rejects)
}

#[test]
fn hostile_rows_never_yield_a_control_character() {
    let (opts, rejects_path) = with_rejects("hostile.csv");
    let mut source = Source::open(opts).unwrap();
    let mut accepted = Vec::new();
    while let Some(r) = source.next_recipient().unwrap() {
        for field in r.record.iter() {
            assert!(!field.contains(['\r', '\n', '\0', '\u{2028}']), "{field:?}");
        }
        accepted.push((r.row, r.line, r.address.clone(), r.field(1).to_owned()));
    }
    let stats = source.finish().unwrap();

    // A bare CR is a record terminator to the CSV parser: row 8 splits into
    // two short records, so later rows shift but nothing is injected.
    assert_eq!(
        accepted,
        [
            (1, 2, "alice@ok.test".into(), "Alice".into()),
            (3, 5, "carol@ok.test".into(), "Carol\tAnn".into()),
            (11, 16, "jan@ok.test".into(), "Jan".into()),
        ]
    );
    assert_eq!(stats.rows, 11);
    assert_eq!(stats.rejected_for(RejectKind::ControlCharacter), 6);
    assert_eq!(stats.rejected_for(RejectKind::FieldCount), 2);

    let rejects = read_rejects(&rejects_path);
    assert_eq!(
        rejects[0],
        [
            "row",
            "line",
            "reason",
            "email",
            "first_name",
            "last_name",
            "city"
        ]
    );
    let summary: Vec<(&str, &str, &str)> = rejects[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("2", "3", "control character U+000D in column email"),
            ("4", "6", "control character U+000D in column first_name"),
            ("5", "8", "control character U+000D in column last_name"),
            ("6", "10", "control character U+000D in column city"),
            ("7", "12", "control character U+000A in column first_name"),
            ("8", "14", "expected 4 fields, found 2"),
            ("9", "14", "expected 4 fields, found 3"),
            ("10", "15", "control character U+2028 in column first_name"),
        ]
    );
    // The original values survive the round trip through the rejects file.
    assert_eq!(rejects[1][3], "bob@ok.test\r\nBcc: x@evil.test");
    assert_eq!(rejects[2][4], "Bob\r\nBcc: x@evil.test");
    assert_eq!(rejects[6][3..], ["hal@ok.test", "Hal"]);
    assert_eq!(rejects[7][3..], ["Bcc: x@evil.test", "Ng", "Riga"]);
}

#[test]
fn malformed_rows_are_rejected_with_every_reason_and_stable_rows() {
    let (opts, rejects_path) = with_rejects("malformed.csv");
    let (accepted, stats) = read_all(opts);
    assert_eq!(
        accepted,
        [
            (1, 2, "good1@ok.test".into()),
            (15, 16, "good2@ok.test".into()),
            (18, 19, "good3@ok.test".into()),
        ]
    );
    assert_eq!((stats.rows, stats.accepted, stats.rejected), (18, 3, 15));
    let by_kind: Vec<(RejectKind, u64)> = stats.rejected_by_kind().collect();
    assert_eq!(
        by_kind,
        [
            (RejectKind::InvalidUtf8, 1),
            (RejectKind::FieldCount, 2),
            (RejectKind::ControlCharacter, 3),
            (RejectKind::EmptyAddress, 2),
            (RejectKind::InvalidAddress, 5),
            (RejectKind::DuplicateAddress, 2),
            (RejectKind::TooLarge, 0),
        ]
    );

    let rejects = read_rejects(&rejects_path);
    assert_eq!(rejects.len(), 16);
    let expected = [
        ("2", "3", "invalid UTF-8 in column first_name"),
        ("3", "4", "expected 3 fields, found 2"),
        ("4", "5", "expected 3 fields, found 4"),
        ("5", "6", "control character U+0000 in column first_name"),
        ("6", "7", "control character U+007F in column first_name"),
        ("7", "8", "control character U+0085 in column first_name"),
        ("8", "9", "empty address"),
        ("9", "10", "empty address"),
        ("10", "11", "invalid address: missing @"),
        (
            "11",
            "12",
            "invalid address: IP-literal domain not supported",
        ),
        (
            "12",
            "13",
            "invalid address: quoted local part not supported",
        ),
        (
            "13",
            "14",
            "invalid address: non-ASCII local part not supported (needs SMTPUTF8)",
        ),
        ("14", "15", "invalid address: domain has no dot"),
        ("16", "17", "duplicate address"),
        ("17", "18", "duplicate address"),
    ];
    for (record, (row, line, reason)) in rejects[1..].iter().zip(expected) {
        assert_eq!(
            (record[0].as_str(), record[1].as_str(), record[2].as_str()),
            (row, line, reason)
        );
    }
    // Original fields follow, lossily decoded where they were not UTF-8.
    assert_eq!(rejects[1][3..], ["utf8@ok.test", "M\u{FFFD}ller", "Bad"]);
    assert_eq!(rejects[3][3..], ["long@ok.test", "Long", "Row", "Extra"]);
    assert_eq!(rejects[4][3..], ["nul@ok.test", "Nul\0", "Byte"]);
    assert_eq!(rejects[11][3], "\"quoted\"@ok.test");
    assert_eq!(rejects[14][3..], ["GOOD1@OK.TEST", "Dup", "Upper"]);
}

#[test]
fn without_dedupe_duplicates_are_accepted() {
    let mut opts = SourceOptions::new(data("malformed.csv"));
    opts.dedupe = false;
    let (accepted, stats) = read_all(opts);
    let rows: Vec<u64> = accepted.iter().map(|a| a.0).collect();
    assert_eq!(rows, [1, 15, 16, 17, 18]);
    assert_eq!(accepted[2].2, "GOOD1@ok.test");
    assert_eq!(accepted[3].2, "good2@ok.test");
    assert_eq!(stats.rejected_for(RejectKind::DuplicateAddress), 0);
}

#[test]
fn bom_and_crlf_are_transparent_and_blank_lines_are_not_rows() {
    let mut source = Source::open(SourceOptions::new(data("bom_crlf.csv"))).unwrap();
    assert_eq!(source.columns().names(), ["email", "name"]);
    assert_eq!(source.columns().index("email"), Some(0));
    let mut got = Vec::new();
    while let Some(r) = source.next_recipient().unwrap() {
        got.push((r.row, r.line, r.address.clone(), r.field(1).to_owned()));
    }
    assert_eq!(
        got,
        [
            (1, 2, "ann@crlf.test".into(), "Ann".into()),
            (2, 4, "bo@crlf.test".into(), "Bo".into()),
            (3, 5, "cy@crlf.test".into(), "Cy".into()),
        ]
    );
}

#[test]
fn multiline_fields_are_parsed_whole_then_rejected() {
    // Also: the blank line before row 3 is skipped, not counted as a row.
    let (opts, rejects_path) = with_rejects("multiline.csv");
    let mut source = Source::open(opts).unwrap();
    let mut got = Vec::new();
    while let Some(r) = source.next_recipient().unwrap() {
        got.push((r.row, r.line, r.field(1).to_owned()));
    }
    source.finish().unwrap();
    assert_eq!(
        got,
        [
            (1, 2, "single line".into()),
            (3, 7, "quoted, with comma".into()),
            (5, 10, "say \"hi\"".into()),
        ]
    );
    let rejects = read_rejects(&rejects_path);
    assert_eq!(
        rejects[1][..5],
        [
            "2",
            "3",
            "control character U+000A in column note",
            "two@ml.test",
            "first\nsecond\nthird"
        ]
    );
    assert_eq!(
        rejects[2][..5],
        [
            "4",
            "8",
            "control character U+000D in column note",
            "four@ml.test",
            "a\r\nb"
        ]
    );
}

#[test]
fn idn_domains_become_lowercase_punycode() {
    let (opts, rejects_path) = with_rejects("idn.csv");
    let (accepted, _) = read_all(opts);
    let addresses: Vec<&str> = accepted.iter().map(|a| a.2.as_str()).collect();
    assert_eq!(
        addresses,
        [
            "anna@xn--bcher-kva.example",
            "BOB@mail-7.test",
            "chen@xn---1-5t7du0c.test",
            "dora@xn--bcher-kva.example",
            "Fay@xn--l-0ga.test",
        ]
    );
    let rejects = read_rejects(&rejects_path);
    assert_eq!(
        rejects[1][..3],
        [
            "5",
            "6",
            "invalid address: character '_' not allowed in domain"
        ]
    );
}

/// Dedupe compares normalised addresses: the same address written with another case, an IDN
/// domain in Unicode or punycode, or surrounding blanks is a duplicate.
#[test]
fn duplicates_are_found_across_spellings_of_one_address() {
    let path = tmp("spellings.csv");
    std::fs::write(
        &path,
        "email,name\nanna@bücher.example,A\n ANNA@XN--BCHER-KVA.example ,B\nAnna@Bücher.Example,C\nbob@x.test,D\n\tBob@X.TEST,E\nbob@x.test2,F\n",
    )
    .unwrap();
    let (accepted, stats) = read_all(SourceOptions::new(path));
    let rows: Vec<u64> = accepted.iter().map(|a| a.0).collect();
    assert_eq!(rows, [1, 4, 6]);
    assert_eq!(stats.rejected_for(RejectKind::DuplicateAddress), 3);
}

#[test]
fn no_header_uses_given_columns_and_delimiter() {
    let mut opts = SourceOptions::new(data("no_header.csv"));
    opts.has_header = false;
    opts.delimiter = b';';
    opts.columns = Some(vec!["addr".into(), "name".into(), "n".into()]);
    opts.address_column = "addr".into();
    let mut source = Source::open(opts.clone()).unwrap();
    assert_eq!(source.columns().address_index(), 0);
    let first = source.next_recipient().unwrap().unwrap();
    assert_eq!(
        (
            first.row,
            first.line,
            first.address.as_str(),
            first.field(2)
        ),
        (1, 1, "al@nh.test", "1")
    );
    assert_eq!(first.field(99), "");
    let second = source.next_recipient().unwrap().unwrap();
    assert_eq!((second.row, second.field(1)), (2, "Bea"));
    assert!(source.next_recipient().unwrap().is_none());

    opts.columns = None;
    assert!(matches!(
        Source::open(opts),
        Err(SourceError::ColumnsRequired { .. })
    ));
}

#[test]
fn header_problems_are_errors_naming_file_and_column() {
    let err = Source::open(SourceOptions::new(data("missing_address.csv")))
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::MissingAddressColumn { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("missing_address.csv")
            && msg.contains("\"email\"")
            && msg.contains("mail, name"),
        "{msg}"
    );

    let err = Source::open(SourceOptions::new(data("duplicate_header.csv")))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, SourceError::DuplicateColumn { ref name, .. } if name == "name"));
    assert!(
        msg.contains("duplicate_header.csv") && msg.contains("\"name\""),
        "{msg}"
    );

    let err = Source::open(SourceOptions::new(data("empty_header.csv")))
        .err()
        .unwrap();
    assert!(
        matches!(err, SourceError::EmptyColumnName { position: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("empty_header.csv"));

    let err = Source::open(SourceOptions::new(data("empty.csv")))
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::MissingHeader { .. }), "{err}");

    let err = Source::open(SourceOptions::new(data("does-not-exist.csv")))
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::Open { .. }), "{err}");

    // A directory is refused before reading, saying what it is.
    let err = Source::open(SourceOptions::new(data(""))).err().unwrap();
    assert!(matches!(err, SourceError::NotRegular { .. }), "{err}");
    assert!(err.to_string().contains("is a directory"), "{err}");

    let err = Source::open(SourceOptions::new(data("bad_header.csv")))
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::HeaderUtf8 { .. }), "{err}");

    let mut opts = SourceOptions::new(data("bom_crlf.csv"));
    opts.delimiter = b'"';
    let err = Source::open(opts).err().unwrap();
    assert!(matches!(err, SourceError::InvalidDelimiter { .. }), "{err}");

    let mut opts = SourceOptions::new(data("no_header.csv"));
    opts.has_header = false;
    opts.columns = Some(vec!["email".into(), "na\nme".into(), "n".into()]);
    let err = Source::open(opts).err().unwrap();
    assert!(
        matches!(err, SourceError::InvalidColumnName { position: 2, .. }),
        "{err}"
    );

    let mut opts = SourceOptions::new(data("bom_crlf.csv"));
    opts.columns = Some(vec!["email".into(), "first_name".into()]);
    let err = Source::open(opts.clone()).err().unwrap();
    assert!(
        matches!(err, SourceError::HeaderMismatch { ref found, .. } if found == &["email", "name"])
    );
    opts.columns = Some(vec!["email".into(), "name".into()]);
    assert!(Source::open(opts).is_ok());
}

#[test]
fn rejects_file_is_created_even_when_empty() {
    let (opts, rejects_path) = with_rejects("bom_crlf.csv");
    std::fs::write(&rejects_path, "stale").unwrap();
    let (accepted, stats) = read_all(opts);
    assert_eq!((accepted.len(), stats.rejected), (3, 0));
    assert_eq!(
        std::fs::read_to_string(&rejects_path).unwrap(),
        "row,line,reason,email,name\n"
    );
}

/// Every `RejectKind` appears in a generated list with broken rows, dedupe
/// accounts for exactly the extra rows it rejects, and streaming 100k rows
/// keeps memory flat when dedupe is off.
#[test]
fn generated_list_streams_with_every_reject_kind() {
    let path = tmp("generated-100k.csv");
    let opts = GenOptions {
        rows: 100_000,
        domains: 20_000,
        broken_per_million: 10_000,
        seed: 42,
    };
    write_recipients(File::create(&path).unwrap(), &opts).unwrap();

    // Line numbers point at the real line even after multi-line rejects.
    let text = std::fs::read(&path).unwrap();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            text.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let mut checked_lines = 0u64;

    let mut source_opts = SourceOptions::new(&path);
    source_opts.dedupe = false;
    let base = reset_peak();
    let (accepted_all, no_dedupe) = {
        let mut source = Source::open(source_opts.clone()).unwrap();
        let mut accepted = 0u64;
        while let Some(r) = source.next_recipient().unwrap() {
            assert!(r.address.is_ascii());
            let start = line_starts[r.line as usize - 1];
            checked_lines += u64::from(text[start..].starts_with(r.field(0).as_bytes()));
            accepted += 1;
        }
        (accepted, source.finish().unwrap())
    };
    let streaming_peak = peak() - base;
    assert_eq!(checked_lines, accepted_all);
    assert!(
        streaming_peak < 256 * 1024,
        "streaming peak {streaming_peak} bytes"
    );

    source_opts.dedupe = true;
    let base = reset_peak();
    let (_, stats) = read_all(source_opts);
    let dedupe_peak = peak() - base;

    assert_eq!(stats.rows, 100_000);
    // Every kind the generator makes (it makes no rows over the size caps: those are tested
    // on their own, in `oversize_rows_are_rejected_and_the_list_goes_on`).
    for (kind, count) in stats.rejected_by_kind() {
        assert!(
            count > 0 || kind == RejectKind::TooLarge,
            "no {kind} rejects"
        );
    }
    let duplicates = stats.rejected_for(RejectKind::DuplicateAddress);
    assert_eq!(no_dedupe.rejected_for(RejectKind::DuplicateAddress), 0);
    assert_eq!(accepted_all, no_dedupe.accepted);
    assert_eq!(stats.accepted + duplicates, no_dedupe.accepted);
    // ~1% broken in 8 kinds: about 125 duplicates.
    assert!((60..250).contains(&duplicates), "{duplicates}");
    std::fs::remove_file(&path).unwrap();
    println!(
        "100k rows: streaming peak {streaming_peak} B, with dedupe {dedupe_peak} B ({:.1} B/address)",
        dedupe_peak as f64 / stats.accepted as f64
    );
}

#[test]
fn clean_generated_list_is_fully_accepted() {
    let path = tmp("generated-clean.csv");
    let opts = GenOptions {
        rows: 30_000,
        domains: 5_000,
        broken_per_million: 0,
        seed: 3,
    };
    write_recipients(File::create(&path).unwrap(), &opts).unwrap();
    let (accepted, stats) = read_all(SourceOptions::new(&path));
    assert_eq!(
        (stats.rows, stats.accepted, stats.rejected),
        (30_000, 30_000, 0)
    );
    // Mixed LF/CRLF endings across many read chunks: one row per line.
    for (row, line, _) in &accepted {
        assert_eq!(*line, row + 1);
    }
    assert!(accepted.iter().any(|a| a.2.contains("@xn--")));
    assert!(accepted.iter().all(|a| {
        let domain = a.2.split_once('@').unwrap().1;
        domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    }));
}

#[test]
fn reject_reason_kinds_match() {
    let reason = RejectReason::InvalidAddress(AddressProblem::MissingAt);
    assert_eq!(reason.kind(), RejectKind::InvalidAddress);
    assert_eq!(
        RejectKind::DuplicateAddress.to_string(),
        "duplicate_address"
    );
}

/// `cargo test --release --test source -- --ignored --nocapture bench`
/// Prints generator speed, per-row source cost and dedupe memory at 1.2M rows
/// (override with BENCH_ROWS).
#[test]
#[ignore]
fn bench_source_throughput_and_dedupe_memory() {
    let rows = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_200_000);
    let path = tmp("bench.csv");
    let opts = GenOptions {
        rows,
        ..GenOptions::default()
    };
    let start = Instant::now();
    write_recipients(File::create(&path).unwrap(), &opts).unwrap();
    let generated = start.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "gen: {rows} rows, {:.1} MB in {generated:.2?}",
        size as f64 / 1e6
    );

    for dedupe in [false, true] {
        let mut source_opts = SourceOptions::new(&path);
        source_opts.dedupe = dedupe;
        let base = reset_peak();
        let start = Instant::now();
        let mut source = Source::open(source_opts).unwrap();
        let mut bytes = 0usize;
        while let Some(r) = source.next_recipient().unwrap() {
            bytes += r.address.len();
        }
        let elapsed = start.elapsed();
        let stats = source.finish().unwrap();
        let peak = peak() - base;
        assert_eq!(stats.accepted, rows);
        println!(
            "source dedupe={dedupe}: {:.0} ns/row, {:.0} rows/s, peak heap {:.1} MB ({:.1} B/row), {bytes} address bytes",
            elapsed.as_nanos() as f64 / rows as f64,
            rows as f64 / elapsed.as_secs_f64(),
            peak as f64 / 1e6,
            peak as f64 / rows as f64,
        );
    }
    std::fs::remove_file(&path).unwrap();
}

/// A 2 MB field in row 3 (quoted, with a line break inside): the row is rejected with the
/// reason, rows 1, 2 and 4 are accepted with their right line numbers, and the reader never
/// holds the field (issue 13, item 6).
#[test]
fn oversize_rows_are_rejected_and_the_list_goes_on() {
    let path = tmp("oversize.csv");
    let half = "x".repeat(1 << 20);
    let text = format!(
        "email,note\na@x.test,one\nb@x.test,two\nc@x.test,\"{half}\n{half}\"\nd@x.test,four\n"
    );
    std::fs::write(&path, &text).unwrap();
    let rejects = tmp("oversize.rejects.csv");
    let mut opts = SourceOptions::new(&path);
    opts.rejects_path = Some(rejects.clone());

    let started = Instant::now();
    let base = reset_peak();
    let (accepted, stats) = read_all(opts.clone());
    let peak = peak() - base;
    assert_eq!(
        accepted,
        [
            (1, 2, "a@x.test".into()),
            (2, 3, "b@x.test".into()),
            (4, 6, "d@x.test".into()),
        ]
    );
    assert_eq!(stats.rejected_for(RejectKind::TooLarge), 1);
    assert!(peak < 512 * 1024, "peak {peak} bytes for a 2 MB field");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());

    let rows = read_rejects(&rejects);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(&rows[1][..2], ["3", "4"]);
    assert_eq!(
        rows[1][2],
        "column note is longer than 65536 bytes (recipients.max_field_size); only its start is in this file"
    );
    assert_eq!(rows[1][3], "c@x.test");
    assert!(rows[1][4].chars().count() <= 201, "{}", rows[1][4].len());

    // A row of many short fields over the record cap, and a CRLF file.
    let row = format!("e@x.test,{}", ["y"; 600].join(","));
    let text = format!("email,note\r\na@x.test,one\r\n{row}\r\nd@x.test,four\r\n");
    std::fs::write(&path, text).unwrap();
    opts.max_record_size = 1024;
    let (accepted, stats) = read_all(opts.clone());
    assert_eq!(
        accepted,
        [(1, 2, "a@x.test".into()), (3, 4, "d@x.test".into())]
    );
    assert_eq!(stats.rejected_for(RejectKind::TooLarge), 1);
    let rows = read_rejects(&rejects);
    assert_eq!(
        rows[1][..3],
        [
            "2",
            "3",
            "row is longer than 1024 bytes (recipients.max_record_size); only its start is in this file"
        ]
    );
    std::fs::remove_file(&path).unwrap();
}

/// A 100 KB header cell: the error says what is wrong in a line, without echoing the cell.
/// With caps that let it through, the header errors that name columns still echo at most a
/// few hundred characters (issue 13, item 6).
#[test]
fn a_huge_header_cell_gives_a_short_error() {
    let path = tmp("huge-header.csv");
    let cell = "h".repeat(100 << 10);
    std::fs::write(&path, format!("{cell},name\na@x.test,Ann\n")).unwrap();
    let err = Source::open(SourceOptions::new(&path)).err().unwrap();
    let message = err.to_string();
    assert!(
        matches!(err, SourceError::HeaderTooLarge { .. }),
        "{message}"
    );
    assert!(message.len() < 300, "{} bytes: {message}", message.len());
    assert!(
        message.contains("column 1 is longer than 65536 bytes"),
        "{message}"
    );

    let mut opts = SourceOptions::new(&path);
    opts.max_field_size = 1 << 20;
    let err = Source::open(opts).err().unwrap();
    let message = err.to_string();
    assert!(
        matches!(err, SourceError::MissingAddressColumn { .. }),
        "{message}"
    );
    assert!(message.len() < 600, "{} bytes", message.len());
    assert!(message.contains("hhh…"), "{message}");
    std::fs::remove_file(&path).unwrap();
}

/// `/dev/zero` and a directory as the list: refused at once, saying what they are (issue 13,
/// item 5).
#[test]
fn a_list_that_is_not_a_regular_file_is_refused() {
    let started = Instant::now();
    let err = Source::open(SourceOptions::new("/dev/zero")).err().unwrap();
    assert!(matches!(err, SourceError::NotRegular { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a regular file (a device)"),
        "{err}"
    );
    let err = Source::open(SourceOptions::new(data(""))).err().unwrap();
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert!(started.elapsed().as_secs() < 5);
}
