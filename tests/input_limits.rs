//! Hostile and careless inputs that must fail fast and small, through the `blast` binary as an
//! operator runs it (issue 13, items 4 to 7): templates that never end or write gigabytes,
//! template and list paths that are devices or directories, list fields of megabytes, and
//! list values that try to smuggle URIs into `List-Unsubscribe`.
//!
//! Every run is bounded in time (a blast that hangs is killed and the test fails with its
//! output), and the runs that used to eat memory are watched: their peak RSS (`VmHWM`) must
//! stay small.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Blast, BlastOutput};

/// A campaign directory under `target/test-tmp`, removed unless the test failed.
struct Dir(PathBuf);

impl Dir {
    fn new(label: &str) -> Dir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-tmp")).join(format!(
            "limits-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, content).unwrap();
        p
    }

    /// `campaign.toml` with `[message]` body `message`, list `list`, extra sections `extra`
    /// (before the node), and blast's embedded receiver as the only node (no secret needed).
    fn campaign(&self, message: &str, list: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"id = "limits"

[from]
address = "news@example.com"

[envelope]
verp = "b-{{token}}@bounce.example.com"

[message]
subject = "Hello"
{message}

[recipients]
path = "{list}"

{extra}

[[node]]
embedded = true
"#
        );
        self.write("campaign.toml", text)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs blast to its end within `limit`, sampling its peak RSS (`VmHWM`, KB) meanwhile.
fn run_watched(blast: Blast, limit: Duration) -> (BlastOutput, u64) {
    let mut child = blast.spawn();
    let status = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + limit;
    let mut peak_kb = 0;
    while child.try_wait().is_none() && Instant::now() < deadline {
        if let Ok(text) = fs::read_to_string(&status) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak_kb = peak_kb.max(hwm.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (child.wait_bounded(Duration::from_secs(1)), peak_kb)
}

fn check(campaign: &Path) -> BlastOutput {
    Blast::new()
        .args(["check".as_ref(), campaign.as_os_str()])
        .timeout(Duration::from_secs(30))
        .output()
}

// ---------------------------------------------------------------------------------------------
// Item 4: template execution is bounded
// ---------------------------------------------------------------------------------------------

/// The issue's template writes 100,000 copies of a 100 KB string (10 GB): `blast check` reached
/// 17 GB RSS. Now the render stops at the 1 MB part cap and check says so, at once.
#[test]
fn a_template_writing_gigabytes_fails_check_quickly() {
    let dir = Dir::new("runaway");
    dir.write("list.csv", "email\na@example.com\nb@example.com\n");
    let campaign = dir.campaign(
        r#"text = '{% set s = "x"*100000 %}{% for i in s %}{{ s }}{% endfor %}'"#,
        "list.csv",
        "",
    );
    let started = Instant::now();
    let (o, peak_kb) = run_watched(
        Blast::new().args(["check".as_ref(), campaign.as_os_str()]),
        Duration::from_secs(20),
    );
    assert_eq!(o.code(), 2, "{o:?}");
    let stderr = o.stderr();
    assert!(
        stderr.contains("row 1: cannot render")
            && stderr.contains("(message.text)")
            && stderr.contains(
                "over 1048576 bytes, the limit of one rendered part ([limits] max_part_size)"
            ),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(peak_kb < 300 * 1024, "peak RSS {peak_kb} KB");

    // preview stops the same way instead of writing the 10 GB message.
    let o = Blast::new()
        .args([
            "preview".as_ref(),
            campaign.as_os_str(),
            "--row".as_ref(),
            "1".as_ref(),
        ])
        .timeout(Duration::from_secs(20))
        .output();
    assert_eq!(o.code(), 2, "{o:?}");
    assert!(o.stdout_bytes().is_empty());
    assert!(o.stderr().contains("max_part_size"), "{}", o.stderr());
}

/// A loop that writes nothing but would run 10^10 times runs out of minijinja fuel instead.
#[test]
fn a_template_that_works_for_ever_runs_out_of_fuel() {
    let dir = Dir::new("fuel");
    dir.write("list.csv", "email\na@example.com\n");
    let campaign = dir.campaign(
        "text = '{% set s = \"x\" * 100000 %}{% for i in s %}{% for j in s %}{% endfor %}{% endfor %}done'",
        "list.csv",
        "",
    );
    let started = Instant::now();
    let o = check(&campaign);
    assert_eq!(o.code(), 2, "{o:?}");
    let stderr = o.stderr();
    assert!(
        stderr.contains("(message.text)") && stderr.contains("does too much work"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// A list value that makes one row's body larger than the cap: a render error of that row
/// only, with the engine-free template path and with minijinja alike; the other rows render.
#[test]
fn a_row_over_the_part_cap_is_a_render_error_of_that_row_only() {
    for (label, text) in [
        ("simple", "Hi {{ note }}"),
        ("engine", "Hi {{ note | upper }}"),
    ] {
        let dir = Dir::new(label);
        let big = "n".repeat(3000);
        dir.write(
            "list.csv",
            format!("email,note\na@example.com,short\nb@example.com,{big}\nc@example.com,ok\n"),
        );
        let campaign = dir.campaign(
            &format!("text = \"{text}\""),
            "list.csv",
            "[limits]\nmax_part_size = \"2KB\"",
        );
        let summary = dir.path("summary.json");
        let o = Blast::new()
            .args(["send".as_ref(), campaign.as_os_str()])
            .args(["--dry-run", "--quiet", "--summary-json"])
            .arg(&summary)
            .timeout(Duration::from_secs(60))
            .output();
        // Exit 1: a row failed for good (its template cannot be rendered).
        assert_eq!(o.code(), 1, "{label}: {o:?}");
        let s: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(s["rows"]["read"], 3, "{label}: {s}");
        assert_eq!(s["rows"]["rendered"], 2, "{label}: {s}");
        assert_eq!(s["rows"]["render_errors"], 1, "{label}: {s}");
        // check names the row, the template and the limit.
        let o = check(&campaign);
        assert_eq!(o.code(), 2, "{label}: {o:?}");
        let stderr = o.stderr();
        assert!(
            stderr.contains("row 2: cannot render") && stderr.contains("over 2048 bytes"),
            "{label}: {stderr}"
        );
        assert!(
            !stderr.contains("row 1:") && !stderr.contains("row 3:"),
            "{stderr}"
        );
    }
}

/// The size settings are checked like every other value, at their line.
#[test]
fn size_settings_out_of_range_or_misspelt_are_problems() {
    let dir = Dir::new("sizes");
    dir.write("list.csv", "email\na@example.com\n");
    for (extra, expected) in [
        (
            "[limits]\nmax_part_size = \"100MB\"",
            ":17:17: limits.max_part_size = \"100 MB\" is out of range: use 1 KB to 64 MB",
        ),
        (
            "[limits]\nmax_part_size = \"1 parsec\"",
            ":17:17: invalid size \"1 parsec\": unknown unit \"parsec\"",
        ),
    ] {
        let campaign = dir.campaign("text = \"Hi\"", "list.csv", extra);
        let o = check(&campaign);
        assert_eq!(o.code(), 2, "{extra}: {o:?}");
        assert!(o.stderr().contains(expected), "{extra}: {}", o.stderr());
    }
    let campaign = dir.campaign(
        "text = \"Hi\"",
        "list.csv",
        "[limits]\nmax_part_size = \"4kb\"",
    );
    let o = check(&campaign);
    assert_eq!(o.code(), 0, "{o:?}");
}

// ---------------------------------------------------------------------------------------------
// Item 5: paths that are not regular files
// ---------------------------------------------------------------------------------------------

/// `text_file = "/dev/zero"` read for ever (17 GB); a list that is a directory or /dev/zero
/// "did not exist". Each is now a problem saying what the path is, at once.
#[test]
fn devices_and_directories_are_refused_at_check() {
    let dir = Dir::new("paths");
    dir.write("list.csv", "email\na@example.com\n");
    fs::create_dir(dir.path("lists")).unwrap();
    dir.write("big.txt", vec![b'x'; (1 << 20) + 1]);
    for (message, list, expected) in [
        (
            "text_file = \"/dev/zero\"",
            "list.csv",
            "template /dev/zero is not a regular file (a device)",
        ),
        (
            "text_file = \".\"",
            "list.csv",
            "is a directory, not a file",
        ),
        (
            "text_file = \"big.txt\"",
            "list.csv",
            "is larger than 1024 KB, the limit for a template file",
        ),
        ("text = \"Hi\"", "lists", "lists is a directory, not a file"),
        (
            "text = \"Hi\"",
            "/dev/zero",
            "recipient list /dev/zero is not a regular file (a device)",
        ),
    ] {
        let campaign = dir.campaign(message, list, "");
        let started = Instant::now();
        let (o, peak_kb) = run_watched(
            Blast::new().args(["check".as_ref(), campaign.as_os_str()]),
            Duration::from_secs(10),
        );
        assert_eq!(o.code(), 2, "{message} / {list}: {o:?}");
        assert!(
            o.stderr().contains(expected),
            "{message} / {list}: {}",
            o.stderr()
        );
        assert!(
            !o.stderr().contains("does not exist"),
            "{message} / {list}: {}",
            o.stderr()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{message} / {list}"
        );
        assert!(
            peak_kb < 200 * 1024,
            "{message} / {list}: peak RSS {peak_kb} KB"
        );
    }
}

/// The campaign file itself, a DKIM key file and `[smtp] ca_file` are held to the same rule:
/// `blast check /dev/zero` read for ever, a key file `/dev/zero` too, and a `ca_file` that is a
/// directory "did not exist". Each is now refused at once, saying what the path is, and read
/// through a bounded reader (1 MB) when it is a file.
#[test]
fn campaign_key_and_ca_paths_that_are_not_files_are_refused_at_check() {
    let dir = Dir::new("inputs");
    dir.write("list.csv", "email\na@example.com\n");
    fs::create_dir(dir.path("certs")).unwrap();
    let key = dir.campaign(
        "text = \"Hi\"",
        "list.csv",
        "[dkim]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"/dev/zero\"",
    );
    let key = fs::rename(&key, dir.path("key.toml")).map(|()| dir.path("key.toml"));
    let ca = dir.campaign("text = \"Hi\"", "list.csv", "[smtp]\nca_file = \"certs\"");
    let big = dir.write("big.toml", vec![b'#'; (1 << 20) + 1]);
    let certs = dir.path("certs");
    for (campaign, expected) in [
        (
            dir.0.clone(),
            format!(
                "{}:1:1: the campaign file is a directory, not a file",
                dir.0.display()
            ),
        ),
        (
            PathBuf::from("/dev/zero"),
            "/dev/zero:1:1: the campaign file is not a regular file (a device)".to_string(),
        ),
        (big, "the campaign file is larger than 1024 KB".to_string()),
        (
            key.unwrap(),
            "dkim.key_file: /dev/zero is not a regular file (a device)".to_string(),
        ),
        (
            ca,
            format!("CA file {} is a directory, not a file", certs.display()),
        ),
    ] {
        let started = Instant::now();
        let (o, peak_kb) = run_watched(
            Blast::new().args(["check".as_ref(), campaign.as_os_str()]),
            Duration::from_secs(10),
        );
        let what = campaign.display();
        assert_eq!(o.code(), 2, "{what}: {o:?}");
        assert!(o.stderr().contains(&expected), "{what}: {}", o.stderr());
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        assert!(peak_kb < 200 * 1024, "{what}: peak RSS {peak_kb} KB");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 6: list field and record caps
// ---------------------------------------------------------------------------------------------

/// A 2 MB field in row 3: that row is rejected (`too_large`, in the rejects file with the
/// reason) and the others are sent; a 100 KB header cell gives a short error.
#[test]
fn a_huge_field_rejects_its_row_and_a_huge_header_cell_a_short_error() {
    let dir = Dir::new("fields");
    let big = "x".repeat(2 << 20);
    dir.write(
        "list.csv",
        format!(
            "email,note\na@example.com,1\nb@example.com,2\nc@example.com,{big}\nd@example.com,4\n"
        ),
    );
    let campaign = dir.campaign(
        "text = \"Hi {{ note }}\"",
        "list.csv",
        "[output]\nrejects = \"rejects.csv\"",
    );
    // A real send (into the embedded receiver): a dry run writes no rejects file.
    let summary = dir.path("summary.json");
    let (o, peak_kb) = run_watched(
        Blast::new()
            .args(["send".as_ref(), campaign.as_os_str()])
            .args(["--quiet", "--summary-json"])
            .arg(&summary),
        Duration::from_secs(60),
    );
    assert_eq!(o.code(), 0, "{o:?}");
    let s: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["rows"]["read"], 4, "{s}");
    assert_eq!(s["outcomes"]["accepted"], 3, "{s}");
    assert_eq!(
        s["rows"]["rejected_by_reason"],
        serde_json::json!({"too_large": 1}),
        "{s}"
    );
    assert!(peak_kb < 200 * 1024, "peak RSS {peak_kb} KB");
    let rejects = fs::read_to_string(dir.path("rejects.csv")).unwrap();
    let line = rejects.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with("3,4,column note is longer than 65536 bytes (recipients.max_field_size)"),
        "{line:.300}"
    );
    assert!(rejects.len() < 1000, "{} bytes", rejects.len());

    // The header: one line of error, not the 100 KB cell.
    dir.write(
        "header.csv",
        format!("email,{}\na@example.com,1\n", "h".repeat(100 << 10)),
    );
    let campaign = dir.campaign("text = \"Hi\"", "header.csv", "");
    let o = check(&campaign);
    assert_eq!(o.code(), 2, "{o:?}");
    let stderr = o.stderr();
    assert!(
        stderr.len() < 1000,
        "{} bytes of stderr: {stderr:.400}",
        stderr.len()
    );
    assert!(
        stderr.contains("header row: column 2 is longer than 65536 bytes"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 7: List-Unsubscribe smuggling
// ---------------------------------------------------------------------------------------------

/// The `List-Unsubscribe` value of a message (unfolded), from its header block.
fn list_unsubscribe(message: &[u8]) -> String {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = &message[..end];
    assert!(
        head.is_ascii(),
        "8-bit header bytes: {}",
        String::from_utf8_lossy(head)
    );
    let head = std::str::from_utf8(head)
        .unwrap()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let values: Vec<&str> = head
        .split("\r\n")
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("list-unsubscribe")
                .then_some(value.trim())
        })
        .collect();
    assert_eq!(values.len(), 1, "{head}");
    values[0].to_string()
}

/// The URIs of a `List-Unsubscribe` value, `<a>, <b>` (RFC 2369); panics on anything else.
fn uris(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|part| {
            let part = part.trim();
            let uri = part
                .strip_prefix('<')
                .and_then(|p| p.strip_suffix('>'))
                .unwrap_or_else(|| panic!("{part:?} is not <URI> in {value:?}"));
            assert!(!uri.contains(['<', '>', ' ']), "{uri:?} in {value:?}");
            uri.to_string()
        })
        .collect()
}

/// A name column used in the unsubscribe targets: `Eve>, <mailto:x@evil.test` and `Zoë`
/// each give exactly the two URIs of the campaign, ASCII only, the values percent-encoded;
/// `blast check` warns about the column.
#[test]
fn list_values_cannot_add_uris_to_list_unsubscribe() {
    let dir = Dir::new("unsub");
    dir.write(
        "list.csv",
        "email,name\neve@example.com,\"Eve>, <mailto:x@evil.test\"\nzoe@example.com,Zoë\n",
    );
    let campaign = dir.campaign(
        "text = \"Hi {{ name }}\"",
        "list.csv",
        "[unsubscribe]\n\
         mailto = \"unsubscribe+{{ unsubscribe_token }}@example.com?subject={{ name }}\"\n\
         url = \"https://shop.example.com/u/{{ unsubscribe_token }}?n={{ name }}\"",
    );
    for (row, encoded) in [
        ("1", "Eve%3E%2C%20%3Cmailto%3Ax%40evil.test"),
        ("2", "Zo%C3%AB"),
    ] {
        let o = Blast::new()
            .args([
                "preview".as_ref(),
                campaign.as_os_str(),
                "--row".as_ref(),
                row.as_ref(),
            ])
            .timeout(Duration::from_secs(30))
            .output();
        assert_eq!(o.code(), 0, "row {row}: {o:?}");
        let value = list_unsubscribe(o.stdout_bytes());
        let uris = uris(&value);
        assert_eq!(uris.len(), 2, "row {row}: {value}");
        assert!(
            uris[0].starts_with("mailto:unsubscribe+")
                && uris[0].ends_with(&format!("@example.com?subject={encoded}")),
            "row {row}: {value}"
        );
        assert!(
            uris[1].starts_with("https://shop.example.com/u/")
                && uris[1].ends_with(&format!("?n={encoded}")),
            "row {row}: {value}"
        );
    }
    // check renders both rows fine, and warns that the targets use a list column.
    let o = check(&campaign);
    assert_eq!(o.code(), 0, "{o:?}");
    let stderr = o.stderr();
    for key in ["unsubscribe.url", "unsubscribe.mailto"] {
        assert!(
            stderr.contains(&format!("warning: {}:", campaign.display()))
                && stderr.contains(&format!(
                    "{key} uses \"name\", a column of the recipient list"
                )),
            "{key}: {stderr}"
        );
    }
}

/// The template's own text must make a valid target too: a literal comma or space is a
/// render error naming the template, not a second URI.
#[test]
fn an_unsubscribe_template_that_is_not_one_uri_fails_check() {
    let dir = Dir::new("unsub-literal");
    dir.write("list.csv", "email\na@example.com\n");
    let campaign = dir.campaign(
        "text = \"Hi\"",
        "list.csv",
        "[unsubscribe]\nurl = \"https://shop.example.com/u/{{ unsubscribe_token }}>, <https://evil.test/\"",
    );
    let o = check(&campaign);
    assert_eq!(o.code(), 2, "{o:?}");
    let stderr = o.stderr();
    assert!(
        stderr.contains("(unsubscribe.url): the unsubscribe target")
            && stderr.contains("which List-Unsubscribe cannot carry"),
        "{stderr}"
    );
}
