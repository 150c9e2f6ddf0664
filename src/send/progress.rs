//! Progress: counters the pipeline bumps, and a display that reads them on a timer.
//!
//! The hot path only touches relaxed atomics; nothing is drawn per message. On a terminal an
//! indicatif MultiProgress shows one overall bar and one line per node, redrawn 5 times a
//! second. Without a terminal (cron, CI, a pipe) a plain status line goes to stderr every 10 s
//! instead. `--quiet` shows nothing until the summary.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::shutdown::Shutdown;

/// Campaign-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub rendered: AtomicU64,
    pub render_errors: AtomicU64,
    pub accepted: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
    /// Deferral events (4xx answers), not recipients.
    pub deferrals: AtomicU64,
    /// Messages sent again after a lost connection.
    pub requeues: AtomicU64,
    pub possibly_duplicated: AtomicU64,
    /// Recipients currently waiting for a retry.
    pub waiting_retry: AtomicU64,
    /// Rows final in earlier sessions of the run (a resume): counted as done from the start.
    pub earlier: AtomicU64,
    /// Rows the reader handed to the render threads.
    pub queued: AtomicU64,
    /// Set when the reader reached the end of the list (`list_read`): the rows of the whole
    /// run that get an outcome (`earlier + queued`). Until then the display uses its estimate.
    pub expected: AtomicU64,
    pub list_read: AtomicBool,
}

impl Counters {
    pub fn finals(&self) -> u64 {
        get(&self.accepted) + get(&self.failed) + get(&self.expired)
    }

    /// Done and total of the whole run, for the display: the earlier sessions' rows count as
    /// done, and once the list has been read the total is the real count, not `estimate`.
    pub fn run_progress(&self, estimate: u64) -> (u64, u64) {
        let done = get(&self.earlier) + self.finals();
        if self.list_read.load(Ordering::Relaxed) {
            (done, get(&self.expected).max(done))
        } else {
            (done, estimate.max(done))
        }
    }
}

/// Per-node counters.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub connections: AtomicU64,
    pub in_flight: AtomicU64,
    pub accepted: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    /// Connection failures and lost connections.
    pub errors: AtomicU64,
    pub healthy: AtomicBool,
}

pub fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

pub fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

pub fn dec(a: &AtomicU64) {
    a.fetch_sub(1, Ordering::Relaxed);
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Mode {
    /// Bars on a terminal, plain lines otherwise, nothing with `--quiet`.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// The running display; also tracks the peak rate for the summary.
pub struct Progress {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<f64>>,
}

impl Progress {
    /// Starts the display task. `total` is an estimate of the rows (for the bar and ETA) until
    /// the reader knows the real count; `shutdown` and `grace` are shown when a signal stops
    /// the run.
    pub fn start(
        mode: Mode,
        counters: Arc<Counters>,
        nodes: Vec<(String, Arc<NodeCounters>)>,
        total: u64,
        shutdown: Arc<Shutdown>,
        grace: Duration,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let view = View {
            mode,
            c: counters,
            nodes,
            estimate: total,
            shutdown,
            grace,
        };
        let task = tokio::spawn(display(view, stop.clone()));
        Progress {
            stop,
            task: Some(task),
        }
    }

    /// Stops the display and returns the peak rate seen (messages/s over 1 s windows).
    pub async fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.take() {
            Some(t) => t.await.unwrap_or(0.0),
            None => 0.0,
        }
    }
}

/// What the display reads.
struct View {
    mode: Mode,
    c: Arc<Counters>,
    nodes: Vec<(String, Arc<NodeCounters>)>,
    estimate: u64,
    shutdown: Arc<Shutdown>,
    grace: Duration,
}

impl View {
    /// After a signal: what the run is doing about it; None while it runs normally.
    fn stopping(&self) -> Option<String> {
        self.shutdown.signal()?;
        let in_flight: u64 = self.nodes.iter().map(|(_, n)| get(&n.in_flight)).sum();
        Some(if self.shutdown.is_cutting() {
            format!("cutting off: {in_flight} in flight, closing connections now")
        } else {
            format!(
                "stopping: {in_flight} in flight, grace {}s (Ctrl-C again to cut them off)",
                self.grace.as_secs()
            )
        })
    }

    fn status(&self) -> String {
        let c = &self.c;
        let counts = format!(
            "accepted {}  deferred {}  failed {}  expired {}",
            get(&c.accepted),
            get(&c.waiting_retry),
            get(&c.failed),
            get(&c.expired)
        );
        match self.stopping() {
            Some(stop) => format!("{stop}  {counts}"),
            None => counts,
        }
    }
}

async fn display(v: View, stop: Arc<AtomicBool>) -> f64 {
    let tick = Duration::from_millis(200);
    let line_every = Duration::from_secs(10);
    let started = Instant::now();
    let c = v.c.clone();
    let mut window = (Instant::now(), c.finals());
    let mut peak = 0.0f64;
    let mut last_line = Instant::now();
    let mut stop_said = false;

    let (multi, overall, node_bars) = if v.mode == Mode::Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        let overall = multi.add(ProgressBar::new(c.run_progress(v.estimate).1.max(1)));
        overall.set_style(
            ProgressStyle::with_template(
                "{bar:30.green/white} {pos:>9}/{len:9} eta {eta:>4}  {msg}",
            )
            .expect("static template")
            .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        let bars: Vec<ProgressBar> = v
            .nodes
            .iter()
            .map(|_| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(ProgressStyle::with_template("  {msg}").expect("static template"));
                b
            })
            .collect();
        (Some(multi), Some(overall), bars)
    } else {
        (None, None, Vec::new())
    };

    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let finals = c.finals();
        let (done, total) = c.run_progress(v.estimate);
        let now = Instant::now();
        let dt = now.duration_since(window.0);
        if dt >= Duration::from_secs(1) {
            peak = peak.max((finals - window.1) as f64 / dt.as_secs_f64());
            window = (now, finals);
        }
        // This session's rate: rows of earlier sessions were not sent now.
        let rate = finals as f64 / started.elapsed().as_secs_f64().max(0.001);
        let status = v.status();
        if let Some(bar) = &overall {
            bar.set_length(total.max(1));
            bar.set_position(done);
            bar.set_message(format!("{rate:>7.0}/s  {status}"));
            for ((name, n), b) in v.nodes.iter().zip(&node_bars) {
                b.set_message(node_line(name, n));
            }
        } else if v.mode == Mode::Lines {
            // A stop is said at once, not at the next 10-second line.
            let stop_now = !stop_said && v.stopping().is_some();
            if last_line.elapsed() >= line_every || stopping || stop_now {
                stop_said |= stop_now;
                eprintln!("blast: {done}/{total} done ({rate:.0}/s)  {status}");
                for (name, n) in &v.nodes {
                    eprintln!("blast:   {}", node_line(name, n));
                }
                last_line = Instant::now();
            }
        }
        if stopping {
            break;
        }
        tokio::time::sleep(tick).await;
    }
    let (done, total) = c.run_progress(v.estimate);
    if let Some(bar) = overall {
        if done >= total {
            bar.finish();
        } else {
            // Stopped early: the bar stays at the real count (finish() would fill it).
            bar.abandon();
        }
    }
    for b in node_bars {
        b.finish();
    }
    drop(multi);
    if peak == 0.0 {
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        peak = c.finals() as f64 / elapsed;
    }
    peak
}

fn node_line(name: &str, n: &NodeCounters) -> String {
    // Direct delivery names nodes after MX hosts: DNS answers.
    let name = crate::terminal::Printable(name);
    format!(
        "{name:<16} {:<4} conns {:>3}  in-flight {:>3}  accepted {:>9}  deferred {:>7}  failed {:>7}  errors {:>5}",
        if n.healthy.load(Ordering::Relaxed) {
            "up"
        } else {
            "DOWN"
        },
        get(&n.connections),
        get(&n.in_flight),
        get(&n.accepted),
        get(&n.deferred),
        get(&n.failed),
        get(&n.errors)
    )
}
