//! DKIM signing checked by an independent verifier: Python's dkimpy (`tests/dkim_verify.py`),
//! which is not part of blast's dependency tree, with the public keys served through its DNS
//! hook from the records `blast keys generate` prints.
//!
//! - every message of a sample campaign verifies, for rsa-sha256, ed25519-sha256 and both (dual);
//! - a message changed after signing (one body byte, or the Subject) fails, so the check can fail;
//! - `blast preview` output carries the signature(s) over the expected headers, the one-click
//!   unsubscribe header and Feedback-ID;
//! - `blast check` reports a missing or malformed key at the key_file's line and column, and warns
//!   when the bounce domain cannot align with From for DMARC;
//! - `blast keys generate` writes a 0600 key, prints the record and never overwrites a key.
//!
//! Needs python3 with dkimpy, dnspython and PyNaCl (`scripts/install-deps` installs them; this
//! test tries `pip install` once if they are missing and fails if it cannot).
//!
//! `cargo test --release --test dkim -- --ignored --nocapture bench` prints signing figures
//! (scripts/bench-dkim).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Once};
use std::time::Instant;

use blast::campaign::Campaign;
use common::{Blast, BlastOutput};

/// `blast ARGS` in `dir`.
fn blast(args: &[&str], dir: &Path) -> BlastOutput {
    Blast::new().args(args).current_dir(dir).output()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// dkimpy, dnspython and PyNaCl importable by `python3`, installing them with pip if needed.
fn need_dkimpy() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let probe = || {
            Command::new("python3")
                .args(["-c", "import dkim, dns, nacl.signing"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if probe() {
            return;
        }
        let _ = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "dkimpy",
                "dnspython",
                "pynacl",
            ])
            .status();
        assert!(
            probe(),
            "python3 cannot import dkimpy/dnspython/PyNaCl: run scripts/install-deps (or `python3 -m pip install dkimpy dnspython pynacl`)"
        );
    });
}

/// Runs the independent verifier; true when every message verifies.
fn verify(records: &Path, messages: &[PathBuf]) -> (bool, String) {
    need_dkimpy();
    let script = common::project_dir().join("tests/dkim_verify.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(records)
        .args(messages)
        .output()
        .expect("run python3 tests/dkim_verify.py");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "dkim_verify.py did not run properly ({code:?}): {}",
        text(&out)
    );
    (code == Some(0), text(&out))
}

/// Generates a key with `blast keys generate`, returns (key file, DNS record line).
fn generate(dir: &Path, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let out = blast(
        &[
            "keys",
            "generate",
            "--selector",
            selector,
            "--domain",
            "example.com",
            "--algorithm",
            algorithm,
            "--out-dir",
            "keys",
        ],
        dir,
    );
    assert!(out.success(), "keys generate: {}", out.text());
    let record = std::str::from_utf8(out.stdout_bytes())
        .unwrap()
        .trim()
        .to_string();
    (
        dir.join(format!("keys/example.com.{selector}.key.pem")),
        record,
    )
}

const CSV: &str = "email,first_name,last_name,city,plan\n\
alice@example.com,Alice,Archer,Berlin,pro\n\
bob@Example.ORG,Bob,Baker,,free\n\
chloe@example.net,Chloé,Çelik,Zürich,pro\n\
dan@example.net,  Dan  ,O'Neil,Köln,\n\
eve@example.org,Ève,\"Smith, Jr.\",Paris,free\n\
frank@example.com,Frank,,,\n";

/// A campaign directory with templates, the list and `[dkim]` built from `dkim`.
fn campaign(dir: &Path, dkim: &str) -> PathBuf {
    let top = common::project_dir();
    let toml = format!(
        r#"id = "dkim-test"
[from]
name = "Exämple Shop"
address = "news@example.com"
reply_to = "support@example.com"
[headers]
"X-Campaign" = "dkim-test"
[envelope]
verp = "b-{{token}}@bounce.example.com"
[message]
subject = "{{{{ first_name | default('Hello') }}}},   our spring sale	starts today"
to_name = "{{{{ first_name }}}} {{{{ last_name }}}}"
text_file = "{text}"
html_file = "{html}"
[recipients]
path = "list.csv"
[unsubscribe]
mailto = "unsubscribe+{{{{ unsubscribe_token }}}}@example.com"
url = "https://shop.example.com/unsubscribe/{{{{ unsubscribe_token }}}}"
{dkim}
[[node]]
embedded = true
"#,
        text = top.join("templates/spring.txt").display(),
        html = top.join("templates/spring.html").display(),
    );
    fs::write(dir.join("list.csv"), CSV).unwrap();
    let path = dir.join("campaign.toml");
    fs::write(&path, toml).unwrap();
    path
}

/// Renders every row of the campaign into `dir/msg-N.eml`.
fn render_all(path: &Path, dir: &Path) -> Vec<PathBuf> {
    let (_c, mut source, renderer) = blast::cli::prepare(path, None, blast::cli::Purpose::Send)
        .unwrap_or_else(|p| panic!("{p:?}"));
    let mut files = Vec::new();
    let mut rows = Vec::new();
    while let Some(r) = source.next_recipient().unwrap() {
        rows.push(r);
    }
    for r in rows {
        let m = renderer.render(r, blast::clock::unix_now()).unwrap();
        let f = dir.join(format!("msg-{}.eml", m.row));
        fs::write(&f, &m.bytes).unwrap();
        files.push(f);
    }
    assert_eq!(files.len(), 6, "every row renders");
    files
}

fn write_records(dir: &Path, records: &[&str]) -> PathBuf {
    let p = dir.join("records.zone");
    fs::write(&p, records.join("\n") + "\n").unwrap();
    p
}

/// Every message verifies; changed copies of two of them do not.
fn verifies_and_tampering_fails(label: &str, keys: &[(&str, &str)]) {
    let dir = common::test_dir(label);
    let mut records = Vec::new();
    let mut sections = Vec::new();
    for (selector, algorithm) in keys {
        let (key, record) = generate(&dir, selector, algorithm);
        assert!(
            record.starts_with(&format!(
                "{selector}._domainkey.example.com. IN TXT \"v=DKIM1; k={algorithm}; p="
            )),
            "{record}"
        );
        records.push(record);
        sections.push((selector.to_string(), key));
    }
    let mut dkim = format!(
        "[dkim]\ndomain = \"example.com\"\nselector = \"{}\"\nkey_file = \"{}\"\n",
        sections[0].0,
        sections[0].1.display()
    );
    if let Some((sel, key)) = sections.get(1) {
        dkim.push_str(&format!(
            "dual = {{ selector = \"{sel}\", key_file = \"{}\" }}\n",
            key.display()
        ));
    }
    let path = campaign(&dir, &dkim);
    let files = render_all(&path, &dir);
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let zone = write_records(&dir, &refs);
    for f in &files {
        let bytes = fs::read(f).unwrap();
        let n = bytes
            .windows(16)
            .filter(|w| w == b"DKIM-Signature: ")
            .count();
        assert_eq!(n, keys.len(), "{}: one signature per key", f.display());
    }
    let (ok, out) = verify(&zone, &files);
    assert!(ok, "dkimpy rejected a message:\n{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok")).count(), 6);

    // One body byte changed.
    let mut bytes = fs::read(&files[0]).unwrap();
    let at = bytes.len() - 20;
    bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
    let body = dir.join("tampered-body.eml");
    fs::write(&body, &bytes).unwrap();
    let (ok, out) = verify(&zone, std::slice::from_ref(&body));
    assert!(!ok, "a changed body byte must fail:\n{out}");
    assert!(out.contains("body hash mismatch"), "{out}");

    // The Subject changed.
    let s = String::from_utf8(fs::read(&files[1]).unwrap()).unwrap();
    let subject = dir.join("tampered-subject.eml");
    fs::write(&subject, s.replacen("Subject: Bob", "Subject: Rob", 1)).unwrap();
    assert_ne!(fs::read(&subject).unwrap(), s.as_bytes());
    let (ok, out) = verify(&zone, std::slice::from_ref(&subject));
    assert!(!ok, "a changed Subject must fail:\n{out}");

    // The wrong key published: fails.
    let (_, other) = generate(&dir, "other", keys[0].1);
    let wrong = other.replacen("other._domainkey", &format!("{}._domainkey", keys[0].0), 1);
    let mut wrong_records = vec![wrong.as_str()];
    wrong_records.extend(refs.iter().skip(1));
    let zone2 = dir.join("wrong.zone");
    fs::write(&zone2, wrong_records.join("\n") + "\n").unwrap();
    let (ok, out) = verify(&zone2, &files[..1]);
    assert!(!ok, "a signature must not verify with another key:\n{out}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn ed25519_messages_verify_with_dkimpy() {
    verifies_and_tampering_fails("dkim-ed25519", &[("ed1", "ed25519")]);
}

#[test]
fn rsa_messages_verify_with_dkimpy() {
    verifies_and_tampering_fails("dkim-rsa", &[("rsa1", "rsa")]);
}

#[test]
fn dual_signed_messages_verify_with_dkimpy() {
    verifies_and_tampering_fails("dkim-dual", &[("rsa1", "rsa"), ("ed1", "ed25519")]);
}

/// A PKCS#1 RSA key (`BEGIN RSA PRIVATE KEY`, what `openssl genrsa -traditional` and older
/// tools write) is accepted and verifies.
#[test]
fn pkcs1_rsa_key_verifies() {
    let dir = common::test_dir("dkim-pkcs1");
    let key = dir.join("pkcs1.pem");
    let out = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    let path = campaign(
        &dir,
        "[dkim]\ndomain = \"example.com\"\nselector = \"p1\"\nkey_file = \"pkcs1.pem\"\nalgorithm = \"rsa-sha256\"\n",
    );
    let c = Campaign::load(&path).unwrap();
    let record = c.dkim.as_ref().unwrap().signers[0].dns_record();
    let files = render_all(&path, &dir);
    let zone = write_records(&dir, &[&record]);
    let (ok, out) = verify(&zone, &files);
    assert!(ok, "{out}");
    let _ = fs::remove_dir_all(&dir);
}

fn header_block(msg: &str) -> &str {
    msg.split("\r\n\r\n").next().unwrap()
}

/// Unfolded header fields of a message.
fn fields(msg: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in header_block(msg).split("\r\n") {
        if line.starts_with([' ', '\t']) {
            out.last_mut().unwrap().1.push_str(line.trim_start());
        } else {
            let (n, v) = line.split_once(':').unwrap();
            out.push((n.to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn preview_shows_signed_compliance_headers() {
    let dir = common::test_dir("dkim-preview");
    let (rsa, rsa_record) = generate(&dir, "r1", "rsa");
    let (ed, ed_record) = generate(&dir, "e1", "ed25519");
    let path = campaign(
        &dir,
        &format!(
            "[dkim]\ndomain = \"example.com\"\nselector = \"r1\"\nkey_file = \"{}\"\nfeedback_id = \"{{campaign}}:newsletter:{{from_domain}}\"\ndual = {{ selector = \"e1\", key_file = \"{}\", algorithm = \"ed25519-sha256\" }}\n",
            rsa.display(),
            ed.display()
        ),
    );
    let out = blast(
        &[
            "preview",
            path.to_str().unwrap(),
            "--row",
            "3",
            "--out",
            "p.eml",
        ],
        &dir,
    );
    assert!(out.success(), "{}", out.text());
    let msg = fs::read_to_string(dir.join("p.eml")).unwrap();
    let f = fields(&msg);
    let get = |name: &str| -> Vec<&str> {
        f.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    // Signatures come first, one per key.
    assert_eq!(f[0].0, "DKIM-Signature");
    assert_eq!(f[1].0, "DKIM-Signature");
    let sigs = get("DKIM-Signature");
    assert_eq!(sigs.len(), 2);
    assert!(sigs[0].contains("a=rsa-sha256") && sigs[0].contains("s=r1"));
    assert!(sigs[1].contains("a=ed25519-sha256") && sigs[1].contains("s=e1"));
    for sig in &sigs {
        assert!(sig.contains("c=relaxed/relaxed"), "{sig}");
        assert!(sig.contains("d=example.com"), "{sig}");
        let h = sig
            .split(';')
            .map(str::trim)
            .find_map(|t| t.strip_prefix("h="))
            .unwrap();
        let h: Vec<String> = h
            .split(':')
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        for want in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "reply-to",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "feedback-id",
            "mime-version",
            "content-type",
        ] {
            assert!(h.iter().any(|n| n == want), "h= lacks {want}: {h:?}");
        }
        // Only headers that exist are listed.
        for n in &h {
            assert_eq!(get(n).len(), 1, "h= names {n}, present once");
        }
        assert!(!h.iter().any(|n| n == "x-campaign"));
    }
    assert_eq!(get("List-Unsubscribe-Post"), ["List-Unsubscribe=One-Click"]);
    let lu = get("List-Unsubscribe")[0];
    assert!(
        lu.contains("<mailto:unsubscribe+")
            && lu.contains("<https://shop.example.com/unsubscribe/"),
        "{lu}"
    );
    assert_eq!(get("Feedback-ID"), ["dkim-test:newsletter:example.com"]);
    // And the previewed bytes verify.
    let zone = write_records(&dir, &[&rsa_record, &ed_record]);
    let (ok, out) = verify(&zone, &[dir.join("p.eml")]);
    assert!(ok, "{out}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn check_reports_key_problems_at_key_file() {
    let dir = common::test_dir("dkim-check");
    let (ed, _) = generate(&dir, "e1", "ed25519");
    fs::write(dir.join("garbage.pem"), "not a key\n").unwrap();
    let cases = [
        ("missing.pem", "cannot read"),
        ("garbage.pem", "no PEM private key"),
    ];
    for (key, want) in cases {
        let path = campaign(
            &dir,
            &format!("[dkim]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"{key}\"\n"),
        );
        let out = blast(&["check", path.to_str().unwrap()], &dir);
        let t = out.text();
        assert_eq!(out.status().code(), Some(2), "{t}");
        // [dkim] starts on line 21 of the generated file; key_file is its 4th line, column 12.
        let line = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .position(|l| l.starts_with("key_file"))
            .unwrap()
            + 1;
        assert!(
            t.contains(&format!("campaign.toml:{line}:12: dkim.key_file:")) && t.contains(want),
            "{t}"
        );
    }
    // Algorithm that does not match the key: at the algorithm value.
    let path = campaign(
        &dir,
        &format!(
            "[dkim]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"{}\"\nalgorithm = \"rsa-sha256\"\n",
            ed.display()
        ),
    );
    let out = blast(&["check", path.to_str().unwrap()], &dir);
    assert_eq!(out.status().code(), Some(2));
    assert!(out.text().contains("holds a ed25519 key"), "{}", out.text());

    // A good key: ok, the signer is listed; a bounce domain outside From's organisational
    // domain gets a DMARC warning, a subdomain of it does not.
    let good = format!(
        "[dkim]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"{}\"\n",
        ed.display()
    );
    let path = campaign(&dir, &good);
    let out = blast(&["check", path.to_str().unwrap()], &dir);
    let t = out.text();
    assert!(out.success(), "{t}");
    assert!(
        t.contains("dkim       d=example.com s=s1 a=ed25519-sha256"),
        "{t}"
    );
    assert!(t.contains("Feedback-ID: dkim-test:example.com"), "{t}");
    assert!(!t.contains("organisational"), "{t}");
    let toml = fs::read_to_string(&path)
        .unwrap()
        .replace("@bounce.example.com", "@bounces.esp-mail.net");
    fs::write(&path, toml).unwrap();
    let out = blast(&["check", path.to_str().unwrap()], &dir);
    let t = out.text();
    assert!(out.success(), "a warning, not a problem: {t}");
    assert!(
        t.contains("warning: envelope domain bounces.esp-mail.net and From domain example.com have different organisational domains"),
        "{t}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn keys_generate_writes_private_key_0600_and_never_overwrites() {
    let dir = common::test_dir("dkim-keys");
    let (key, record) = generate(&dir, "s2026", "ed25519");
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key mode");
    let pem = fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    assert!(record.starts_with("s2026._domainkey.example.com. IN TXT \"v=DKIM1; k=ed25519; p="));
    // p= is the 32-byte raw key: 44 base64 characters.
    let p = record.split("p=").nth(1).unwrap().trim_end_matches('"');
    assert_eq!(p.len(), 44, "{record}");
    assert_eq!(
        fs::read_to_string(dir.join("keys/example.com.s2026.txt")).unwrap(),
        format!("{record}\n")
    );
    // openssl reads the key blast wrote.
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let again = blast(
        &[
            "keys",
            "generate",
            "--selector",
            "s2026",
            "--domain",
            "example.com",
            "--out-dir",
            "keys",
        ],
        &dir,
    );
    assert_eq!(again.status().code(), Some(2), "{}", again.text());
    assert!(again.text().contains("never overwrites"));
    assert_eq!(fs::read_to_string(&key).unwrap(), pem, "key unchanged");

    // RSA (through openssl): a 2048-bit key, and a TXT value split into <= 255-octet strings.
    let (rsa, record) = generate(&dir, "r2026", "rsa");
    assert_eq!(
        fs::metadata(&rsa).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let strings: Vec<&str> = record.split('"').skip(1).step_by(2).collect();
    assert!(
        strings.len() >= 2 && strings.iter().all(|s| s.len() <= 255),
        "{record}"
    );
    assert!(
        strings[0].starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"),
        "{record}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Signing cost per message (not a test): `cargo test --release --test dkim -- --ignored
/// --nocapture bench_sign_cost`. Prints msg/s on one core and on all cores for rsa-2048 and
/// ed25519, on a real ~4 KB rendered message.
#[test]
#[ignore]
fn bench_sign_cost() {
    let dir = common::test_dir("dkim-bench");
    let (rsa, _) = generate(&dir, "r1", "rsa");
    let (ed, _) = generate(&dir, "e1", "ed25519");
    let path = campaign(&dir, "");
    let unsigned = fs::read(&render_all(&path, &dir)[0]).unwrap();
    let n: usize = std::env::var("BLAST_BENCH_SIGNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let only = std::env::var("BLAST_BENCH_ALGORITHM").ok();
    for (name, key) in [("rsa-2048", &rsa), ("ed25519", &ed)] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let path = campaign(
            &dir,
            &format!(
                "[dkim]\ndomain = \"example.com\"\nselector = \"s\"\nkey_file = \"{}\"\n",
                key.display()
            ),
        );
        let dkim = Arc::clone(Campaign::load(&path).unwrap().dkim.as_ref().unwrap());
        let run = |count: usize| {
            let mut m = Vec::with_capacity(unsigned.len() + 1024);
            for i in 0..count {
                m.clear();
                m.extend_from_slice(&unsigned);
                dkim.sign(&mut m, 1_770_000_000 + i as i64);
            }
            m.len()
        };
        let t = Instant::now();
        run(n);
        let one = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| run(n));
            }
        });
        let all = (n * threads) as f64 / t.elapsed().as_secs_f64();
        println!(
            "sign {name:<9} {n} msgs of {} B: {:>8.0} msg/s on 1 core ({:.1} µs/msg), {:>8.0} msg/s on {threads} threads",
            unsigned.len(),
            one,
            1e6 / one,
            all
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
