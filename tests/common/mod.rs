//! Helpers for integration tests that run real mail servers on 127.0.0.1.
//!
//! Use from a test crate with `mod common;`. Standard library only.
//!
//! - [`SmtpSink`]: Postfix's `smtp-sink` on a free port, dumping one file per
//!   message (via `scripts/smtp-sink`); stopped on drop.
//! - [`PostfixNodes`]: N real Postfix relay instances relaying to a port (via
//!   `scripts/postfix-nodes`); stopped on drop. Needs root.
//! - [`Blast`]: runs the `blast` binary (clean environment, bounded waits, captured output);
//!   [`blast_bin`] is its path for scripts that run it (module `blast`).
//! - [`free_port`], [`free_port_range`], [`test_dir`], [`send_messages`],
//!   [`parse_main_cf`].
//!
//! The servers need the Debian packages installed by `scripts/install-deps`.
//! Temporary directories live under `target/test-tmp/` and are removed when a
//! test passes; they are kept (and their path printed) when it panics.
#![allow(dead_code)]

mod blast;

// Not every test crate runs the binary.
#[allow(unused_imports)]
pub use blast::{Blast, BlastChild, BlastOutput, DEFAULT_LIMIT, blast_bin};

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The project root (where Cargo.toml and scripts/ are).
pub fn project_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a script in `scripts/`.
pub fn script(name: &str) -> PathBuf {
    project_dir().join("scripts").join(name)
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (bind port 0,
/// read the port, drop the listener). Another process may take it before the
/// caller binds it; the server helpers retry with a new port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The first of `n` consecutive free ports on 127.0.0.1.
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if u32::from(base) + u32::from(n) > 65535 {
            continue;
        }
        let all_free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found on 127.0.0.1");
}

/// Where test directories go: `target/test-tmp`, unless some parent directory
/// is not searchable by other users (e.g. a checkout under `/root`, mode 0700):
/// `smtp-sink` writes its dump as `nobody` and Postfix runs as `postfix`, so
/// then the system temp directory is used instead.
pub fn test_tmp_root() -> PathBuf {
    let preferred = project_dir().join("target").join("test-tmp");
    let searchable = project_dir().ancestors().all(|dir| {
        fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if searchable {
        preferred
    } else {
        std::env::temp_dir().join("blast-test-tmp")
    }
}

/// A new, empty, uniquely named directory under [`test_tmp_root`]
/// (world-searchable, so servers running as other users can reach it).
pub fn test_dir(label: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let root = test_tmp_root();
    let dir = root.join(format!("{label}-{}-{seq}-{nanos:08x}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for d in [root.as_path(), dir.as_path()] {
        // Best effort: a shared root may belong to another user.
        let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o755));
    }
    dir
}

/// Runs a script; Ok(stdout + stderr) on success, Err(same) on failure.
fn run_script(name: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(script(name))
        .args(args)
        .current_dir(project_dir())
        .output()
        .map_err(|e| format!("cannot run scripts/{name}: {e} (is the checkout complete?)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "scripts/{name} {} failed ({}):\n{text}\n(missing servers? run scripts/install-deps)",
            args.join(" "),
            out.status
        ))
    }
}

pub fn remove_dir_unless_panicking(dir: &Path) {
    if std::thread::panicking() {
        eprintln!("test servers' files kept for inspection: {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Postfix's `smtp-sink` on 127.0.0.1:[`SmtpSink::port`], dumping each message
/// into a file in [`SmtpSink::dump_dir`]. Stopped (and its directory removed
/// unless the test panics) on drop.
pub struct SmtpSink {
    port: u16,
    dir: PathBuf,
    run_dir: PathBuf,
    dump_dir: PathBuf,
    dump: bool,
    running: bool,
}

impl SmtpSink {
    /// Starts a sink that accepts everything and dumps every message.
    pub fn start() -> SmtpSink {
        SmtpSink::launch(true, &[])
    }

    /// Starts a sink with extra `smtp-sink` arguments, e.g.
    /// `&["-r", "RCPT", "-b", "451 4.7.1 try later"]` to defer every RCPT.
    pub fn start_with(extra_args: &[&str]) -> SmtpSink {
        SmtpSink::launch(true, extra_args)
    }

    /// Starts a sink that only counts (no dump files): for volume tests, where
    /// writing one file per message would cost more than the test itself.
    /// [`SmtpSink::message_count`] and [`SmtpSink::messages`] then see nothing;
    /// use [`SmtpSink::completed_count`] and [`SmtpSink::wait_for_messages`].
    pub fn start_counting() -> SmtpSink {
        SmtpSink::launch(false, &[])
    }

    fn launch(dump: bool, extra_args: &[&str]) -> SmtpSink {
        let dir = test_dir("sink");
        let run_dir = dir.join("run");
        let dump_dir = dir.join("dump");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut args: Vec<String> = vec![
                "start".into(),
                "--port".into(),
                port.to_string(),
                "--dir".into(),
                run_dir.display().to_string(),
            ];
            if dump {
                args.push("--dump".into());
                args.push(dump_dir.display().to_string());
            }
            if !extra_args.is_empty() {
                args.push("--".into());
                args.extend(extra_args.iter().map(|s| s.to_string()));
            }
            match run_script("smtp-sink", &args) {
                Ok(_) => {
                    return SmtpSink {
                        port,
                        dir,
                        run_dir,
                        dump_dir,
                        dump,
                        running: true,
                    };
                }
                // Lost a race for the port: try another one.
                Err(e) if e.contains("already in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("could not start smtp-sink: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:PORT"
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory with one file per received message (a file appears when
    /// DATA starts and is complete once the sink has counted the message).
    pub fn dump_dir(&self) -> &Path {
        &self.dump_dir
    }

    /// Number of dumped message files.
    pub fn message_count(&self) -> usize {
        fs::read_dir(&self.dump_dir)
            .map(|rd| {
                rd.filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Number of messages the sink has completed (its `-c` "mesg=" counter,
    /// updated at the final "." of each message).
    pub fn completed_count(&self) -> usize {
        let Ok(bytes) = fs::read(self.run_dir.join("counters")) else {
            return 0;
        };
        let tail = &bytes[bytes.len().saturating_sub(512)..];
        String::from_utf8_lossy(tail)
            .split('\r')
            .filter_map(|rec| rec.split_whitespace().find_map(|f| f.strip_prefix("mesg=")))
            .filter_map(|n| n.parse().ok())
            .next_back()
            .unwrap_or(0)
    }

    /// Waits until at least `n` messages are complete (and, for a dumping
    /// sink, dumped), or `timeout` passes. Returns the number of dumped files
    /// then (for a counting-only sink: the number of completed messages).
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            // The counter is cheap to read; list the dump only once it is there.
            let done = self.completed_count();
            let seen = if !self.dump {
                done
            } else if done >= n || Instant::now() >= deadline {
                self.message_count()
            } else {
                0
            };
            if (done >= n && seen >= n) || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The dumped message files, sorted by name.
    pub fn messages(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.dump_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.is_file());
        v.sort();
        v
    }

    /// Stops the sink (also done on drop).
    pub fn stop(&mut self) {
        if self.running {
            self.running = false;
            let args = vec![
                "stop".into(),
                "--dir".into(),
                self.run_dir.display().to_string(),
            ];
            if let Err(e) = run_script("smtp-sink", &args) {
                eprintln!("{e}");
            }
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
        remove_dir_unless_panicking(&self.dir);
    }
}

/// N real Postfix relay instances on consecutive 127.0.0.1 ports, each
/// relaying everything to one port (e.g. an [`SmtpSink`]). Stopped (and their
/// directories removed unless the test panics) on drop. Needs root.
pub struct PostfixNodes {
    base_port: u16,
    count: u16,
    dir: PathBuf,
    running: bool,
    /// Queues on /dev/shm (`--tmpfs`): removed with `postfix-nodes clean` on drop.
    tmpfs: bool,
}

impl PostfixNodes {
    /// Starts `count` nodes relaying to 127.0.0.1:`relay_port`.
    pub fn start(count: u16, relay_port: u16) -> PostfixNodes {
        PostfixNodes::start_with(count, relay_port, &[])
    }

    /// Like [`PostfixNodes::start`], with extra main.cf settings for every
    /// node, e.g. `&["maximal_queue_lifetime = 60s"]`.
    pub fn start_with(count: u16, relay_port: u16, settings: &[&str]) -> PostfixNodes {
        PostfixNodes::launch(count, relay_port, settings, false)
    }

    /// Like [`PostfixNodes::start_with`], with the queues on tmpfs (`--tmpfs`, /dev/shm):
    /// for volume tests, where the relays' disk queue is the bottleneck.
    pub fn start_tmpfs(count: u16, relay_port: u16, settings: &[&str]) -> PostfixNodes {
        PostfixNodes::launch(count, relay_port, settings, true)
    }

    fn launch(count: u16, relay_port: u16, settings: &[&str], tmpfs: bool) -> PostfixNodes {
        assert!(count > 0, "PostfixNodes::start needs at least one node");
        if !is_root() {
            panic!(
                "PostfixNodes needs root (Postfix instances are started as root); run the tests as root, as CI does"
            );
        }
        let dir = test_dir("postfix");
        let mut last_err = String::new();
        for _ in 0..5 {
            let base_port = free_port_range(count);
            let mut args: Vec<String> = vec![
                "start".into(),
                count.to_string(),
                "--base-port".into(),
                base_port.to_string(),
                "--relay-to".into(),
                format!("127.0.0.1:{relay_port}"),
                "--dir".into(),
                dir.display().to_string(),
            ];
            for s in settings {
                args.push("--set".into());
                args.push(s.to_string());
            }
            if tmpfs {
                args.push("--tmpfs".into());
            }
            match run_script("postfix-nodes", &args) {
                Ok(_) => {
                    return PostfixNodes {
                        base_port,
                        count,
                        dir,
                        running: true,
                        tmpfs,
                    };
                }
                Err(e) if e.contains("already in use") => last_err = e,
                Err(e) => {
                    let _ = run_script(
                        "postfix-nodes",
                        &["stop".into(), "--dir".into(), dir.display().to_string()],
                    );
                    panic!("{e}");
                }
            }
        }
        panic!("could not start Postfix nodes: {last_err}");
    }

    /// The nodes' SMTP ports on 127.0.0.1, node 1 first.
    pub fn ports(&self) -> Vec<u16> {
        (self.base_port..self.base_port + self.count).collect()
    }

    /// The base directory (node I lives in `dir()/nodeI`, I from 1).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Configuration directory of node `i` (0-based, like [`PostfixNodes::ports`]),
    /// for `postqueue -c DIR -p` and the like.
    pub fn config_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}", i + 1)).join("etc")
    }

    /// The Postfix log of node `i` (0-based).
    pub fn log_file(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("node{}", i + 1))
            .join("log")
            .join("postfix.log")
    }

    /// The effective settings in node `i`'s main.cf (0-based).
    pub fn main_cf(&self, i: usize) -> BTreeMap<String, String> {
        let path = self.config_dir(i).join("main.cf");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        parse_main_cf(&text)
    }

    /// Stops node `i` (0-based) alone, as an operator would: `postfix -c DIR stop`, then
    /// waits (at most 20 s) until its port refuses connections.
    pub fn stop_node(&self, i: usize) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir(i))
            .arg("stop")
            .output()
            .expect("run postfix stop");
        assert!(
            out.status.success(),
            "postfix stop node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = self.ports()[i];
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "node {i} still listens on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `i` (0-based) again after [`PostfixNodes::stop_node`] and waits (at
    /// most 30 s) for its 220 greeting. Its queue (what it held when stopped) is kept.
    pub fn start_node(&self, i: usize) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir(i))
            .arg("start")
            .output()
            .expect("run postfix start");
        assert!(
            out.status.success(),
            "postfix start node {i}: {}{} (log: {})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_file(i).display()
        );
        let port = self.ports()[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let greeting = TcpStream::connect(("127.0.0.1", port)).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(line)
            });
            if greeting.is_ok_and(|l| l.starts_with("220")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not greet on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops all nodes (also done on drop).
    pub fn stop(&mut self) {
        if self.running {
            self.running = false;
            let args = vec![
                "stop".into(),
                "--dir".into(),
                self.dir.display().to_string(),
            ];
            if let Err(e) = run_script("postfix-nodes", &args) {
                eprintln!("{e}");
            }
        }
    }
}

impl Drop for PostfixNodes {
    fn drop(&mut self) {
        self.stop();
        if self.tmpfs && !std::thread::panicking() {
            // Also removes the queues on /dev/shm.
            let args = vec![
                "clean".into(),
                "--dir".into(),
                self.dir.display().to_string(),
            ];
            if let Err(e) = run_script("postfix-nodes", &args) {
                eprintln!("{e}");
            }
        }
        remove_dir_unless_panicking(&self.dir);
    }
}

/// True if this process runs as root (`/proc/self` belongs to the effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Parses main.cf text (or `scripts/postfix-relay-config --main` output) into
/// name -> value: skips comments and blank lines, joins continuation lines
/// (leading whitespace), a later assignment wins.
pub fn parse_main_cf(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some((_, v)) = current.as_mut() {
                v.push(' ');
                v.push_str(trimmed);
            }
            continue;
        }
        if let Some((k, v)) = current.take() {
            map.insert(k, v);
        }
        if let Some((k, v)) = line.split_once('=') {
            current = Some((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if let Some((k, v)) = current {
        map.insert(k, v);
    }
    map
}

/// A minimal blocking SMTP client (no pipelining) for feeding test servers.
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpClient {
    /// Connects to 127.0.0.1:`port`, reads the 220 greeting and says EHLO.
    /// Every read and write times out after 30 s.
    pub fn connect(port: u16) -> io::Result<SmtpClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let mut c = SmtpClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        c.expect(2)?;
        c.command("EHLO client.blast.test", 2)?;
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply: (code, full text).
    pub fn read_reply(&mut self) -> io::Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed; so far: {text:?}"),
                ));
            }
            text.push_str(&line);
            let b = line.as_bytes();
            if b.len() < 4 || !b[..3].iter().all(u8::is_ascii_digit) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad SMTP reply line {line:?}"),
                ));
            }
            if b[3] != b'-' {
                let code = line[..3].parse().expect("three digits");
                return Ok((code, text));
            }
        }
    }

    fn expect(&mut self, class: u16) -> io::Result<String> {
        let (code, text) = self.read_reply()?;
        if code / 100 != class {
            return Err(io::Error::other(format!(
                "expected a {class}xx reply, got {text:?}"
            )));
        }
        Ok(text)
    }

    /// Sends one command line and checks the reply class (2 or 3).
    pub fn command(&mut self, line: &str, class: u16) -> io::Result<String> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(class)
    }

    /// One transaction: MAIL, RCPT, DATA with `message` (lines joined with
    /// CRLF, dot-stuffed here).
    pub fn send(&mut self, from: &str, to: &str, message: &str) -> io::Result<()> {
        self.command(&format!("MAIL FROM:<{from}>"), 2)?;
        self.command(&format!("RCPT TO:<{to}>"), 2)?;
        self.command("DATA", 3)?;
        let mut data = String::with_capacity(message.len() + 64);
        for line in message.lines() {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.writer.write_all(data.as_bytes())?;
        self.expect(2)?;
        Ok(())
    }

    /// QUIT and close.
    pub fn quit(mut self) -> io::Result<()> {
        let r = self.command("QUIT", 2).map(|_| ());
        let _ = self.writer.shutdown(Shutdown::Both);
        r
    }
}

/// Sends one message per subject to 127.0.0.1:`port` over one SMTP session.
pub fn send_messages(port: u16, from: &str, to: &str, subjects: &[String]) -> io::Result<()> {
    let mut c = SmtpClient::connect(port)?;
    for subject in subjects {
        let msg = format!(
            "From: <{from}>\nTo: <{to}>\nSubject: {subject}\nMessage-ID: <{}@client.blast.test>\n\nTest message: {subject}\n.leading dot line\n",
            subject.replace(' ', ".")
        );
        c.send(from, to, &msg)?;
    }
    c.quit()
}
