//! The fuzz corpora, replayed: every input committed under `fuzz/corpus/TARGET/` (the seeds
//! from the test data, what the long fuzz runs kept, and each finding's reproducer) goes
//! through the same check as in its libFuzzer target (`blast::fuzzing::TARGET`), on the stable
//! toolchain, so what a fuzz run once found stays fixed. Then property tests of the round
//! trips: VERP token encode/verify, and dot-stuffing against the receiver's unstuffing.

use std::path::Path;

use blast::verp::VerpKey;
use proptest::prelude::*;

/// Runs `check` on every file of `fuzz/corpus/{target}`; the corpus must not be empty.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "{} is empty", dir.display());
    for path in &entries {
        let data = std::fs::read(path).unwrap();
        let caught = std::panic::catch_unwind(|| check(&data));
        assert!(
            caught.is_ok(),
            "fuzz/corpus/{target}/{} fails",
            path.file_name().unwrap().to_string_lossy()
        );
    }
    eprintln!("{target}: {} inputs replayed", entries.len());
}

#[test]
fn corpus_reply() {
    replay("reply", blast::fuzzing::reply);
}

#[test]
fn corpus_receiver() {
    replay("receiver", blast::fuzzing::receiver);
}

#[test]
fn corpus_dsn() {
    replay("dsn", blast::fuzzing::dsn);
}

#[test]
fn corpus_csv() {
    replay("csv", blast::fuzzing::csv);
}

#[test]
fn corpus_campaign() {
    replay("campaign", blast::fuzzing::campaign);
}

#[test]
fn corpus_verp() {
    replay("verp", blast::fuzzing::verp);
}

fn key() -> VerpKey {
    VerpKey::new(b"proptest-secret-0123456789").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any campaign id, row and address: the token verifies to the same campaign and row, is
    /// bound to that address (ASCII case ignored) and to no other, and fits a local part.
    #[test]
    fn verp_token_round_trip(
        campaign in "[a-z0-9][a-z0-9-]{0,23}",
        row in any::<u64>(),
        address in "[^\\x00]{1,80}",
        other in "[^\\x00]{1,80}",
    ) {
        let key = key();
        let token = key.encode(&campaign, row, &address);
        prop_assert!(token.len() + "b-".len() <= 64, "{} octets", token.len());
        let t = key.verify(&token).unwrap();
        prop_assert_eq!((t.campaign.as_str(), t.row), (campaign.as_str(), row));
        prop_assert_eq!(key.is_bound_to(&t, &address), Some(true));
        prop_assert_eq!(key.is_bound_to(&t, &address.to_ascii_uppercase()), Some(true));
        if !other.eq_ignore_ascii_case(&address) {
            prop_assert_eq!(key.is_bound_to(&t, &other), Some(false));
        }
        prop_assert_eq!(key.decode(&token.to_ascii_uppercase()).unwrap(), (campaign, row));
    }

    /// Any body, dot-heavy and with every kind of line end: sent through the client's
    /// dot-stuffing into the receiver, it arrives as sent (line ends made CRLF), as one
    /// message, whatever dots and bare CR/LF it holds.
    #[test]
    fn dot_stuffing_round_trip(body in proptest::collection::vec(
        prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..600)
    ) {
        blast::fuzzing::dot_stuffing(&body);
    }
}
