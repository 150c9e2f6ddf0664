//! Running the `blast` binary from a test (in the style of ripgrep's `tests/util`).
//!
//! ```ignore
//! let o = common::Blast::new()
//!     .args(["check", "campaigns/example.toml"])
//!     .env("BLAST_SECRET", SECRET)
//!     .output(); // bounded: kills blast and panics with its output after the time limit
//! assert_eq!(o.code(), 0, "{}", o.text());
//!
//! let mut child = common::Blast::new().args(["send", "-q"]).arg(&toml).spawn();
//! child.signal("TERM");
//! let o = child.wait_bounded(Duration::from_secs(60));
//! ```
//!
//! Every command starts from a clean environment for what blast reads: `RUST_LOG` and every
//! `BLAST_*` variable of the test process (`BLAST_SECRET`, `BLAST_RELAY_PASSWORD`, …) are
//! removed unless set with [`Blast::env`]; everything else (PATH, …) is inherited. It runs in
//! the project directory unless [`Blast::current_dir`] says otherwise, with stdin empty unless
//! [`Blast::stdin`] gives bytes, and stdout and stderr captured unless sent to a file.
//! A child still running when its [`BlastChild`] is dropped (a test that panicked) is killed.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The time limit of [`Blast::output`] unless [`Blast::timeout`] sets another: generous, it is
/// only there so that a hung blast fails its test with its output instead of hanging the suite.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(300);

/// The `blast` binary Cargo built for these tests (for scripts that run it, e.g. `BLAST=…`).
pub fn blast_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_blast"))
}

/// Where a stream of the child goes.
enum Dest {
    /// Captured through a pipe.
    Capture,
    /// Written to this file (created or truncated at spawn).
    File(PathBuf),
    /// stderr only: into stdout's file (`>FILE 2>&1`).
    Stdout,
}

/// A `blast` command line to run: build it, then [`Blast::output`] or [`Blast::spawn`].
pub struct Blast {
    cmd: Command,
    what: String,
    stdin: Option<Vec<u8>>,
    stdout: Dest,
    stderr: Dest,
    limit: Duration,
}

impl Default for Blast {
    fn default() -> Blast {
        Blast::new()
    }
}

impl Blast {
    /// `blast` with no arguments yet, in the project directory, with a clean environment for
    /// the variables blast reads (see the module documentation).
    pub fn new() -> Blast {
        let mut cmd = Command::new(blast_bin());
        cmd.current_dir(super::project_dir());
        for (k, _) in std::env::vars_os() {
            if k == "RUST_LOG" || k.to_string_lossy().starts_with("BLAST_") {
                cmd.env_remove(k);
            }
        }
        Blast {
            cmd,
            what: "blast".to_string(),
            stdin: None,
            stdout: Dest::Capture,
            stderr: Dest::Capture,
            limit: DEFAULT_LIMIT,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Blast {
        let arg = arg.as_ref();
        self.what.push(' ');
        self.what.push_str(&arg.to_string_lossy());
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(self, args: I) -> Blast
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        args.into_iter().fold(self, Blast::arg)
    }

    /// Sets a variable for blast (also one the clean environment removed).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Blast {
        self.cmd.env(key, value);
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Blast
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    /// Runs blast in `dir` (default: the project directory).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Blast {
        self.cmd.current_dir(dir);
        self
    }

    /// Feeds `bytes` to blast's stdin, then closes it (default: an empty stdin).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Blast {
        self.stdin = Some(bytes.into());
        self
    }

    /// Writes blast's stdout into `path` instead of capturing it; [`BlastOutput::stdout`]
    /// then reads the file.
    pub fn stdout_to(mut self, path: impl Into<PathBuf>) -> Blast {
        self.stdout = Dest::File(path.into());
        self
    }

    /// Writes blast's stderr into `path` instead of capturing it; [`BlastOutput::stderr`]
    /// then reads the file.
    pub fn stderr_to(mut self, path: impl Into<PathBuf>) -> Blast {
        self.stderr = Dest::File(path.into());
        self
    }

    /// Writes stdout and stderr into the one file `path` (`>path 2>&1`):
    /// [`BlastOutput::stdout`] then reads both, interleaved as written, and
    /// [`BlastOutput::stderr`] is empty.
    pub fn output_to(mut self, path: impl Into<PathBuf>) -> Blast {
        self.stdout = Dest::File(path.into());
        self.stderr = Dest::Stdout;
        self
    }

    /// The time limit of [`Blast::output`] (default [`DEFAULT_LIMIT`]).
    pub fn timeout(mut self, limit: Duration) -> Blast {
        self.limit = limit;
        self
    }

    /// Runs blast to its end, bounded by the time limit: after it, blast is killed and the
    /// test panics with what it wrote.
    #[track_caller]
    pub fn output(self) -> BlastOutput {
        let limit = self.limit;
        self.spawn().wait_bounded(limit)
    }

    /// Starts blast in the background.
    pub fn spawn(mut self) -> BlastChild {
        let stdout_file = match &self.stdout {
            Dest::File(p) => Some(create(p)),
            _ => None,
        };
        let stderr: Stdio = match &self.stderr {
            Dest::Capture => Stdio::piped(),
            Dest::File(p) => create(p).into(),
            Dest::Stdout => stdout_file
                .as_ref()
                .expect("output_to sets stdout's file")
                .try_clone()
                .expect("dup the output file")
                .into(),
        };
        let stdout: Stdio = stdout_file.map_or_else(Stdio::piped, Stdio::from);
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(stdout)
            .stderr(stderr);
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.what));
        if let (Some(bytes), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // From a thread: blast may write a full pipe of output before it reads all of it.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let stdout = Stream::new(&self.stdout, child.stdout.take());
        let stderr = Stream::new(&self.stderr, child.stderr.take());
        BlastChild {
            child,
            what: self.what,
            stdout,
            stderr,
        }
    }
}

fn create(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// How to get a stream's bytes once blast has exited.
enum Stream {
    /// A thread reading the pipe to its end (so blast never blocks on a full pipe).
    Reader(Option<JoinHandle<Vec<u8>>>),
    File(PathBuf),
    Empty,
}

impl Stream {
    fn new(dest: &Dest, pipe: Option<impl Read + Send + 'static>) -> Stream {
        match (dest, pipe) {
            (Dest::Capture, Some(mut pipe)) => {
                Stream::Reader(Some(std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = pipe.read_to_end(&mut buf);
                    buf
                })))
            }
            (Dest::File(p), _) => Stream::File(p.clone()),
            _ => Stream::Empty,
        }
    }

    /// Everything written (call after blast exited).
    fn collect(&mut self) -> Vec<u8> {
        match self {
            Stream::Reader(handle) => handle
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            Stream::File(p) => std::fs::read(p).unwrap_or_default(),
            Stream::Empty => Vec::new(),
        }
    }
}

/// A `blast` running in the background ([`Blast::spawn`]); killed if dropped while running.
pub struct BlastChild {
    child: Child,
    what: String,
    stdout: Stream,
    stderr: Stream,
}

impl BlastChild {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if blast has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.what))
    }

    /// Sends signal `sig` (a name for `kill`, e.g. "TERM", "INT", "KILL").
    #[track_caller]
    pub fn signal(&self, sig: &str) {
        let pid = self.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// SIGKILL; waits for the exit and returns what blast wrote.
    pub fn kill(mut self) -> BlastOutput {
        self.child.kill().expect("SIGKILL"); // std's kill is SIGKILL
        let status = self.child.wait().expect("wait for killed blast");
        self.finish(status)
    }

    /// Waits at most `limit` (from now) for blast to exit. After it, blast is killed and the
    /// test panics with what it wrote.
    #[track_caller]
    pub fn wait_bounded(mut self, limit: Duration) -> BlastOutput {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return self.finish(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let out = match self.child.wait() {
                    Ok(status) => format!("{:?}", self.finish(status)),
                    Err(e) => format!("`{}`: wait: {e}", self.what),
                };
                panic!("blast did not finish within {limit:?}, killed: {out}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(&mut self, status: ExitStatus) -> BlastOutput {
        BlastOutput {
            what: self.what.clone(),
            status,
            stdout: self.stdout.collect(),
            stderr: self.stderr.collect(),
        }
    }
}

impl Drop for BlastChild {
    fn drop(&mut self) {
        // Only when a test panicked before waiting: never leave a blast behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished `blast` did: its exit status and output.
pub struct BlastOutput {
    what: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl BlastOutput {
    pub fn status(&self) -> ExitStatus {
        self.status
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code; panics (with the output) if blast was killed by a signal.
    #[track_caller]
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(code) => code,
            None => panic!("killed by a signal: {self:?}"),
        }
    }

    /// stdout, lossily decoded.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr, lossily decoded.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout followed by stderr.
    pub fn text(&self) -> String {
        self.stdout() + &self.stderr()
    }

    pub fn stdout_bytes(&self) -> &[u8] {
        &self.stdout
    }

    pub fn stderr_bytes(&self) -> &[u8] {
        &self.stderr
    }
}

impl fmt::Debug for BlastOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            self.stdout(),
            self.stderr()
        )
    }
}
