//! The MQTT remote trigger (issue 9) against a real `mosquitto` started by
//! the test on a loopback port: a master configured with `[mqtt]` starts
//! while the broker is down, a signed trigger builds, unsigned, forged and
//! malformed ones start nothing, a redelivered id starts nothing new, and
//! after the broker is killed and started again on the same port (knowing
//! nothing: no persistence) a new trigger is still taken, which only a
//! master that subscribes again after reconnecting can do.
//!
//! Goes in `crates/kiln/tests/it/mqtt_trigger.rs`, with `mod mqtt_trigger;`
//! in `main.rs`. It needs `mosquitto` (Debian: `apt-get install mosquitto`;
//! add it to `scripts/deps.sh`).

use crate::common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The broker's executable (often in /usr/sbin, outside a user's PATH).
fn mosquitto_bin() -> PathBuf {
    find_tool("mosquitto")
        .or_else(|| {
            ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "required tool `mosquitto` was not found; the MQTT tests need it and never \
                 skip (on Debian 12: apt-get install mosquitto)"
            )
        })
}

/// A `mosquitto` on a fixed loopback port, without persistence; stopped by
/// PID (its `Proc`) when dropped.
struct Mosquitto {
    proc: Option<Proc>,
    port: u16,
    conf: PathBuf,
    dir: PathBuf,
    starts: u32,
}

impl Mosquitto {
    fn new(port: u16, dir: &Path) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        Mosquitto {
            proc: None,
            port,
            conf,
            dir: dir.to_path_buf(),
            starts: 0,
        }
    }

    /// Start it (again, on the same port) and wait until it listens.
    fn start(&mut self) {
        assert!(self.proc.is_none(), "mosquitto is running already");
        let bin = mosquitto_bin();
        for attempt in 1..=20 {
            self.starts += 1;
            let mut cmd = Command::new(&bin);
            cmd.arg("-c").arg(&self.conf);
            let mut p = Proc::spawn(
                cmd,
                &self.dir.join(format!("mosquitto-{}.stderr", self.starts)),
                "mosquitto",
            );
            let up = wait_for(Duration::from_secs(10), || {
                if p.try_status().is_some() {
                    return Some(false);
                }
                TcpStream::connect(("127.0.0.1", self.port))
                    .ok()
                    .map(|_| true)
            });
            if up == Some(true) {
                self.proc = Some(p);
                return;
            }
            // The port may not be free again yet.
            let d = p.diagnostics();
            drop(p);
            assert!(
                attempt < 20,
                "mosquitto did not start on {}:\n{d}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// Publish one message at QoS 1 and wait for the broker's PUBACK: MQTT
/// 3.1.1 by hand (CONNECT, PUBLISH, DISCONNECT), so the test needs no
/// client library.
fn publish(port: u16, topic: &str, payload: &[u8]) {
    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![kind];
        let mut n = body.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            p.push(b);
            if n == 0 {
                break;
            }
        }
        p.extend_from_slice(body);
        p
    }
    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(s.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let client = format!(
        "kiln-it-pub-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Protocol "MQTT" level 4, clean session, keep-alive 30 s.
    let mut connect = string(b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 30]);
    connect.extend(string(client.as_bytes()));
    s.write_all(&packet(0x10, &connect)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK");
    // PUBLISH, QoS 1, packet id 1.
    let mut publish = string(topic.as_bytes());
    publish.extend_from_slice(&1u16.to_be_bytes());
    publish.extend_from_slice(payload);
    s.write_all(&packet(0x32, &publish)).unwrap();
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x40, 2, 0, 1], "PUBACK");
    s.write_all(&[0xe0, 0]).unwrap();
}

/// A noarch package whose spec is in the upstream repository, with its
/// content as Source0's tarball.
fn spec(name: &str) -> String {
    format!(
        "Name: {name}\nVersion: 1.0\nRelease: 1%{{?dist}}\nSummary: built on an MQTT trigger\n\
         License: MIT\nBuildArch: noarch\nSource0: %{{name}}-%{{version}}.tar.gz\n\n\
         %description\nBuilt by Kiln on an MQTT trigger.\n\n%prep\n%setup -q\n\n%build\n\n\
         %install\nmkdir -p %{{buildroot}}/usr/share/{name}\n\
         cp hello.txt %{{buildroot}}/usr/share/{name}/\n\n%files\n/usr/share/{name}\n"
    )
}

/// How many lines of the master's log contain `what`.
fn log_count(m: &Master, what: &str) -> usize {
    m.stderr_text().lines().filter(|l| l.contains(what)).count()
}

fn wait_log(m: &Master, what: &str, n: usize, timeout: Duration) {
    wait_until(
        &format!("{n} line(s) {what:?} in the master's log"),
        timeout,
        || (log_count(m, what) >= n).then_some(()),
    );
}

fn project_builds(m: &Master, project: &str) -> Vec<Value> {
    m.builds()
        .into_iter()
        .filter(|b| {
            b.get("source")
                .and_then(|s| s.get("project"))
                .and_then(Value::as_str)
                == Some(project)
        })
        .collect()
}

#[test]
fn signed_mqtt_triggers_build_the_rest_is_ignored_and_a_broker_restart_is_survived() {
    require_build_tools();
    mosquitto_bin();
    let port = closed_port();
    let topic = "kiln-it/trigger";
    // The broker is down when the master starts: the master starts anyway.
    let mut m = Master::start_with(MasterOpts::default().config(&format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"kiln-it-{}-{port}\"\n\
         prefix = \"kiln-it\"\nkeep_alive_secs = 5\n",
        std::process::id()
    )));
    assert!(m.builds().is_empty());
    wait_log(&m, "mqtt: cannot connect to", 1, Duration::from_secs(20));
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);

    let mut up = GitRepo::init(&m.scratch.join("repos").join("kg-mqtt"));
    up.commit(
        &[("kg-mqtt.spec", &spec("kg-mqtt")), ("hello.txt", "hello\n")],
        "first",
    );
    let secret = "s3cret-for-kg-mqtt";
    let secret_file = m.scratch.join("kg-mqtt.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    m.cli(&[
        "project",
        "add",
        "kg-mqtt",
        "--target",
        "default",
        "--upstream",
        &format!("{}#main", up.url()),
        "--spec",
        "kg-mqtt.spec",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ])
    .assert_ok();

    let scratch = m.scratch.clone();
    let mut broker = Mosquitto::new(port, &scratch);
    broker.start();
    wait_log(
        &m,
        &format!("mqtt: subscribed to {topic}"),
        1,
        Duration::from_secs(30),
    );

    // Unsigned, forged, tampered, for an unknown project, not JSON, a
    // field too many, too large: each is logged and starts nothing.
    let signed_main =
        kiln_master::mqtt::trigger_payload(secret, "kg-mqtt", Some("main"), None, "x-5");
    let bad: Vec<Vec<u8>> = vec![
        br#"{"project":"kg-mqtt","ref":"main","id":"x-1"}"#.to_vec(),
        kiln_master::mqtt::trigger_payload("wrong", "kg-mqtt", Some("main"), None, "x-2")
            .into_bytes(),
        kiln_master::mqtt::trigger_payload(secret, "kg-other", None, None, "x-3").into_bytes(),
        b"build kg-mqtt please".to_vec(),
        signed_main.replace("\"main\"", "\"evil\"").into_bytes(),
        format!(
            r#"{{"project":"kg-mqtt","id":"x-6","hmac":"{}","sender":"me"}}"#,
            kiln_master::mqtt::sign_trigger(secret, "kg-mqtt", "", "", "x-6")
        )
        .into_bytes(),
        {
            let mut big = br#"{"project":"kg-mqtt","id":"x-7","ref":""#.to_vec();
            big.resize(70 << 10, b'a');
            big.extend_from_slice(br#""}"#);
            big
        },
    ];
    for payload in &bad {
        publish(port, topic, payload);
    }
    wait_log(
        &m,
        "mqtt: trigger ignored",
        bad.len(),
        Duration::from_secs(20),
    );
    let log = m.stderr_text();
    for what in [
        "delivery \"x-1\": not signed",
        "delivery \"x-2\": bad signature for project \"kg-mqtt\"",
        "delivery \"x-3\": no project \"kg-other\" with a secret",
        "not a trigger: not JSON",
        "delivery \"x-5\": bad signature for project \"kg-mqtt\"",
        "delivery \"x-6\": not a trigger: unknown field `sender`",
        "over the 65536-byte limit",
    ] {
        assert!(
            log.contains(what),
            "no {what:?} in the master's log:\n{}",
            tail_lines(&log, 40)
        );
    }
    assert!(
        m.builds().is_empty(),
        "a refused trigger queued something: {:?}",
        m.builds()
    );

    // A signed trigger builds.
    let payload =
        kiln_master::mqtt::trigger_payload(secret, "kg-mqtt", Some("main"), Some("ci"), "t-1");
    publish(port, topic, payload.as_bytes());
    let id = wait_until("the triggered build", Duration::from_secs(30), || {
        project_builds(&m, "kg-mqtt").first().map(build_id)
    });
    let b = m.wait_build_succeeded(id);
    let s = &b["source"];
    assert_eq!(jstr(s, "trigger"), "mqtt", "{b}");
    assert_eq!(jstr(s, "delivery"), "t-1", "{b}");
    assert_eq!(jstr(s, "sender"), format!("mqtt:{topic}"), "{b}");
    assert_eq!(jstr(s, "ref"), "main", "{b}");
    assert_eq!(jstr(s, "mode"), "ci", "{b}");
    assert_eq!(jstr(s, "upstream_commit"), up.head(), "{b}");

    // The same delivery again: nothing new.
    publish(port, topic, payload.as_bytes());
    wait_log(
        &m,
        "\"t-1\" of project \"kg-mqtt\" was seen before",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(m.builds().len(), 1, "{:?}", m.builds());

    // The broker goes away and comes back on the same port, knowing nothing
    // (no persistence, so no session and no subscription): the master
    // reconnects and subscribes again.
    broker.stop();
    wait_log(
        &m,
        "mqtt: lost the connection to",
        1,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    broker.start();
    wait_log(
        &m,
        &format!("mqtt: subscribed to {topic}"),
        2,
        Duration::from_secs(60),
    );
    up.commit(&[("hello.txt", "hello again\n")], "second");
    let payload = kiln_master::mqtt::trigger_payload(secret, "kg-mqtt", None, None, "t-2");
    publish(port, topic, payload.as_bytes());
    let id2 = wait_until(
        "the build triggered after the restart",
        Duration::from_secs(30),
        || {
            project_builds(&m, "kg-mqtt")
                .iter()
                .map(build_id)
                .find(|b| *b != id)
        },
    );
    let b2 = m.wait_build_succeeded(id2);
    assert_eq!(jstr(&b2["source"], "delivery"), "t-2", "{b2}");
    assert_eq!(jstr(&b2["source"], "upstream_commit"), up.head(), "{b2}");
    assert!(m.proc().try_status().is_none(), "the master died");
}
