//! The socket under a connection: plain TCP or TLS, plus a read buffer.
//!
//! The read buffer keeps whatever the server sent beyond the reply being
//! parsed, because pipelined replies routinely arrive in a single segment.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::reply::MAX_REPLY_BYTES;

/// Plain or TLS stream; an enum rather than a boxed trait object so
/// STARTTLS can take the `TcpStream` back out.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    /// Writes everything and flushes: rustls holds records until flushed.
    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

const INITIAL: usize = 8 * 1024;
/// A reply can use up to `MAX_REPLY_BYTES`; one read of slack on top.
const LIMIT: usize = MAX_REPLY_BYTES + INITIAL;

/// Read buffer that survives across replies.
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: vec![0; INITIAL],
            start: 0,
            end: 0,
        }
    }

    /// Bytes received but not yet consumed.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `stream`, making room first. Returns 0 on EOF.
    pub(crate) async fn fill(&mut self, stream: &mut Stream) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < LIMIT {
                self.buf.resize((self.buf.len() * 2).min(LIMIT), 0);
            } else {
                return Err(io::Error::other("reply exceeds read buffer"));
            }
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}
