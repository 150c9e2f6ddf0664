//! One SMTP session: setup (greeting, EHLO, STARTTLS, AUTH) and
//! one-recipient transactions, pipelined when the server allows it.
//!
//! Outcomes are split on purpose: a server *answer* (any code, at any stage)
//! is `Ok(Delivery)` so the caller can classify it; only transport trouble
//! (I/O, timeout, EOF, garbage) is `Err`, and then the connection is dead.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::SmtpError;
use super::auth;
use super::reply::{self, Reply};
use super::settings::{ClientSettings, Credentials, TlsMode};
use super::stream::{ReadBuf, Stream};
use super::wire::{check_address, push_decimal, push_rcpt, stuff_body};

/// A stuffed body longer than this is written in two parts, the final dot apart, with a look
/// for an early reply in between (see `Connection::nothing_after_354`). A shorter one goes out
/// in one write, dot included: it takes microseconds, so a second look would cost a system
/// call per message and seldom see anything the first did not.
const SPLIT_DOT_OVER: usize = 64 * 1024;

/// Where a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Mail,
    Rcpt,
    Data,
    /// The reply to the final "."; the only stage that can accept.
    Body,
}

/// The server's answer to one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub stage: Stage,
    pub reply: Reply,
}

impl Delivery {
    /// The server took responsibility for the message.
    pub fn accepted(&self) -> bool {
        self.stage == Stage::Body && self.reply.is_positive()
    }
}

/// What the server advertised in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    /// SIZE limit in bytes; `Some(0)` means advertised without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Parses the raw EHLO reply; the first line is the server's name.
    fn from_ehlo(raw: &[u8]) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply::lines(raw).skip(1) {
            let line = String::from_utf8_lossy(line);
            let mut words = line.split([' ', '=']);
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => {
                    for mech in words {
                        caps.auth_plain |= mech.eq_ignore_ascii_case("PLAIN");
                        caps.auth_login |= mech.eq_ignore_ascii_case("LOGIN");
                    }
                }
                _ => {}
            }
        }
        caps
    }
}

/// An established SMTP session, ready for transactions.
pub struct Connection {
    stream: Stream,
    rbuf: ReadBuf,
    /// Reused for commands and bodies: no per-message allocation.
    wbuf: Vec<u8>,
    settings: Arc<ClientSettings>,
    peer: SocketAddr,
    caps: Capabilities,
    pipelining: bool,
    usable: bool,
    /// The final "." of the current message has been written.
    dot_sent: bool,
    /// When the running transaction must be over (see [`Connection::send_until`]).
    deadline: Option<Instant>,
    transactions: u64,
}

impl Connection {
    /// Connects and runs the session setup; the result is ready to `send`.
    pub async fn connect(
        addr: SocketAddr,
        settings: Arc<ClientSettings>,
    ) -> Result<Connection, SmtpError> {
        let greeted = timeout(settings.connect_timeout, Self::open(addr, settings.clone()))
            .await
            .map_err(|_| SmtpError::Timeout {
                waiting_for: "connect and greeting",
                after_data: false,
            })??;
        let mut conn = greeted;
        conn.ehlo().await?;
        if settings.tls == TlsMode::StartTls
            || (settings.tls == TlsMode::Opportunistic && conn.caps.starttls)
        {
            conn = conn.start_tls().await?;
            conn.ehlo().await?;
        }
        if let Some(credentials) = &settings.auth {
            let result = conn.authenticate(credentials).await;
            conn.wbuf.fill(0);
            result?;
        }
        conn.pipelining = settings.pipelining && conn.caps.pipelining;
        tracing::debug!(
            %addr,
            tls = conn.stream.is_tls(),
            pipelining = conn.pipelining,
            "smtp session ready"
        );
        Ok(conn)
    }

    /// TCP connect, implicit TLS if configured, and the 220 greeting.
    async fn open(
        addr: SocketAddr,
        settings: Arc<ClientSettings>,
    ) -> Result<Connection, SmtpError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|cause| SmtpError::Connect { addr, cause })?;
        // Nagle plus delayed ACK costs ~40 ms per command round trip.
        tcp.set_nodelay(true).map_err(|cause| SmtpError::Io {
            cause,
            after_data: false,
        })?;
        let stream = match settings.tls {
            TlsMode::Tls => tls_handshake(tcp, &settings).await?,
            TlsMode::None | TlsMode::StartTls | TlsMode::Opportunistic => Stream::Plain(tcp),
        };
        let mut conn = Connection {
            stream,
            rbuf: ReadBuf::new(),
            wbuf: Vec::with_capacity(16 * 1024),
            settings,
            peer: addr,
            caps: Capabilities::default(),
            pipelining: false,
            usable: true,
            dot_sent: false,
            deadline: None,
            transactions: 0,
        };
        let n = conn.next_reply_len().await?;
        let greeting = conn.take_reply(n);
        if greeting.code != 220 {
            return Err(SmtpError::Greeting(greeting));
        }
        Ok(conn)
    }

    /// Sends one message to one recipient.
    ///
    /// `message` is RFC 5322 with CRLF line endings; it is dot-stuffed here.
    /// A refusal at any stage is `Ok(Delivery)` and the transaction is reset
    /// (RSET) so the connection can be reused; a 421 also makes the
    /// connection unusable. `Err` means the connection is dead; check
    /// [`SmtpError::after_data`] before re-sending elsewhere.
    pub async fn send(
        &mut self,
        mail_from: &str,
        rcpt: &str,
        message: &[u8],
    ) -> Result<Delivery, SmtpError> {
        self.send_until(mail_from, rcpt, message, None).await
    }

    /// [`send`](Self::send), the whole transaction bounded: besides each step's own limit
    /// (`command_timeout` per command reply, `data_timeout` for the body and its reply), all of
    /// it — commands, body, final reply, RSET — must end within `command_timeout +
    /// data_timeout` of its start, and by `deadline` if that comes first (the caller's: the
    /// recipient's `max_age`). A server that trickles its replies a byte at a time cannot
    /// stretch a transaction past it. When it is hit the result is
    /// [`SmtpError::Deadline`] and the connection is no longer usable.
    pub async fn send_until(
        &mut self,
        mail_from: &str,
        rcpt: &str,
        message: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Delivery, SmtpError> {
        check_address(mail_from, true)?;
        check_address(rcpt, false)?;
        if !self.usable {
            return Err(SmtpError::NotUsable);
        }
        self.dot_sent = false;
        self.transactions += 1;
        let limit = Instant::now() + self.settings.command_timeout + self.settings.data_timeout;
        self.deadline = Some(deadline.map_or(limit, |d| d.min(limit)));
        let result = self.transaction(mail_from, rcpt, message).await;
        self.deadline = None;
        match &result {
            Err(_) => self.usable = false,
            Ok(d) if d.reply.code == 421 => self.usable = false,
            Ok(_) => {}
        }
        result
    }

    /// False after a 421, a transport error, or a failed RSET.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// PIPELINING is both enabled in the settings and advertised.
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// Transactions started on this connection (each `send` past address
    /// validation), for recycling connections after N messages.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Says goodbye; best effort and bounded by `command_timeout`.
    pub async fn quit(mut self) {
        let limit = self.settings.command_timeout;
        let _ = timeout(limit, async {
            if self.usable {
                self.wbuf.clear();
                self.wbuf.extend_from_slice(b"QUIT\r\n");
                if self.stream.write_all(&self.wbuf).await.is_ok() {
                    let _ = self.next_reply_len().await;
                }
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    async fn transaction(
        &mut self,
        mail_from: &str,
        rcpt: &str,
        message: &[u8],
    ) -> Result<Delivery, SmtpError> {
        let ct = self.settings.command_timeout;
        self.wbuf.clear();
        self.push_mail(mail_from, rcpt, message);
        if self.pipelining {
            push_rcpt(&mut self.wbuf, rcpt);
            self.wbuf.extend_from_slice(b"DATA\r\n");
            self.write(ct, "MAIL/RCPT/DATA write").await?;
            let mail = self.read_reply(ct, "MAIL reply").await?;
            if mail.code == 421 {
                return Ok(self.closing(Stage::Mail, mail));
            }
            let rcpt = self.read_reply(ct, "RCPT reply").await?;
            if rcpt.code == 421 {
                return Ok(self.closing(Stage::Rcpt, rcpt));
            }
            let data = self.read_reply(ct, "DATA reply").await?;
            let data_code = data.code;
            let failed = if !mail.is_positive() {
                Some(Delivery {
                    stage: Stage::Mail,
                    reply: mail,
                })
            } else if !rcpt.is_positive() {
                Some(Delivery {
                    stage: Stage::Rcpt,
                    reply: rcpt,
                })
            } else if data.code != 354 {
                Some(Delivery {
                    stage: Stage::Data,
                    reply: data,
                })
            } else {
                None
            };
            if let Some(failed) = failed {
                if data_code == 421 {
                    self.usable = false;
                    return Ok(failed);
                }
                if data_code == 354 {
                    if self.nothing_after_354().await.is_err() {
                        // Out of step: the outcome stands, the connection goes.
                        self.usable = false;
                        return Ok(failed);
                    }
                    // RFC 2920 §3.1: the server wants a body for a failed
                    // transaction; end it empty before resetting.
                    self.wbuf.clear();
                    self.wbuf.extend_from_slice(b".\r\n");
                    self.write(ct, "empty body write").await?;
                    if self
                        .read_reply(self.settings.data_timeout, "empty body reply")
                        .await?
                        .code
                        == 421
                    {
                        self.usable = false;
                        return Ok(failed);
                    }
                }
                self.rset().await;
                return Ok(failed);
            }
        } else {
            for stage in [Stage::Mail, Stage::Rcpt, Stage::Data] {
                match stage {
                    Stage::Mail => {}
                    Stage::Rcpt => {
                        self.wbuf.clear();
                        push_rcpt(&mut self.wbuf, rcpt);
                    }
                    _ => {
                        self.wbuf.clear();
                        self.wbuf.extend_from_slice(b"DATA\r\n");
                    }
                }
                self.write(ct, "command write").await?;
                let reply = self.read_reply(ct, "command reply").await?;
                let ok = match stage {
                    Stage::Data => reply.code == 354,
                    _ => reply.is_positive(),
                };
                if reply.code == 421 {
                    return Ok(self.closing(stage, reply));
                }
                if !ok {
                    self.rset().await;
                    return Ok(Delivery { stage, reply });
                }
            }
        }

        self.body(message).await
    }

    /// Writes the body after a 354 and reads the reply to its final dot.
    async fn body(&mut self, message: &[u8]) -> Result<Delivery, SmtpError> {
        self.nothing_after_354().await?;
        self.wbuf.clear();
        stuff_body(message, &mut self.wbuf);
        let dt = self.settings.data_timeout;
        if self.wbuf.len() > SPLIT_DOT_OVER {
            // A long body takes a while to write, and a reply the server sends meanwhile would
            // be taken for the reply to the dot: look again before the dot goes out.
            let dot = self.wbuf.len() - b".\r\n".len();
            self.write_part(dt, 0..dot, "message body write").await?;
            self.nothing_after_354().await?;
            self.write_part(dt, dot..self.wbuf.len(), "final dot write")
                .await?;
        } else {
            self.write(dt, "message body write").await?;
        }
        self.dot_sent = true;
        let reply = self.read_reply(dt, "reply to end of data").await?;
        if reply.code == 421 {
            return Ok(self.closing(Stage::Body, reply));
        }
        if !reply.is_positive() {
            self.rset().await;
        }
        Ok(Delivery {
            stage: Stage::Body,
            reply,
        })
    }

    /// After a 354 the server waits for the body: any byte received before the final dot is a
    /// reply to a body not yet (wholly) sent, which would be taken for the reply to the dot.
    /// Refused like plaintext queued behind STARTTLS's 220 (see `start_tls`).
    ///
    /// Besides what is buffered (a reply in the 354's own segment), this looks once at the
    /// socket without waiting, so a reply in a later segment that has already arrived is seen
    /// too: before the body, and, for a long body (see [`SPLIT_DOT_OVER`]), again before its
    /// final dot, which catches a relay that answers right after its 354 while the body is
    /// still going out. It cannot close the race: a reply that arrives after the last look,
    /// while the rest is being written, is still read as the reply to the dot.
    async fn nothing_after_354(&mut self) -> Result<(), SmtpError> {
        if self.rbuf.data().is_empty() {
            let polled = {
                let mut read = std::pin::pin!(self.rbuf.fill(&mut self.stream));
                // One poll in this task's context: ready data is read, nothing is waited for
                // (`fill` is cancel-safe).
                std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
            };
            match polled {
                Poll::Pending | Poll::Ready(Ok(1..)) => {}
                Poll::Ready(Ok(0)) => return Err(SmtpError::Closed { after_data: false }),
                Poll::Ready(Err(cause)) => {
                    return Err(SmtpError::Io {
                        cause,
                        after_data: false,
                    });
                }
            }
        }
        match self.rbuf.data().len() {
            0 => Ok(()),
            bytes => Err(SmtpError::ReplyBeforeBody { bytes }),
        }
    }

    fn push_mail(&mut self, mail_from: &str, rcpt: &str, message: &[u8]) {
        let buf = &mut self.wbuf;
        buf.extend_from_slice(b"MAIL FROM:<");
        buf.extend_from_slice(mail_from.as_bytes());
        buf.push(b'>');
        if self.caps.size.is_some() {
            buf.extend_from_slice(b" SIZE=");
            push_decimal(buf, message.len() as u64);
        }
        if self.caps.eight_bit_mime && !message.is_ascii() {
            buf.extend_from_slice(b" BODY=8BITMIME");
        }
        if self.caps.smtputf8 && !(mail_from.is_ascii() && rcpt.is_ascii()) {
            buf.extend_from_slice(b" SMTPUTF8");
        }
        buf.extend_from_slice(b"\r\n");
    }

    /// A 421 means the server is closing: no RSET, no further use.
    fn closing(&mut self, stage: Stage, reply: Reply) -> Delivery {
        self.usable = false;
        Delivery { stage, reply }
    }

    /// Resets a failed transaction; the outcome is already known, so a
    /// failing RSET only retires the connection.
    async fn rset(&mut self) {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"RSET\r\n");
        let ct = self.settings.command_timeout;
        let ok = match self.write(ct, "RSET write").await {
            Ok(()) => matches!(self.read_reply(ct, "RSET reply").await, Ok(r) if r.is_positive()),
            Err(_) => false,
        };
        if !ok {
            self.usable = false;
        }
    }

    async fn ehlo(&mut self) -> Result<(), SmtpError> {
        let ct = self.settings.command_timeout;
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"EHLO ");
        self.wbuf
            .extend_from_slice(self.settings.helo_name.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.write(ct, "EHLO write").await?;
        let n = self.read_len(ct, "EHLO reply").await?;
        let raw = &self.rbuf.data()[..n];
        let reply = Reply::from_raw(raw);
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(raw);
            self.rbuf.consume(n);
            return Ok(());
        }
        self.rbuf.consume(n);
        if !reply.is_permanent() {
            return Err(SmtpError::Helo(reply));
        }
        // RFC 5321 §3.2: an old server may only know HELO.
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"HELO ");
        self.wbuf
            .extend_from_slice(self.settings.helo_name.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        let reply = self.command(ct, "HELO reply").await?;
        if !reply.is_positive() {
            return Err(SmtpError::Helo(reply));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn start_tls(mut self) -> Result<Connection, SmtpError> {
        if !self.caps.starttls {
            return Err(SmtpError::StartTlsNotOffered);
        }
        let ct = self.settings.command_timeout;
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"STARTTLS\r\n");
        let reply = self.command(ct, "STARTTLS reply").await?;
        if reply.code != 220 {
            return Err(SmtpError::StartTls(reply));
        }
        // Plaintext queued behind the 220 would be read as if it came over
        // TLS (CVE-2011-0411 class); refuse instead.
        if !self.rbuf.data().is_empty() {
            return Err(SmtpError::StartTlsInjection);
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(SmtpError::TlsConfig("STARTTLS on a TLS stream".into()));
        };
        let stream = timeout(ct, tls_handshake(tcp, &self.settings))
            .await
            .map_err(|_| SmtpError::Timeout {
                waiting_for: "TLS handshake",
                after_data: false,
            })??;
        Ok(Connection {
            stream,
            caps: Capabilities::default(),
            ..self
        })
    }

    async fn authenticate(&mut self, credentials: &Credentials) -> Result<(), SmtpError> {
        if !self.stream.is_tls() && !self.peer.ip().is_loopback() {
            return Err(SmtpError::AuthWithoutTls);
        }
        let ct = self.settings.command_timeout;
        self.wbuf.clear();
        if self.caps.auth_plain {
            auth::plain_command(&mut self.wbuf, &credentials.user, &credentials.password);
        } else if self.caps.auth_login {
            self.wbuf.extend_from_slice(b"AUTH LOGIN\r\n");
            for secret in [&credentials.user, &credentials.password] {
                let reply = self.command(ct, "AUTH reply").await?;
                if reply.code != 334 {
                    return Err(SmtpError::Auth(reply));
                }
                self.wbuf.fill(0);
                self.wbuf.clear();
                auth::base64_into(&mut self.wbuf, secret.as_bytes());
                self.wbuf.extend_from_slice(b"\r\n");
            }
        } else {
            return Err(SmtpError::AuthNotOffered);
        }
        let reply = self.command(ct, "AUTH reply").await?;
        if reply.code != 235 {
            return Err(SmtpError::Auth(reply));
        }
        Ok(())
    }

    /// Writes `wbuf` and reads one reply.
    async fn command(
        &mut self,
        limit: Duration,
        waiting_for: &'static str,
    ) -> Result<Reply, SmtpError> {
        self.write(limit, waiting_for).await?;
        self.read_reply(limit, waiting_for).await
    }

    async fn write(&mut self, limit: Duration, waiting_for: &'static str) -> Result<(), SmtpError> {
        self.write_part(limit, 0..self.wbuf.len(), waiting_for)
            .await
    }

    /// Writes `wbuf[part]`.
    async fn write_part(
        &mut self,
        limit: Duration,
        part: std::ops::Range<usize>,
        waiting_for: &'static str,
    ) -> Result<(), SmtpError> {
        let (limit, cut) = self.step_limit(limit);
        match timeout(limit, self.stream.write_all(&self.wbuf[part])).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(cause)) => Err(SmtpError::Io {
                cause,
                after_data: self.dot_sent,
            }),
            Err(_) => Err(self.timed_out(waiting_for, cut)),
        }
    }

    /// How long a step may take: `limit`, or what is left before the transaction's deadline
    /// if that is less (then `true`: running out is the deadline's doing).
    fn step_limit(&self, limit: Duration) -> (Duration, bool) {
        match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left < limit {
                    (left, true)
                } else {
                    (limit, false)
                }
            }
            None => (limit, false),
        }
    }

    fn timed_out(&self, waiting_for: &'static str, deadline: bool) -> SmtpError {
        let after_data = self.dot_sent;
        if deadline {
            SmtpError::Deadline {
                waiting_for,
                after_data,
            }
        } else {
            SmtpError::Timeout {
                waiting_for,
                after_data,
            }
        }
    }

    async fn read_reply(
        &mut self,
        limit: Duration,
        waiting_for: &'static str,
    ) -> Result<Reply, SmtpError> {
        let n = self.read_len(limit, waiting_for).await?;
        Ok(self.take_reply(n))
    }

    /// Waits for a complete reply under `limit`; returns its length.
    async fn read_len(
        &mut self,
        limit: Duration,
        waiting_for: &'static str,
    ) -> Result<usize, SmtpError> {
        let (limit, cut) = self.step_limit(limit);
        match timeout(limit, self.next_reply_len()).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(waiting_for, cut)),
        }
    }

    fn take_reply(&mut self, n: usize) -> Reply {
        let reply = Reply::from_raw(&self.rbuf.data()[..n]);
        self.rbuf.consume(n);
        reply
    }

    /// Waits until the buffer holds a complete reply; returns its length.
    async fn next_reply_len(&mut self) -> Result<usize, SmtpError> {
        let after_data = self.dot_sent;
        loop {
            match reply::complete_len(self.rbuf.data()) {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {}
                Err(cause) => return Err(SmtpError::Malformed { cause, after_data }),
            }
            match self.rbuf.fill(&mut self.stream).await {
                Ok(0) => return Err(SmtpError::Closed { after_data }),
                Ok(_) => {}
                Err(cause) => return Err(SmtpError::Io { cause, after_data }),
            }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("tls", &self.stream.is_tls())
            .field("pipelining", &self.pipelining)
            .field("usable", &self.usable)
            .field("transactions", &self.transactions)
            .finish()
    }
}

async fn tls_handshake(tcp: TcpStream, settings: &ClientSettings) -> Result<Stream, SmtpError> {
    let (Some(config), Some(name)) = (&settings.tls_config, &settings.server_name) else {
        return Err(SmtpError::TlsConfig(
            "TLS requested but not configured".into(),
        ));
    };
    let tls = TlsConnector::from(config.clone())
        .connect(name.clone(), tcp)
        .await
        .map_err(SmtpError::TlsHandshake)?;
    Ok(Stream::Tls(Box::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_capabilities() {
        let raw = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
                    250-auth=LOGIN\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n\
                    250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n";
        let caps = Capabilities::from_ehlo(raw);
        assert_eq!(
            caps,
            Capabilities {
                pipelining: true,
                starttls: true,
                auth_plain: true,
                auth_login: true,
                size: Some(10_240_000),
                eight_bit_mime: true,
                smtputf8: false,
                enhanced_status_codes: true,
            }
        );
        let none = Capabilities::from_ehlo(b"250 PIPELINING-is-my-name\r\n");
        assert_eq!(none, Capabilities::default());
    }
}
