//! SIGINT and SIGTERM, listened for from the start of a run.
//!
//! The listeners are installed before any work starts: a signal that arrives while
//! connections are being opened must neither kill the process with the default action
//! (leaving a journal that only crash recovery can fold) nor be missed because the task that
//! waits for it was not polled yet. tokio's signal streams remember a delivery until `recv`.
//! (blast is Unix-only, like its key files' permissions and the journal's flock.)

use std::io;

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
