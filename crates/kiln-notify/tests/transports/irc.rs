//! IRC against a real `ngircd`, watched by a raw TCP client in the channel.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_notify::irc::{FloodLimit, Irc, IrcConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::{certs, free_port, notice, tool, wait_port, Server};

fn ngircd(dir: &Path, port: u16) -> Server {
    ngircd_with(dir, port, "")
}

/// With `extra` appended to its configuration.
fn ngircd_with(dir: &Path, port: u16, extra: &str) -> Server {
    let bin = tool("ngircd", &["/usr/sbin/ngircd", "/usr/local/sbin/ngircd"]);
    let conf = dir.join("ngircd.conf");
    std::fs::write(
        &conf,
        format!(
            "[Global]\nName = irc.test\nInfo = kiln test\nListen = 127.0.0.1\nPorts = {port}\n\
             MotdPhrase = \"kiln test server\"\n\
             [Limits]\nMaxNickLength = 30\nPingTimeout = 120\n\
             [Options]\nPAM = no\nIdent = no\nDNS = no\n{extra}"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-n").arg("-f").arg(&conf);
    Server::start("ngircd", cmd, dir)
}

/// A plain IRC client in some channels, reading what is said there.
struct Watcher {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Watcher {
    async fn join(port: u16, nick: &str, channels: &[&str]) -> Watcher {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (rd, wr) = s.into_split();
        let mut w = Watcher {
            rd: BufReader::new(rd),
            wr,
        };
        w.send(&format!("NICK {nick}")).await;
        w.send(&format!("USER {nick} 0 * :watcher")).await;
        w.until(|l| l.split(' ').nth(1) == Some("001")).await;
        for c in channels {
            w.send(&format!("JOIN {c}")).await;
            // 366: the end of the channel's names: joined.
            w.until(|l| l.split(' ').nth(1) == Some("366")).await;
        }
        w
    }

    async fn send(&mut self, line: &str) {
        self.wr
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// The next line (PINGs answered), within 20 s.
    async fn line(&mut self) -> String {
        loop {
            let mut buf = Vec::new();
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.rd.read_until(b'\n', &mut buf))
                    .await
                    .expect("no line from the server within 20 s")
                    .unwrap();
            assert!(n > 0, "the server closed the watcher's connection");
            assert!(buf.len() <= 512, "a line over 512 bytes: {buf:?}");
            let line = String::from_utf8(buf).unwrap();
            assert!(line.ends_with("\r\n"), "{line:?}");
            let line = line.trim_end_matches("\r\n").to_string();
            assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
            if let Some(t) = line.strip_prefix("PING ") {
                self.send(&format!("PONG {t}")).await;
                continue;
            }
            return line;
        }
    }

    async fn until(&mut self, f: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self.line().await;
            if f(&l) {
                return l;
            }
        }
    }

    /// The next PRIVMSG: (channel, text).
    async fn privmsg(&mut self) -> (String, String) {
        let l = self.until(|l| l.split(' ').nth(1) == Some("PRIVMSG")).await;
        let mut parts = l.splitn(4, ' ');
        let (_, _, chan, text) = (
            parts.next(),
            parts.next(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap(),
        );
        (chan, text.strip_prefix(':').unwrap().to_string())
    }
}

fn config(port: u16, nick: &str, channels: &[&str]) -> IrcConfig {
    IrcConfig {
        server: "127.0.0.1".into(),
        port,
        tls: false,
        ca_file: None,
        nick: nick.into(),
        password: None,
        sasl: false,
        channels: channels.iter().map(|c| c.to_string()).collect(),
        flood: FloodLimit::default(),
    }
}

async fn deliver(irc: &Irc, n: &kiln_notify::Notice) -> String {
    tokio::time::timeout(Duration::from_secs(30), irc.deliver(n))
        .await
        .expect("deliver did not finish within 30 s")
        .unwrap()
}

#[tokio::test]
async fn irc_one_line_per_notice_clean_and_paced() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = ngircd(dir.path(), port);
    wait_port(port).await;
    // The watcher takes the nick first: the transport becomes `kiln_`.
    let mut w = Watcher::join(port, "kiln", &["#kiln", "#x"]).await;
    let irc = Irc::start(IrcConfig {
        flood: FloodLimit {
            burst: 2,
            interval: Duration::from_millis(300),
        },
        ..config(port, "kiln", &["#kiln"])
    })
    .unwrap();

    let n1 = notice("i1", "build.failed");
    assert_eq!(deliver(&irc, &n1).await, "1 line read by the server");
    let l = w.until(|l| l.contains(" PRIVMSG ")).await;
    assert!(l.starts_with(":kiln_!"), "{l}");
    let text = l.split_once(" :").unwrap().1;
    assert_eq!(text, n1.summary());

    // A summary with CR LF and IRC codes gives one line, in #kiln only.
    let mut evil = notice("i2", "build.failed");
    evil.nevr = Some("bash\r\nPRIVMSG #x :evil\u{3}4red\u{2}\0".into());
    evil.reason = Some("é".repeat(400));
    deliver(&irc, &evil).await;
    let (chan, text) = w.privmsg().await;
    assert_eq!(chan, "#kiln");
    assert!(
        text.starts_with("[c9] bash  PRIVMSG #x :evil4red: build.failed"),
        "{text}"
    );
    assert!(text.ends_with('…'), "{text}");

    // Paced: burst 2, then one every 300 ms; in order, none lost.
    let start = Instant::now();
    let ns: Vec<_> = (0..6)
        .map(|i| notice(&format!("p{i}"), "build.started"))
        .collect();
    let irc = Arc::new(irc);
    let (a, b, c, d, e, f) = tokio::join!(
        deliver(&irc, &ns[0]),
        deliver(&irc, &ns[1]),
        deliver(&irc, &ns[2]),
        deliver(&irc, &ns[3]),
        deliver(&irc, &ns[4]),
        deliver(&irc, &ns[5]),
    );
    let elapsed = start.elapsed();
    for r in [a, b, c, d, e, f] {
        assert!(r.ends_with("read by the server"), "{r}");
    }
    // The bucket refilled while the earlier lines went: at least 4 waits
    // of 300 ms less what had refilled (about one token).
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    for _ in 0..6 {
        let (chan, text) = w.privmsg().await;
        assert_eq!(chan, "#kiln");
        assert!(text.contains("build.started"), "{text}");
    }
    // Nothing ever reached #x: a marker in #x comes before any other line.
    w.send("PRIVMSG #x :marker").await;
    w.send("PING :done").await;
    let l = w
        .until(|l| l.contains("PONG") || l.contains("PRIVMSG"))
        .await;
    assert!(l.contains("PONG"), "{l}");
}

#[tokio::test]
async fn irc_reconnects_after_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = ngircd(dir.path(), port);
    wait_port(port).await;
    let mut w = Watcher::join(port, "watcher", &["#kiln"]).await;
    let irc = Arc::new(Irc::start(config(port, "kilnbot", &["#kiln"])).unwrap());
    deliver(&irc, &notice("k1", "build.queued")).await;
    let (_, text) = w.privmsg().await;
    assert!(text.contains("build.queued"), "{text}");

    // The server dies; a notice is delivered meanwhile: it waits.
    server.kill();
    drop(w);
    let pending = {
        let irc = irc.clone();
        tokio::spawn(async move { deliver(&irc, &notice("k2", "build.started")).await })
    };
    let _server2 = ngircd(dir.path(), port);
    wait_port(port).await;
    // The watcher is back in the channel before the transport's first
    // reconnection (its backoff is 1 s).
    let mut w = Watcher::join(port, "watcher", &["#kiln"]).await;
    pending.await.unwrap();
    let (_, text) = w.privmsg().await;
    assert!(text.contains("build.started"), "{text}");
    // And a notice after that arrives too.
    deliver(&irc, &notice("k3", "build.succeeded")).await;
    let (_, text) = w.privmsg().await;
    assert!(text.contains("build.succeeded"), "{text}");
    assert!(irc.last_error().is_some());
}

#[tokio::test]
async fn irc_over_tls_trusts_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certs(dir.path());
    let (port, tls_port) = (free_port(), free_port());
    let _server = ngircd_with(
        dir.path(),
        port,
        &format!(
            "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {tls_port}\n",
            cert.display(),
            key.display()
        ),
    );
    wait_port(port).await;
    wait_port(tls_port).await;
    let mut w = Watcher::join(port, "watcher", &["#kiln"]).await;

    // Without the CA the server is not trusted: no connection, and why.
    let untrusted = Irc::start(IrcConfig {
        tls: true,
        ..config(tls_port, "untrusted", &["#kiln"])
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let why = loop {
        if let Some(e) = untrusted.last_error() {
            break e;
        }
        assert!(Instant::now() < deadline, "no TLS failure reported in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(why.contains("tls"), "{why}");
    drop(untrusted);

    let irc = Irc::start(IrcConfig {
        tls: true,
        ca_file: Some(ca),
        ..config(tls_port, "kilntls", &["#kiln"])
    })
    .unwrap();
    deliver(&irc, &notice("s1", "build.published")).await;
    let l = w.until(|l| l.contains(" PRIVMSG ")).await;
    assert!(l.starts_with(":kilntls!"), "{l}");
    assert!(l.contains("build.published"), "{l}");
}

/// A scripted IRC server for what ngircd lacks (SASL, NickServ): one
/// client; registration is held until `CAP END` when the client asked for
/// capabilities; every line the client sends is handed to `lines`.
async fn scripted(
    listener: tokio::net::TcpListener,
    lines: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let (s, _) = listener.accept().await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let mut nick = String::new();
    let mut cap = false;
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await.unwrap() == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        let _ = lines.send(line.clone());
        let mut reply = Vec::new();
        let (cmd, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match cmd {
            "CAP" if rest == "REQ :sasl" => {
                cap = true;
                reply.push(":s CAP * ACK :sasl".to_string());
            }
            "AUTHENTICATE" if rest == "PLAIN" => reply.push("AUTHENTICATE +".into()),
            "AUTHENTICATE" => {
                reply.push(format!(
                    ":s 900 {nick} {nick}!u@h {nick} :You are now logged in"
                ));
                reply.push(format!(":s 903 {nick} :SASL authentication successful"));
            }
            "NICK" => nick = rest.to_string(),
            "USER" if !cap => reply.push(format!(":s 001 {nick} :Welcome")),
            "CAP" if rest == "END" => reply.push(format!(":s 001 {nick} :Welcome")),
            "JOIN" => reply.push(format!(":{nick}!u@h JOIN :{rest}")),
            "PING" => reply.push(format!(":s PONG s {rest}")),
            _ => {}
        }
        for r in reply {
            wr.write_all(format!("{r}\r\n").as_bytes()).await.unwrap();
        }
    }
}

/// What a client sent the scripted server, up to and with its first PRIVMSG
/// to a channel.
async fn session_lines(cfg: IrcConfig) -> Vec<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(scripted(listener, tx));
    let irc = Irc::start(IrcConfig { port, ..cfg }).unwrap();
    deliver(&irc, &notice("a1", "build.failed")).await;
    let mut got = Vec::new();
    loop {
        let l = rx.recv().await.unwrap();
        let done = l.starts_with("PRIVMSG #kiln ");
        got.push(l);
        if done {
            break;
        }
    }
    server.abort();
    got
}

#[tokio::test]
async fn irc_sasl_plain_and_nickserv() {
    let cfg = IrcConfig {
        password: Some("s3cret".into()),
        ..config(0, "kiln", &["#kiln"])
    };
    let sasl = session_lines(IrcConfig {
        sasl: true,
        ..cfg.clone()
    })
    .await;
    assert_eq!(
        sasl[..7],
        [
            "CAP REQ :sasl",
            "NICK kiln",
            "USER kiln 0 * :Kiln notifications",
            "AUTHENTICATE PLAIN",
            "AUTHENTICATE AGtpbG4AczNjcmV0",
            "CAP END",
            "JOIN #kiln",
        ],
        "{sasl:?}"
    );
    assert!(!sasl.iter().any(|l| l.contains("NickServ")), "{sasl:?}");

    let ns = session_lines(cfg).await;
    assert_eq!(
        ns[..4],
        [
            "NICK kiln",
            "USER kiln 0 * :Kiln notifications",
            "PRIVMSG NickServ :IDENTIFY kiln s3cret",
            "JOIN #kiln",
        ],
        "{ns:?}"
    );
}
