//! Notifications (issue 11) through the real master to real servers
//! started here on loopback: `mosquitto` (a subscriber sees each event of a
//! build once, in order, on `PREFIX/builds/<target>/<state>`; the broker
//! stopped during a build and started again: the events queued meanwhile
//! arrive, none twice), `ngircd` (one line per event, nothing a build
//! prints makes a second line, the server restarted: the missed lines
//! arrive) and Python's `aiosmtpd` (a failed build's mails, with their
//! headers, to the fixed address and the submitter's).
//!
//! Every server is a child killed by its pid when its guard drops; ports
//! come from binding 127.0.0.1:0; the tests wait on what the subscriber,
//! the IRC client or the SMTP server reports.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long a delivery may take to arrive.
const ARRIVE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// A server started by a test (stdout and stderr to files in its
/// directory), killed by its pid and reaped on drop.
struct Server {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    fn start(name: &str, mut cmd: Command, dir: &Path) -> Server {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&stdout)
                    .unwrap(),
            )
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&stderr)
                    .unwrap(),
            );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Server {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// SIGTERM (mosquitto writes its persistence file) and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            let r = unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            assert_eq!(r, 0, "kill -TERM {}", c.id());
            c.wait().unwrap();
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port free on 127.0.0.1 a moment ago (bound to :0, read, released):
/// the servers below take a port number, not a socket.
fn free_port() -> u16 {
    closed_port()
}

/// Waits until something accepts connections on `port`.
fn wait_port(port: u16) {
    wait_until(&format!("a server on 127.0.0.1:{port}"), ARRIVE, || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

fn tool(name: &str, paths: &[&str]) -> PathBuf {
    paths
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "required tool `{name}` was not found at {paths:?}; these tests need it and \
                 never skip (Debian 12: apt-get install mosquitto ngircd python3-aiosmtpd)"
            )
        })
}

fn mosquitto(dir: &Path, port: u16) -> Server {
    let bin = tool(
        "mosquitto",
        &["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"],
    );
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "persistence true\npersistence_location {}/\nlog_type all\nlog_dest stderr\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let s = Server::start("mosquitto", cmd, dir);
    wait_port(port);
    s
}

fn ngircd(dir: &Path, port: u16) -> Server {
    let bin = tool("ngircd", &["/usr/sbin/ngircd", "/usr/local/sbin/ngircd"]);
    let conf = dir.join("ngircd.conf");
    std::fs::write(
        &conf,
        format!(
            "[Global]\nName = irc.test\nInfo = kiln test\nListen = 127.0.0.1\nPorts = {port}\n\
             MotdPhrase = \"kiln test server\"\n\
             [Limits]\nMaxNickLength = 30\nPingTimeout = 120\n\
             [Options]\nPAM = no\nIdent = no\nDNS = no\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-n").arg("-f").arg(&conf);
    let s = Server::start("ngircd", cmd, dir);
    wait_port(port);
    s
}

fn aiosmtpd(dir: &Path, port: u16) -> Server {
    let py = tool("python3", &["/usr/bin/python3"]);
    let mut cmd = Command::new(py);
    cmd.args(["-u", "-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"));
    let s = Server::start("smtp", cmd, dir);
    wait_port(port);
    s
}

// ---------------------------------------------------------------------------
// An MQTT 3.1.1 subscriber (the few packets it needs, over std's TCP)
// ---------------------------------------------------------------------------

/// A subscriber with a persistent session (clean session off, so the
/// broker keeps what it missed across its restart), QoS 1 on one filter,
/// connecting again (every 20 ms) whenever the connection ends; each
/// message it gets is acknowledged and handed over as (topic, JSON).
struct Subscriber {
    rx: mpsc::Receiver<(String, Value)>,
    stop: Arc<AtomicBool>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn mqtt_packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        p.push(b);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

/// (first byte, body), or None when the connection ends.
fn mqtt_read(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok()?;
    let kind = b[0];
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        s.read_exact(&mut b).ok()?;
        len += (b[0] & 0x7f) as usize * mult;
        mult *= 128;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((kind, body))
}

/// One connection's life: CONNECT, SUBSCRIBE, then PUBLISHes until it
/// ends.
fn mqtt_session(port: u16, id: &str, filter: &str, tx: &mpsc::Sender<(String, Value)>) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let mut connect = Vec::new();
    mqtt_str(&mut connect, "MQTT");
    // Level 4 (3.1.1), flags 0 (clean session off), keep alive 0 (off).
    connect.extend_from_slice(&[4, 0, 0, 0]);
    mqtt_str(&mut connect, id);
    if s.write_all(&mqtt_packet(0x10, &connect)).is_err() {
        return;
    }
    match mqtt_read(&mut s) {
        Some((0x20, b)) if b.len() == 2 && b[1] == 0 => {}
        _ => return,
    }
    let mut sub = vec![0, 1];
    mqtt_str(&mut sub, filter);
    sub.push(1);
    if s.write_all(&mqtt_packet(0x82, &sub)).is_err() {
        return;
    }
    while let Some((kind, body)) = mqtt_read(&mut s) {
        if kind >> 4 != 3 {
            continue;
        }
        let qos = (kind >> 1) & 3;
        let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
        let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
        let mut at = 2 + tlen;
        if qos > 0 {
            let pid = [body[at], body[at + 1]];
            at += 2;
            if s.write_all(&mqtt_packet(0x40, &pid)).is_err() {
                return;
            }
        }
        let json: Value = serde_json::from_slice(&body[at..])
            .unwrap_or_else(|e| panic!("not JSON on {topic}: {e}"));
        if tx.send((topic, json)).is_err() {
            return;
        }
    }
}

fn subscribe(port: u16, id: &str, filter: &str) -> Subscriber {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, id, filter) = (stop.clone(), id.to_string(), filter.to_string());
    std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            mqtt_session(port, &id, &filter, &tx);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Subscriber { rx, stop }
}

impl Subscriber {
    fn next(&self) -> (String, Value) {
        self.rx
            .recv_timeout(ARRIVE)
            .unwrap_or_else(|_| panic!("no MQTT message within {ARRIVE:?}"))
    }

    /// Messages until the one of `event` about build `build`.
    fn until(&self, event: &str, build: u64) -> Vec<(String, Value)> {
        let mut v = Vec::new();
        loop {
            let (t, j) = self.next();
            let done = j.get("event").and_then(Value::as_str) == Some(event)
                && j.get("build").and_then(Value::as_u64) == Some(build);
            v.push((t, j));
            if done {
                return v;
            }
        }
    }
}

fn sink(m: &Master, name: &str) -> Value {
    let v = m.cli_json(&["notify", "ls", "--json"]);
    v.as_array()
        .unwrap()
        .iter()
        .find(|s| jstr(s, "name") == name)
        .unwrap_or_else(|| panic!("no sink {name} in {v}"))
        .clone()
}

/// mosquitto: each event of a build once, in order, on the documented
/// topic with the documented JSON; the broker stopped after
/// `build.started` (the build sleeps a little) and started again once the
/// build ended: the two events queued meanwhile arrive, none twice.
#[test]
fn mqtt_events_in_order_once_across_a_broker_restart() {
    require_build_tools();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = mosquitto(dir.path(), port);
    let sub = subscribe(port, "kiln-it-watcher", "kiln/#");
    let config = format!(
        r#"
[[notify]]
name = "bus"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
topic_prefix = "kiln"
retry_base_ms = 200
"#
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    let _w = m.start_worker("nm1", "noarch", "default", 1);
    // The subscriber is in (its session exists) once the worker's event
    // arrives.
    let (topic, j) = sub.next();
    assert_eq!(jstr(&j, "event"), "worker.enrolled", "{topic} {j}");

    let pkg = Pkg::noarch("nm-slow").sleep(3);
    let srpm = pkg.build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    let mut got = sub.until("build.started", id);
    // Stopped while the build runs: its end is queued in the outbox.
    broker.stop();
    let b = m.wait_build_done(id, BUILD_TIMEOUT);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    let s = wait_until("the build's end queued for the broker", ARRIVE, || {
        let s = sink(&m, "bus");
        (ju64(&s, "queued") >= 2).then_some(s)
    });
    assert_eq!(ju64(&s, "delivered"), 3, "enrolled, queued, started: {s}");
    let broker2 = mosquitto(dir.path(), port);
    got.extend(sub.until("build.published", id));
    // Anything published twice would come before what is published
    // after: a test event sent once the outbox is empty is the end mark.
    wait_until("the outbox emptied", ARRIVE, || {
        (ju64(&sink(&m, "bus"), "queued") == 0).then_some(())
    });
    m.cli(&["notify", "test", "bus"]).assert_ok();
    loop {
        let (t, j) = sub.next();
        if jstr(&j, "event") == "test" {
            break;
        }
        got.push((t, j));
    }
    let of_build: Vec<&(String, Value)> = got
        .iter()
        .filter(|(_, j)| j.get("build").and_then(Value::as_u64) == Some(id))
        .collect();
    let events: Vec<String> = of_build.iter().map(|(_, j)| jstr(j, "event")).collect();
    assert_eq!(
        events,
        [
            "build.queued",
            "build.started",
            "build.succeeded",
            "build.published"
        ],
        "each event once, in order: {got:?}"
    );
    let mut ids = BTreeSet::new();
    for (_, j) in &got {
        assert!(ids.insert(jstr(j, "id")), "an event twice: {j}");
    }
    for (topic, j) in of_build {
        // The topic's last level and the payload's `state` are both the
        // event's (`started`, not the build's stored `building`).
        let event = jstr(j, "event");
        let what = event.strip_prefix("build.").unwrap();
        assert_eq!(topic, &format!("kiln/builds/default/{what}"), "{j}");
        assert_eq!(jstr(j, "state"), what, "{j}");
        assert_eq!(jstr(j, "target"), "default", "{j}");
        assert_eq!(jstr(j, "package"), "nm-slow", "{j}");
        assert_eq!(ju64(j, "build"), id, "{j}");
        assert_eq!(jstr(j, "id").len(), 24, "{j}");
    }
    let s = sink(&m, "bus");
    assert_eq!(ju64(&s, "dead"), 0, "{s}");
    drop(broker2);
}

// ---------------------------------------------------------------------------
// An IRC client
// ---------------------------------------------------------------------------

/// A plain IRC client in some channels.
struct Watcher {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
}

impl Watcher {
    /// Connects (again every 20 ms until the server answers), registers
    /// and joins `channels`.
    fn join(port: u16, nick: &str, channels: &[&str]) -> Watcher {
        let s = wait_until("the IRC server", ARRIVE, || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s.set_read_timeout(Some(ARRIVE)).unwrap();
        let mut w = Watcher {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
        };
        w.send(&format!("NICK {nick}"));
        w.send(&format!("USER {nick} 0 * :watcher"));
        w.until(|l| l.split(' ').nth(1) == Some("001"));
        for c in channels {
            w.send(&format!("JOIN {c}"));
            // 366: the end of the channel's names: joined.
            w.until(|l| l.split(' ').nth(1) == Some("366"));
        }
        w
    }

    fn send(&mut self, line: &str) {
        self.wr.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }

    /// The next line (PINGs answered); every line is one clean line.
    fn line(&mut self) -> String {
        loop {
            let mut buf = Vec::new();
            let n = self
                .rd
                .read_until(b'\n', &mut buf)
                .unwrap_or_else(|e| panic!("no line from the IRC server: {e}"));
            assert!(n > 0, "the server closed the watcher's connection");
            assert!(buf.len() <= 512, "a line over 512 bytes: {buf:?}");
            let line = String::from_utf8(buf).unwrap();
            assert!(line.ends_with("\r\n"), "{line:?}");
            let line = line.trim_end_matches("\r\n").to_string();
            assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
            if let Some(t) = line.strip_prefix("PING ") {
                self.send(&format!("PONG {t}"));
                continue;
            }
            return line;
        }
    }

    fn until(&mut self, f: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self.line();
            if f(&l) {
                return l;
            }
        }
    }

    /// The next PRIVMSG: (channel, text).
    fn privmsg(&mut self) -> (String, String) {
        let l = self.until(|l| l.split(' ').nth(1) == Some("PRIVMSG"));
        let mut parts = l.splitn(4, ' ');
        let (_, _, chan, text) = (
            parts.next(),
            parts.next(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap(),
        );
        (chan, text.strip_prefix(':').unwrap().to_string())
    }

    /// The lines said about build `url` (its page's URL ends each) until
    /// the one of `last`; every PRIVMSG on the way is to `#kiln` and is
    /// about a build or a worker.
    fn build_lines(&mut self, url: &str, last: &str) -> Vec<String> {
        let mut v = Vec::new();
        loop {
            let (chan, text) = self.privmsg();
            assert_eq!(chan, "#kiln", "a line elsewhere: {text:?}");
            if !text.ends_with(&format!(" {url}")) {
                continue;
            }
            let event = text
                .split(": ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("no event in {text:?}"))
                .to_string();
            v.push(event.clone());
            if event == last {
                return v;
            }
        }
    }
}

/// ngircd: one line per event of a build; a failed build whose log ends
/// with `\r\nPRIVMSG #x :evil` makes no second line (nothing arrives on
/// `#x`, where the watcher also is); the server killed and started again:
/// the master reconnects and the lines of a build that ran meanwhile
/// arrive, each once, in order.
/// A TCP relay in front of the IRC server for the master alone: while
/// shut, it closes what it accepts, so the test decides when the master
/// may reach a restarted server (after the watcher is in the channel:
/// lines sent to an empty channel are lost, by IRC's rules).
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
}

impl Gate {
    fn start(upstream: u16) -> Gate {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let o = open.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (mut from, mut to) in
                    [(c.try_clone().unwrap(), up.try_clone().unwrap()), (up, c)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Gate { port, open }
    }

    fn set(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

#[test]
fn irc_one_line_per_event_and_the_missed_lines_after_a_restart() {
    require_build_tools();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = ngircd(dir.path(), port);
    let gate = Gate::start(port);
    let mut w = Watcher::join(port, "watcher", &["#kiln", "#x"]);
    let config = format!(
        r##"
[[notify]]
name = "chat"
kind = "irc"
server = "127.0.0.1"
port = {}
nick = "kilnbot"
tls = false
channels = ["#kiln"]
retry_base_ms = 500
"##,
        gate.port
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    let _wk = m.start_worker("ni1", "noarch", "default", 1);

    let srpm = Pkg::noarch("ni-ok").build_srpm(&m.scratch);
    let id = build_id(&m.submit_wait(&srpm, &[]));
    let url = format!("{}/builds/{id}", m.api_url);
    assert_eq!(
        w.build_lines(&url, "build.published"),
        [
            "build.queued",
            "build.started",
            "build.succeeded",
            "build.published"
        ]
    );

    // What a build controls and a notice carries: its log's last lines
    // (job.failed's `log_tail`). Its name, version and release cannot hold
    // a control character (rpmbuild refuses them), and the reasons are the
    // worker's and the master's own words.
    let evil = Pkg::noarch("ni-evil")
        .build_script(
            "printf 'boom\\r\\nPRIVMSG #x :evil\\r\\n'\nprintf 'x\\rPRIVMSG #x :evil2\\n'\nexit 3",
        )
        .build_srpm(&m.scratch);
    let id2 = build_id(&m.submit(&evil, &[]));
    let b2 = m.wait_build_done(id2, BUILD_TIMEOUT);
    assert_eq!(jstr(&b2, "state"), "failed", "{b2}");
    assert!(
        m.job_log(&b2).contains("PRIVMSG #x :evil"),
        "the log has it"
    );
    let url2 = format!("{}/builds/{id2}", m.api_url);
    assert_eq!(
        w.build_lines(&url2, "build.failed"),
        [
            "build.queued",
            "build.started",
            "job.failed",
            "build.failed"
        ]
    );

    // The server goes away; a build runs meanwhile; the server comes back.
    gate.set(false);
    server.stop();
    drop(w);
    let srpm3 = Pkg::noarch("ni-later").build_srpm(&m.scratch);
    let id3 = build_id(&m.submit_wait(&srpm3, &[]));
    wait_until("the build's lines queued", ARRIVE, || {
        (ju64(&sink(&m, "chat"), "queued") >= 4).then_some(())
    });
    let server2 = ngircd(dir.path(), port);
    // In the channel before the master may reach the server again.
    let mut w = Watcher::join(port, "watcher", &["#kiln", "#x"]);
    gate.set(true);
    let url3 = format!("{}/builds/{id3}", m.api_url);
    assert_eq!(
        w.build_lines(&url3, "build.published"),
        [
            "build.queued",
            "build.started",
            "build.succeeded",
            "build.published"
        ]
    );
    let s = wait_until("every line delivered", ARRIVE, || {
        let s = sink(&m, "chat");
        (ju64(&s, "queued") == 0).then_some(s)
    });
    assert_eq!(ju64(&s, "dead"), 0, "{s}");
    // Nothing was said twice: a test event sent now is the next line.
    m.cli(&["notify", "test", "chat"]).assert_ok();
    let (chan, text) = w.privmsg();
    assert_eq!(chan, "#kiln");
    assert!(
        text.contains(": test"),
        "the next line is the test's: {text:?}"
    );
    drop(server2);
}

// ---------------------------------------------------------------------------
// E-mail
// ---------------------------------------------------------------------------

/// The messages aiosmtpd printed so far, once there are `n`.
fn messages(server: &Server, n: usize) -> Vec<String> {
    wait_until(&format!("{n} mails from {}", server.name), ARRIVE, || {
        let msgs: Vec<String> = server
            .output()
            .split("---------- MESSAGE FOLLOWS ----------\n")
            .skip(1)
            .filter_map(|m| {
                m.split_once("------------ END MESSAGE ------------")
                    .map(|x| x.0.to_string())
            })
            .collect();
        (msgs.len() >= n).then_some(msgs)
    })
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    let head = msg.split("\n\n").next().unwrap();
    head.lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .map(|l| l[name.len() + 1..].trim())
}

/// aiosmtpd: the mails of a failed build submitted with a token that has
/// an e-mail address: From, To (the fixed address and the submitter's),
/// Subject, Message-ID `<EVENT-ID@kiln>` and the build's thread.
#[test]
fn email_of_a_failed_build_to_the_submitter_threaded() {
    require_build_tools();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = aiosmtpd(dir.path(), port);
    let config = format!(
        r#"
[[notify]]
name = "mail"
kind = "email"
smtp = "127.0.0.1:{port}"
smtp_tls = "none"
from = "Kiln <kiln@example.org>"
to = ["team@example.org"]
to_submitter = true
events = ["build.queued", "build.failed"]
retry_base_ms = 200
"#
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    let _w = m.start_worker("ne1", "noarch", "default", 1);
    let token = m
        .cli(&[
            "token",
            "create",
            "--name",
            "alice",
            "--role",
            "submitter",
            "--email",
            "alice@example.org",
        ])
        .assert_ok()
        .stdout
        .trim()
        .to_string();
    let pkg = Pkg::noarch("ne-bad").build_script("echo 'ne-bad fails here'\nexit 2");
    let srpm = pkg.build_srpm(&m.scratch);
    let b = m
        .cli_token(&token, &["submit", srpm.to_str().unwrap(), "--json"])
        .assert_ok()
        .json();
    let id = build_id(&b);
    let b = m.wait_build_done(id, BUILD_TIMEOUT);
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let msgs = messages(&server, 2);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let nevr = format!("ne-bad-{}", pkg.evr());
    let mut ids = BTreeSet::new();
    let mut threads = BTreeSet::new();
    for (msg, event) in msgs.iter().zip(["build.queued", "build.failed"]) {
        assert_eq!(
            header(msg, "From"),
            Some("Kiln <kiln@example.org>"),
            "{msg}"
        );
        assert_eq!(
            header(msg, "To"),
            Some("team@example.org, alice@example.org"),
            "{msg}"
        );
        assert_eq!(header(msg, "X-Kiln-Event"), Some(event), "{msg}");
        assert_eq!(
            header(msg, "Subject"),
            Some(format!("[kiln] {nevr}: {event} on default").as_str()),
            "{msg}"
        );
        let mid = header(msg, "Message-ID").unwrap();
        let ev = mid
            .strip_prefix('<')
            .and_then(|x| x.strip_suffix("@kiln>"))
            .unwrap_or_else(|| panic!("Message-ID {mid}"));
        assert!(
            ev.len() == 24 && ev.chars().all(|c| c.is_ascii_hexdigit()),
            "the event's id: {mid}"
        );
        assert!(ids.insert(ev.to_string()), "one id per mail: {msgs:?}");
        let thread = header(msg, "In-Reply-To").unwrap();
        assert!(thread.starts_with(&format!("<build-{id}@")), "{msg}");
        assert_eq!(header(msg, "References"), Some(thread), "{msg}");
        threads.insert(thread.to_string());
    }
    assert_eq!(threads.len(), 1, "one thread per build: {msgs:?}");
    let body = msgs[1].split_once("\n\n").unwrap().1;
    for fact in [
        "Event:      build.failed",
        "State:      failed",
        "Submitter:  alice",
        &format!("{}/builds/{id}", m.api_url),
    ] {
        assert!(body.contains(fact), "{fact:?} not in\n{body}");
    }
    let s = wait_until("both mails recorded", ARRIVE, || {
        let s = sink(&m, "mail");
        (ju64(&s, "delivered") == 2).then_some(s)
    });
    assert_eq!(ju64(&s, "queued"), 0, "{s}");
    assert!(server.errors().len() < 100_000);
}
