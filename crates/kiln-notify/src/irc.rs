//! IRC: one persistent connection per sink.
//!
//! [`Irc::start`] checks the settings and spawns the connection task, which
//! connects (TLS with the system's roots plus `ca_file`, when `tls`),
//! registers (`NICK`/`USER`; a nick in use gets `_` appended; SASL PLAIN
//! with `CAP REQ :sasl` when `sasl`, else `IDENTIFY` to NickServ when there
//! is a password), joins the channels, answers the server's `PING`s, and
//! reconnects after any failure with a backoff of 1 s doubling to 60 s (back
//! to 1 s once a connection got as far as joining).
//!
//! [`Irc::deliver`] queues one `PRIVMSG` per channel (the notice's
//! [`Notice::summary`], cleaned by [`clean_text`] and cut by [`privmsg`]).
//! Lines leave at the pace of the [`FloodLimit`] (a token bucket, by
//! default a burst of 4 then one a second: they wait, none is dropped),
//! only on a connection that is registered and has joined. After the last
//! line of the queue the task sends `PING :kiln-N` (not counted by the
//! bucket); the server answers in order, so its `PONG` proves it has read
//! every line before it, and that is when `deliver` returns `Ok`. A line
//! the server read but refused (`404`: not in the channel, moderated...)
//! is logged, not an error. Lines whose `PONG`
//! did not come (the connection broke) are sent again on the next
//! connection, so a line may (rarely) show twice, never not at all while the
//! caller waits. A `deliver` whose caller gave up (its future dropped, e.g.
//! by the caller's timeout) is not sent any more, so the caller's retry does
//! not double it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{Notice, NotifyError, Result};

/// The longest IRC line, `\r\n` included (RFC 1459/2812).
pub const MAX_LINE: usize = 512;
/// Room kept in each line for the `:nick!user@host ` prefix the server puts
/// before it when relaying it (besides the nick's own length), so the
/// relayed line still fits in [`MAX_LINE`].
const RELAY_PREFIX_ROOM: usize = 80;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Connecting, TLS, registering and joining must be done in this time.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// A write (the server not reading) or a `PING` unanswered this long breaks
/// the connection.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// A `PING` of ours after this long without a line from the server.
const IDLE_PING: Duration = Duration::from_secs(120);
/// The longest line read from the server (tags included); longer breaks the
/// connection.
const MAX_READ_LINE: usize = 16 * 1024;
/// How many times a nick in use gets another `_`.
const MAX_NICK_TRIES: usize = 10;

/// The flood limit: a token bucket. `burst` lines may leave at once, then
/// one more every `interval`. Lines over the limit wait their turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimit {
    pub burst: u32,
    pub interval: Duration,
}

impl Default for FloodLimit {
    /// A burst of 4 lines, then one a second.
    fn default() -> Self {
        FloodLimit {
            burst: 4,
            interval: Duration::from_secs(1),
        }
    }
}

/// Where and as whom to connect (secrets already read from their files).
#[derive(Debug, Clone)]
pub struct IrcConfig {
    pub server: String,
    pub port: u16,
    pub tls: bool,
    /// Extra CA to trust (PEM), besides the system's roots.
    pub ca_file: Option<PathBuf>,
    pub nick: String,
    /// NickServ or SASL PLAIN password.
    pub password: Option<String>,
    /// Use SASL PLAIN with `password` (else NickServ IDENTIFY).
    pub sasl: bool,
    /// Channels to join and send to (`#name`).
    pub channels: Vec<String>,
    /// How fast lines may leave (default: [`FloodLimit::default`]).
    pub flood: FloodLimit,
}

impl Default for IrcConfig {
    /// Port 6697 with TLS, nick `kiln`, no channel: set `server` and
    /// `channels` at least.
    fn default() -> Self {
        IrcConfig {
            server: String::new(),
            port: 6697,
            tls: true,
            ca_file: None,
            nick: "kiln".into(),
            password: None,
            sasl: false,
            channels: Vec::new(),
            flood: FloodLimit::default(),
        }
    }
}

impl IrcConfig {
    /// Check every value (and read `ca_file`), without connecting.
    pub fn validate(&self) -> Result<()> {
        self.check()?;
        if self.tls {
            tls_connector(self)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(NotifyError::Config(format!("irc: {m}")));
        if self.server.is_empty()
            || !self
                .server
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return bad(format!(
                "server {:?} is not a host name or address",
                self.server
            ));
        }
        if self.port == 0 {
            return bad("port 0".into());
        }
        if !valid_nick(&self.nick) {
            return bad(format!(
                "nick {:?}: 1 to 30 letters, digits or -[]\\`^{{}}|_, not starting with a digit or -",
                self.nick
            ));
        }
        if self.channels.is_empty() {
            return bad("no channel to send to".into());
        }
        for c in &self.channels {
            if !valid_channel(c) {
                return bad(format!(
                    "channel {c:?}: starts with # or &, at most 50 bytes, no space, comma, \
                     ':' or control character"
                ));
            }
        }
        if let Some(p) = &self.password {
            if p.is_empty() || p.chars().any(|c| c.is_control()) || p.len() > 300 {
                return bad("password: not empty, at most 300 bytes, no control character".into());
            }
        } else if self.sasl {
            return bad("sasl is set but there is no password".into());
        }
        if self.flood.burst == 0 {
            return bad("flood limit: a burst of 0 lines sends nothing".into());
        }
        Ok(())
    }
}

fn valid_nick(n: &str) -> bool {
    let special = |c: char| "-[]\\`^{}|_".contains(c);
    !n.is_empty()
        && n.len() <= 30
        && n.chars().all(|c| c.is_ascii_alphanumeric() || special(c))
        && !n.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

fn valid_channel(c: &str) -> bool {
    (c.starts_with('#') || c.starts_with('&'))
        && c.len() > 1
        && c.len() <= 50
        && !c
            .chars()
            .any(|x| x.is_control() || matches!(x, ' ' | ',' | ':'))
}

/// Text fit for one IRC line: CR, LF and tab become spaces; every other
/// control character (NUL, IRC's bold/colour/reverse codes, C1 controls)
/// and the Unicode line and paragraph separators are dropped.
pub fn clean_text(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\r' | '\n' | '\t' => Some(' '),
            '\u{2028}' | '\u{2029}' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// `PRIVMSG CHANNEL :TEXT\r\n` with `text` cleaned ([`clean_text`]) and cut
/// on a character boundary (ending with `…` when cut) so the line, and the
/// line the server relays with `:NICK!user@host ` before it, fit in
/// [`MAX_LINE`] bytes.
pub fn privmsg(channel: &str, nick: &str, text: &str) -> String {
    let head = format!("PRIVMSG {channel} :");
    let room = MAX_LINE
        .saturating_sub(head.len() + 2)
        .saturating_sub(nick.len() + RELAY_PREFIX_ROOM);
    let text = clean_text(text);
    let text = text.trim();
    let body = if text.len() <= room {
        text.to_string()
    } else {
        let ell = "…";
        let mut cut = room.saturating_sub(ell.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}{ell}", text[..cut].trim_end())
    };
    let body = if body.is_empty() { "-".into() } else { body };
    format!("{head}{body}\r\n")
}

/// One `deliver`: its lines, and who waits for them.
struct Job {
    lines: Vec<String>,
    done: oneshot::Sender<Result<String>>,
}

/// A running connection (reconnects by itself; stops when dropped).
pub struct Irc {
    cfg: IrcConfig,
    jobs: mpsc::UnboundedSender<Job>,
    task: tokio::task::JoinHandle<()>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Drop for Irc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Irc {
    /// Check the settings, read `ca_file`, and start the connection task
    /// (needs a Tokio runtime). Returns at once: the server may be down.
    pub fn start(cfg: IrcConfig) -> Result<Irc> {
        cfg.check()?;
        let tls = if cfg.tls {
            Some(tls_connector(&cfg)?)
        } else {
            None
        };
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| NotifyError::Config("irc: needs a Tokio runtime".into()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let last_error = Arc::new(Mutex::new(None));
        let task = rt.spawn(run(cfg.clone(), tls, rx, last_error.clone()));
        Ok(Irc {
            cfg,
            jobs: tx,
            task,
            last_error,
        })
    }

    /// Send the notice's line to every channel. `Ok` (`"sent to #a, #b"`)
    /// once the server has read them all (its `PONG` to the `PING` sent
    /// after them came back). While the connection is down it waits for the
    /// next one: the caller's timeout bounds it. `Err(Transport)` only if
    /// the connection task is gone.
    pub async fn deliver(&self, n: &Notice) -> Result<String> {
        let summary = n.summary();
        let lines = self
            .cfg
            .channels
            .iter()
            .map(|c| privmsg(c, &self.cfg.nick, &summary))
            .collect();
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { lines, done })
            .map_err(|_| NotifyError::Transport("irc: the connection task stopped".into()))?;
        answer
            .await
            .map_err(|_| NotifyError::Transport("irc: the connection task stopped".into()))?
    }

    /// Why the last connection failed or broke (`None` once one worked).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }
}

fn tls_connector(cfg: &IrcConfig) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| NotifyError::Config(format!("irc: ca_file {}: {e}", ca.display())))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NotifyError::Config(format!("irc: ca_file {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(NotifyError::Config(format!(
                "irc: ca_file {}: no PEM certificate in it",
                ca.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| NotifyError::Config(format!("irc: ca_file {}: {e}", ca.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(NotifyError::Config(
            "irc: tls: no trusted root (none in the system, no ca_file)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NotifyError::Config(format!("irc: tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Jobs taken from the channel but not yet confirmed by a `PONG`, in order,
/// kept across connections.
#[derive(Default)]
struct Backlog {
    /// Not yet (fully) written on this connection.
    todo: VecDeque<Job>,
    /// The line of `todo[0]` to write next.
    next_line: usize,
    /// Written, waiting for the `PONG` to `PING :kiln-SEQ`
    /// (`None`: no `PING` sent after them yet).
    written: VecDeque<(Option<u64>, Job)>,
}

impl Backlog {
    /// After a broken connection: everything unconfirmed is sent again
    /// (whole), in order; what nobody waits for any more is dropped.
    fn requeue(&mut self) {
        let mut all: VecDeque<Job> = self.written.drain(..).map(|(_, j)| j).collect();
        all.append(&mut self.todo);
        all.retain(|j| !j.done.is_closed());
        self.todo = all;
        self.next_line = 0;
    }

    fn confirm(&mut self, seq: u64) {
        while let Some((Some(s), _)) = self.written.front() {
            if *s > seq {
                break;
            }
            if let Some((_, job)) = self.written.pop_front() {
                let n = job.lines.len();
                let _ = job.done.send(Ok(format!(
                    "{n} line{} read by the server",
                    if n == 1 { "" } else { "s" }
                )));
            }
        }
    }
}

async fn run(
    cfg: IrcConfig,
    tls: Option<tokio_rustls::TlsConnector>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut backlog = Backlog::default();
    let mut bucket = Bucket::new(cfg.flood);
    let mut seq: u64 = 0;
    let addr = format!("{}:{}", cfg.server, cfg.port);
    loop {
        let mut joined = false;
        let e = session(
            &cfg,
            tls.as_ref(),
            &mut jobs,
            &mut backlog,
            &mut bucket,
            &mut seq,
            &mut joined,
        )
        .await;
        let Some(e) = e else { return };
        if joined {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!("irc {addr}: {e}; reconnecting in {} s", backoff.as_secs());
        if let Ok(mut g) = last_error.lock() {
            *g = Some(e);
        }
        backlog.requeue();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection's reading half, line by line (cancel safe).
struct Lines<R> {
    rd: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    async fn next(&mut self) -> std::result::Result<String, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                return Ok(line.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_READ_LINE {
                return Err(format!("the server sent a line over {MAX_READ_LINE} bytes"));
            }
            let mut chunk = [0u8; 4096];
            match self.rd.read(&mut chunk).await {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// A message from the server: the command (or numeric) and its parameters.
struct Msg {
    command: String,
    params: Vec<String>,
    /// The nick of the prefix, if any.
    from: Option<String>,
}

fn parse(line: &str) -> Option<Msg> {
    let mut rest = line;
    if rest.starts_with('@') {
        rest = rest.split_once(' ')?.1;
    }
    let mut from = None;
    if let Some(p) = rest.strip_prefix(':') {
        let (prefix, r) = p.split_once(' ')?;
        from = Some(
            prefix
                .split(['!', '@'])
                .next()
                .unwrap_or(prefix)
                .to_string(),
        );
        rest = r;
    }
    let rest = rest.trim_start_matches(' ');
    let (head, trailing) = match rest.split_once(" :") {
        Some((h, t)) => (h, Some(t)),
        None => match rest.strip_prefix(':') {
            Some(t) => ("", Some(t)),
            None => (rest, None),
        },
    };
    let mut words = head.split(' ').filter(|w| !w.is_empty());
    let command = words.next()?.to_ascii_uppercase();
    let mut params: Vec<String> = words.map(str::to_string).collect();
    if let Some(t) = trailing {
        params.push(t.to_string());
    }
    Some(Msg {
        command,
        params,
        from,
    })
}

struct Conn {
    rd: Lines<tokio::io::ReadHalf<Box<dyn Stream>>>,
    wr: tokio::io::WriteHalf<Box<dyn Stream>>,
}

impl Conn {
    async fn send(&mut self, line: &str) -> std::result::Result<(), String> {
        let line = if line.ends_with("\r\n") {
            line.to_string()
        } else {
            format!("{line}\r\n")
        };
        let write = async {
            self.wr.write_all(line.as_bytes()).await?;
            self.wr.flush().await
        };
        match tokio::time::timeout(IO_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err(format!("write: blocked for {} s", IO_TIMEOUT.as_secs())),
        }
    }
}

async fn connect(
    cfg: &IrcConfig,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> std::result::Result<Conn, String> {
    let tcp = TcpStream::connect((cfg.server.as_str(), cfg.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match tls {
        Some(connector) => {
            let name = ServerName::try_from(cfg.server.clone())
                .map_err(|e| format!("tls: server name {:?}: {e}", cfg.server))?;
            let s = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            Box::new(s)
        }
        None => Box::new(tcp),
    };
    let (rd, wr) = tokio::io::split(stream);
    Ok(Conn {
        rd: Lines {
            rd,
            buf: Vec::new(),
        },
        wr,
    })
}

/// Connect, register and join; the nick the server knows us by.
async fn setup(conn: &mut Conn, cfg: &IrcConfig) -> std::result::Result<String, String> {
    let sasl = cfg.sasl && cfg.password.is_some();
    if sasl {
        conn.send("CAP REQ :sasl").await?;
    }
    let mut tries = 0usize;
    let mut limit = usize::MAX;
    let nick_for = |tries: usize, limit: usize| {
        let base: String = cfg
            .nick
            .chars()
            .take(limit.saturating_sub(tries).max(1))
            .collect();
        format!("{base}{}", "_".repeat(tries))
    };
    let mut nick = cfg.nick.clone();
    conn.send(&format!("NICK {nick}")).await?;
    conn.send(&format!("USER {} 0 * :Kiln notifications", cfg.nick))
        .await?;
    // Registration.
    loop {
        let line = conn.rd.next().await?;
        let Some(m) = parse(&line) else { continue };
        match m.command.as_str() {
            "PING" => {
                let token = m.params.last().cloned().unwrap_or_default();
                conn.send(&format!("PONG :{token}")).await?;
            }
            "ERROR" => return Err(format!("server error: {}", m.params.join(" "))),
            "001" => {
                if let Some(n) = m.params.first() {
                    nick = n.clone();
                }
                break;
            }
            "433" | "436" | "437" => {
                tries += 1;
                if tries > MAX_NICK_TRIES {
                    return Err(format!(
                        "nick {} and {MAX_NICK_TRIES} variants are in use",
                        cfg.nick
                    ));
                }
                nick = nick_for(tries, limit);
                conn.send(&format!("NICK {nick}")).await?;
            }
            "432" if tries > 0 && nick.len() > 1 => {
                // Our `_` made it too long: shorten the nick instead.
                limit = nick.len() - 1;
                nick = nick_for(tries, limit);
                conn.send(&format!("NICK {nick}")).await?;
            }
            "432" => return Err(format!("the server refuses the nick {nick:?}")),
            "CAP" if sasl => {
                let sub = m.params.get(1).map(|s| s.to_ascii_uppercase());
                match sub.as_deref() {
                    Some("ACK") => conn.send("AUTHENTICATE PLAIN").await?,
                    Some("NAK") => {
                        return Err("the server does not offer SASL (CAP NAK sasl)".into())
                    }
                    _ => {}
                }
            }
            "AUTHENTICATE" if sasl && m.params.first().map(String::as_str) == Some("+") => {
                // authzid NUL authcid NUL password, in lines of 400
                // characters; a last full one is followed by `+`.
                let pw = cfg.password.as_deref().unwrap_or("");
                let blob = base64(format!("\0{}\0{pw}", cfg.nick).as_bytes());
                for c in blob.as_bytes().chunks(400) {
                    let c = String::from_utf8_lossy(c);
                    conn.send(&format!("AUTHENTICATE {c}")).await?;
                }
                if blob.len().is_multiple_of(400) {
                    conn.send("AUTHENTICATE +").await?;
                }
            }
            "903" if sasl => conn.send("CAP END").await?,
            "902" | "904" | "905" | "906" | "908" if sasl => {
                return Err(format!(
                    "SASL authentication failed: {} {}",
                    m.command,
                    m.params.last().map(String::as_str).unwrap_or("")
                ))
            }
            "464" | "465" => {
                return Err(format!(
                    "the server refuses us: {}",
                    m.params.last().map(String::as_str).unwrap_or("")
                ))
            }
            _ => {}
        }
    }
    if let (false, Some(pw)) = (sasl, &cfg.password) {
        conn.send(&format!("PRIVMSG NickServ :IDENTIFY {} {pw}", cfg.nick))
            .await?;
    }
    // Join, and wait until every channel answered.
    let mut waiting: Vec<String> = cfg.channels.iter().map(|c| c.to_lowercase()).collect();
    for c in &cfg.channels {
        conn.send(&format!("JOIN {c}")).await?;
    }
    while !waiting.is_empty() {
        let line = conn.rd.next().await?;
        let Some(m) = parse(&line) else { continue };
        let chan = |i: usize| m.params.get(i).map(|c| c.to_lowercase());
        match m.command.as_str() {
            "PING" => {
                let token = m.params.last().cloned().unwrap_or_default();
                conn.send(&format!("PONG :{token}")).await?;
            }
            "ERROR" => return Err(format!("server error: {}", m.params.join(" "))),
            "JOIN"
                if m.from
                    .as_deref()
                    .is_some_and(|f| f.eq_ignore_ascii_case(&nick)) =>
            {
                if let Some(c) = chan(0) {
                    waiting.retain(|w| *w != c);
                }
            }
            "403" | "405" | "471" | "473" | "474" | "475" | "476" | "477" => {
                if let Some(c) = chan(1) {
                    tracing::warn!(
                        "irc {}: cannot join {c}: {} {}",
                        cfg.server,
                        m.command,
                        m.params.last().map(String::as_str).unwrap_or("")
                    );
                    waiting.retain(|w| *w != c);
                }
            }
            _ => {}
        }
    }
    Ok(nick)
}

/// One connection, from connecting to its end: why it ended (`None` when
/// the `Irc` is gone).
#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &IrcConfig,
    tls: Option<&tokio_rustls::TlsConnector>,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    backlog: &mut Backlog,
    bucket: &mut Bucket,
    seq: &mut u64,
    joined: &mut bool,
) -> Option<String> {
    let (mut conn, nick) = match tokio::time::timeout(SETUP_TIMEOUT, async {
        let mut c = connect(cfg, tls).await?;
        let nick = setup(&mut c, cfg).await?;
        Ok::<_, String>((c, nick))
    })
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Some(e),
        Err(_) => {
            return Some(format!(
                "not registered and joined within {} s",
                SETUP_TIMEOUT.as_secs()
            ))
        }
    };
    *joined = true;
    tracing::info!(
        "irc {}:{}: connected, joined {}",
        cfg.server,
        cfg.port,
        cfg.channels.join(", ")
    );
    // The PING we wait an answer to: its token and when it was sent.
    let mut ping: Option<(String, Instant)> = None;
    let mut last_heard = Instant::now();
    loop {
        // Whatever nobody waits for any more is not sent.
        while backlog.next_line == 0 && backlog.todo.front().is_some_and(|j| j.done.is_closed()) {
            backlog.todo.pop_front();
        }
        let have_line = !backlog.todo.is_empty();
        let send_at = bucket.ready_at();
        let deadline = match &ping {
            Some((_, at)) => *at + IO_TIMEOUT,
            None => last_heard + IDLE_PING,
        };
        tokio::select! {
            line = conn.rd.next() => {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => return Some(e),
                };
                last_heard = Instant::now();
                let Some(m) = parse(&line) else { continue };
                match m.command.as_str() {
                    "PING" => {
                        let token = m.params.last().cloned().unwrap_or_default();
                        if let Err(e) = conn.send(&format!("PONG :{token}")).await {
                            return Some(e);
                        }
                    }
                    "PONG" => {
                        let token = m.params.last().cloned().unwrap_or_default();
                        if ping.as_ref().is_some_and(|(t, _)| *t == token) {
                            ping = None;
                            if let Some(n) = token.strip_prefix("kiln-").and_then(|n| n.parse().ok()) {
                                backlog.confirm(n);
                            }
                        }
                    }
                    "ERROR" => return Some(format!("server error: {}", m.params.join(" "))),
                    "KICK" if m.params.get(1).is_some_and(|k| k.eq_ignore_ascii_case(&nick)) => {
                        // Join again: lines to a channel we are not in may be refused.
                        if let Some(c) = m.params.first() {
                            tracing::warn!("irc {}: kicked from {c}; joining again", cfg.server);
                            if let Err(e) = conn.send(&format!("JOIN {c}")).await {
                                return Some(e);
                            }
                        }
                    }
                    // The server read a line but refused it (not in the
                    // channel, moderated, banned...): logged; `deliver`
                    // still counts it as read.
                    "401" | "403" | "404" | "442" => {
                        tracing::warn!(
                            "irc {}: {} refused: {}",
                            cfg.server,
                            m.params.get(1).map(String::as_str).unwrap_or("?"),
                            m.params.last().map(String::as_str).unwrap_or("")
                        );
                    }
                    _ => {}
                }
            }
            job = jobs.recv() => {
                match job {
                    Some(j) => backlog.todo.push_back(j),
                    // The `Irc` is gone.
                    None => return None,
                }
            }
            _ = tokio::time::sleep_until(send_at), if have_line => {
                let Some(job) = backlog.todo.front() else { continue };
                let total = job.lines.len();
                let Some(line) = job.lines.get(backlog.next_line).cloned() else { continue };
                if let Err(e) = conn.send(&line).await {
                    return Some(e);
                }
                bucket.take();
                backlog.next_line += 1;
                if backlog.next_line >= total {
                    backlog.next_line = 0;
                    if let Some(j) = backlog.todo.pop_front() {
                        backlog.written.push_back((None, j));
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if ping.is_some() {
                    return Some(format!("no PONG within {} s", IO_TIMEOUT.as_secs()));
                }
                // Quiet for long: is the server still there?
                match send_ping(&mut conn, backlog, seq).await {
                    Ok(p) => ping = Some(p),
                    Err(e) => return Some(e),
                }
            }
        }
        // Nothing more to send now and lines not confirmed: ask the server
        // to (once the PING that may be out is answered).
        if ping.is_none()
            && backlog.todo.is_empty()
            && jobs.is_empty()
            && backlog.written.iter().any(|w| w.0.is_none())
        {
            match send_ping(&mut conn, backlog, seq).await {
                Ok(p) => ping = Some(p),
                Err(e) => return Some(e),
            }
        }
    }
}

/// Send `PING :kiln-SEQ` (the next number), which confirms the lines
/// written so far once answered: its token and when it left.
async fn send_ping(
    conn: &mut Conn,
    backlog: &mut Backlog,
    seq: &mut u64,
) -> std::result::Result<(String, Instant), String> {
    *seq += 1;
    let token = format!("kiln-{seq}");
    conn.send(&format!("PING :{token}")).await?;
    for w in backlog.written.iter_mut().filter(|w| w.0.is_none()) {
        w.0 = Some(*seq);
    }
    Ok((token, Instant::now()))
}

/// The token bucket of [`FloodLimit`].
struct Bucket {
    limit: FloodLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: FloodLimit) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let per = self.limit.interval.as_secs_f64();
        let gained = if per > 0.0 {
            (now - self.at).as_secs_f64() / per
        } else {
            f64::INFINITY
        };
        self.tokens = (self.tokens + gained).min(f64::from(self.limit.burst));
        self.at = now;
    }

    /// When the next line may leave.
    fn ready_at(&mut self) -> Instant {
        self.refill();
        if self.tokens >= 1.0 {
            Instant::now()
        } else {
            Instant::now() + self.limit.interval.mul_f64(1.0 - self.tokens)
        }
    }

    fn take(&mut self) {
        self.refill();
        self.tokens -= 1.0;
    }
}

/// Standard base64 with padding (SASL PLAIN's `AUTHENTICATE` payload).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_clean_and_short() {
        let l = privmsg(
            "#x",
            "kiln",
            "a\r\nPRIVMSG #x :evil\0\x02bold\x03\x0f\u{85}",
        );
        assert_eq!(l, "PRIVMSG #x :a  PRIVMSG #x :evilbold\r\n");
        assert_eq!(l.matches("\r\n").count(), 1);
        let long = "é".repeat(600);
        let l = privmsg("#chan", "kiln", &long);
        assert!(l.len() <= MAX_LINE);
        assert!(l.len() + ":kiln!kiln@host.example.org ".len() <= MAX_LINE);
        assert!(l.ends_with("…\r\n"), "{l}");
        assert_eq!(privmsg("#c", "k", "\x01\x02"), "PRIVMSG #c :-\r\n");
    }

    #[test]
    fn parses_messages() {
        let m = parse(":irc.test 001 kiln :Welcome").unwrap();
        assert_eq!(m.command, "001");
        assert_eq!(m.params, ["kiln", "Welcome"]);
        let m = parse(":kiln!~kiln@host JOIN :#chan").unwrap();
        assert_eq!(m.from.as_deref(), Some("kiln"));
        assert_eq!(m.params, ["#chan"]);
        let m = parse("@time=x :s PONG s :kiln-3").unwrap();
        assert_eq!(m.params, ["s", "kiln-3"]);
        assert_eq!(parse("PING :abc").unwrap().params, ["abc"]);
    }

    #[test]
    fn base64_matches() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"\0kiln\0pw"), "AGtpbG4AcHc=");
    }

    #[test]
    fn config_checks() {
        let ok = IrcConfig {
            server: "irc.example.org".into(),
            tls: false,
            channels: vec!["#kiln".into()],
            ..IrcConfig::default()
        };
        ok.check().unwrap();
        for bad in [
            IrcConfig {
                nick: "a b".into(),
                ..ok.clone()
            },
            IrcConfig {
                channels: vec!["kiln".into()],
                ..ok.clone()
            },
            IrcConfig {
                channels: vec!["#a,#b".into()],
                ..ok.clone()
            },
            IrcConfig {
                channels: vec![],
                ..ok.clone()
            },
            IrcConfig {
                server: "a b".into(),
                ..ok.clone()
            },
            IrcConfig {
                password: Some("x\r\nQUIT".into()),
                ..ok.clone()
            },
            IrcConfig {
                sasl: true,
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bucket_paces_after_the_burst() {
        let mut b = Bucket::new(FloodLimit {
            burst: 2,
            interval: Duration::from_millis(100),
        });
        let start = Instant::now();
        for _ in 0..2 {
            assert!(b.ready_at() <= Instant::now());
            b.take();
        }
        let next = b.ready_at();
        assert!(
            next >= start + Duration::from_millis(90),
            "{:?}",
            next - start
        );
    }
}
