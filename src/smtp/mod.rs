//! SMTP, both sides: a small client built for bulk submission into relays we run, and
//! [`receiver`], the in-process server behind the demo's embedded node, `blast sink` and the
//! tests.
//!
//! Why not `mail-send` 0.7 (read in its 0.7.0 source): its `send()` walks MAIL, RCPT and DATA
//! in lockstep, one round trip each, and never uses PIPELINING (RFC 2920); its error does not
//! say which stage failed; and after a refusal it sends no RSET, so the connection is left
//! inside a transaction. Its command API *can* be pipelined by hand — `cmds()` writes MAIL,
//! RCPT and DATA at once and `read_many(3)` reads their replies, then `write_message()` and
//! `read()` carry the body — which gives the same two round trips per message as this client.
//! But that leaves to the caller the stage logic, the RSET after any refusal (also after a
//! pipelined refusal answered with 354, which needs an empty body first), 421 handling and
//! knowing whether the final dot went out (for duplicate accounting): most of what `client`
//! is. Its readers also start a fresh 1 KiB buffer and parser per call and drop any bytes
//! past the replies asked for, and a 421 followed by a close inside `read_many` comes back as
//! "unparseable reply", not as the 421. Nor does it set TCP_NODELAY (its stream is public, so
//! a caller could): the body and the final dot are two writes, so Nagle can hold the dot until
//! the server's delayed ACK (40 ms on Linux: at most ~25 msg/s per connection). Blast sends one recipient per transaction at tens of
//! thousands of messages per second, so round trips and stage-accurate outcomes are the whole
//! game; this client is small and does exactly that on tokio + tokio-rustls.
//!
//! Layout: `reply` parses server replies, `settings` holds per-node
//! configuration (including the rustls config, built once), `tls` builds
//! that config, `stream` buffers a plain or TLS socket, `wire` writes command lines and the
//! dot-stuffed body, and `client` is the [`Connection`] state machine. `receiver` (the server) shares no code with them.
//!
//! `smtp` uses no other module of the crate: it sits at the bottom of the graph.

mod auth;
mod client;
pub mod receiver;
mod reply;
mod settings;
mod stream;
mod tls;
mod wire;

pub use client::{Capabilities, Connection, Delivery, Stage};
pub(crate) use reply::complete_len;
pub use reply::{EnhancedStatus, MAX_REPLY_BYTES, Reply, ReplyError};
pub use settings::{ClientSettings, ClientSettingsBuilder, Credentials, TlsMode};
pub(crate) use wire::stuff_body;

use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong talking to a server, other than the server
/// refusing a message (that is an `Ok(Delivery)` with a non-2xx reply).
///
/// Transport failures inside [`Connection::send`] carry `after_data`: once
/// the final "." has been written the server may have accepted the message,
/// so a retry elsewhere can duplicate it.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("connecting to {addr}: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("timed out waiting for {waiting_for}")]
    Timeout {
        waiting_for: &'static str,
        after_data: bool,
    },
    /// The whole transaction ran out of time (see [`Connection::send_until`]): its own limit
    /// (`command_timeout + data_timeout`) or the caller's deadline (the recipient's `max_age`).
    #[error("transaction deadline reached waiting for {waiting_for}; connection dropped")]
    Deadline {
        waiting_for: &'static str,
        after_data: bool,
    },
    #[error("I/O error: {cause}")]
    Io { cause: io::Error, after_data: bool },
    #[error("server closed the connection")]
    Closed { after_data: bool },
    #[error("malformed reply: {cause}")]
    Malformed { cause: ReplyError, after_data: bool },
    #[error("unexpected greeting: {0}")]
    Greeting(Reply),
    #[error("EHLO/HELO rejected: {0}")]
    Helo(Reply),
    #[error("STARTTLS required but not advertised")]
    StartTlsNotOffered,
    #[error("STARTTLS rejected: {0}")]
    StartTls(Reply),
    #[error("server sent data after its STARTTLS reply (possible injection)")]
    StartTlsInjection,
    /// Bytes after the server's 354, before the body's final dot was written: a reply to a body
    /// that was never (wholly) sent (e.g. `354 go` and `250 queued` in one write, or the `250`
    /// a moment later). Nothing was delivered and the dialogue is out of step, so the
    /// connection is dropped; the recipient is deferred.
    #[error(
        "server sent {bytes} bytes after its 354 reply, before the message body was complete \
         (protocol violation): nothing delivered, connection dropped"
    )]
    ReplyBeforeBody { bytes: usize },
    #[error("TLS handshake: {0}")]
    TlsHandshake(io::Error),
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    #[error("invalid HELO name {0:?}")]
    InvalidHeloName(String),
    #[error("authentication rejected: {0}")]
    Auth(Reply),
    #[error("server offers neither AUTH PLAIN nor AUTH LOGIN")]
    AuthNotOffered,
    #[error("refusing to send credentials over an unencrypted non-loopback connection")]
    AuthWithoutTls,
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    #[error("connection is no longer usable")]
    NotUsable,
}

impl SmtpError {
    /// True when the final "." of a message had been written before the
    /// failure: the server may have queued the message.
    pub fn after_data(&self) -> bool {
        match self {
            SmtpError::Timeout { after_data, .. }
            | SmtpError::Deadline { after_data, .. }
            | SmtpError::Io { after_data, .. }
            | SmtpError::Closed { after_data }
            | SmtpError::Malformed { after_data, .. } => *after_data,
            _ => false,
        }
    }
}
