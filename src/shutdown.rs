//! How a run stops: one [`Shutdown`] per run, in three stages — **stop reading** (no new
//! rows are read, no new transaction starts; running ones finish), then a **grace deadline**,
//! then **cut off** (transactions still running are aborted, their recipients stay
//! unfinished) — and the SIGINT/SIGTERM listeners that drive it: the first signal asks for the
//! clean stop (and decides the exit code), the second cuts the grace period short.
//! Modelled on mini-redis's broadcast shutdown and vector's `shutdown_all(deadline)`.
//!
//! Everything that must stop looks at or waits on the one `Shutdown`: the reader thread, the
//! dispatcher, the connections, the outcome sink (a journal that fails stops the run).
//! Uses nothing from the crate.
//!
//! The listeners are installed before any work starts: a signal that arrives while
//! connections are being opened must neither kill the process with the default action
//! (leaving a journal that only crash recovery can fold) nor be missed because the task that
//! waits for it was not polled yet. tokio's signal streams remember a delivery until `recv`.
//! (blast is Unix-only, like its key files' permissions and the journal's flock.)

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use tokio::signal::unix::{SignalKind, signal};

/// Which signal asked the run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

/// The installed listeners. Must be created inside a tokio runtime.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers now; deliveries from here on are kept for [`Signals::next`].
    pub fn listen() -> io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal (including one delivered before this call).
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

/// One run's stop; see the module doc. Shared as `Arc<Shutdown>`.
#[derive(Debug, Default)]
pub struct Shutdown {
    stopping: AtomicBool,
    stop: Notify,
    cutting: AtomicBool,
    cut: Notify,
    /// The first signal, if a signal asked for the stop.
    signal: Mutex<Option<Signal>>,
}

impl Shutdown {
    pub fn new() -> Arc<Shutdown> {
        Arc::new(Shutdown::default())
    }

    /// Stage one: stop reading, start no new transaction. Idempotent.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Resolves once a stop is requested (at once if it was). It registers for the wake-up
    /// before it looks at the flag, so a stop between the two is not missed.
    pub async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    /// Stage three, early: cut running transactions off now (the second signal).
    pub fn cut_off(&self) {
        self.cutting.store(true, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Whether running transactions are being cut off (the second signal).
    pub fn is_cutting(&self) -> bool {
        self.cutting.load(Ordering::Relaxed)
    }

    async fn cut(&self) {
        let notified = self.cut.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.cutting.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    /// The signal that asked for the stop, if any.
    pub fn signal(&self) -> Option<Signal> {
        *self.signal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives the stop from `signals`: the first signal is remembered and requests the stop,
    /// the second cuts the grace period short. The task ends with the runtime or when aborted.
    pub fn on_signals(self: &Arc<Self>, mut signals: Signals) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let first = signals.next().await;
            *me.signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(first);
            tracing::warn!("{first:?}: stopping; running transactions may finish");
            me.request_stop();
            let _ = signals.next().await;
            tracing::warn!("second signal; closing connections now");
            me.cut_off();
        })
    }

    /// Waits for `tasks` to end. Without a stop they all run to their end. After a stop they
    /// get `grace` to finish their transactions (less if [`Shutdown::cut_off`] comes first);
    /// then the rest are aborted, and this waits until they are gone (they hold senders that
    /// must be dropped before the journal and the delivery log can close).
    pub async fn wind_down(&self, tasks: Vec<JoinHandle<()>>, grace: Duration) {
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let mut all = std::pin::pin!(join_all(tasks));
        if !self.is_stopping() {
            all.await;
            return;
        }
        let finished = tokio::select! {
            _ = all.as_mut() => true,
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; closing connections");
                false
            }
            _ = self.cut() => false,
        };
        if !finished {
            for a in &aborts {
                a.abort();
            }
            all.await;
        }
    }
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_stop_requested_before_waiting_is_seen() {
        rt().block_on(async {
            let s = Shutdown::new();
            s.request_stop();
            tokio::time::timeout(Duration::from_secs(1), s.stopped())
                .await
                .expect("stopped() resolves at once after a stop");
        });
    }

    #[test]
    fn without_a_stop_tasks_run_to_their_end() {
        rt().block_on(async {
            let s = Shutdown::new();
            let t = tokio::spawn(async { tokio::time::sleep(Duration::from_secs(100)).await });
            let start = tokio::time::Instant::now();
            s.wind_down(vec![t], Duration::from_secs(1)).await;
            assert!(start.elapsed() >= Duration::from_secs(100));
        });
    }

    #[test]
    fn after_a_stop_the_grace_period_bounds_the_wait_and_a_cut_shortens_it() {
        rt().block_on(async {
            let s = Shutdown::new();
            s.request_stop();
            let t = tokio::spawn(async { tokio::time::sleep(Duration::from_secs(100)).await });
            let start = tokio::time::Instant::now();
            s.wind_down(vec![t], Duration::from_secs(5)).await;
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(6));

            let s2 = Shutdown::new();
            s2.request_stop();
            let t = tokio::spawn(async { tokio::time::sleep(Duration::from_secs(100)).await });
            let cutter = {
                let s2 = s2.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    s2.cut_off();
                })
            };
            let start = tokio::time::Instant::now();
            s2.wind_down(vec![t], Duration::from_secs(30)).await;
            assert!(start.elapsed() < Duration::from_secs(2));
            cutter.await.unwrap();
        });
    }
}
