//! MQTT against a real `mosquitto` (with persistence, so a clean stop and
//! start keeps the subscriber's session and what was queued for it).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_notify::mqtt::{Mqtt, MqttConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::common::{certs, free_port, notice, tool, wait_port, Server};

fn mosquitto(dir: &Path, port: u16) -> Server {
    mosquitto_with(
        dir,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
}

/// With `listeners` (and persistence in `dir`, logs to stderr).
fn mosquitto_with(dir: &Path, listeners: &str) -> Server {
    let bin = tool(
        "mosquitto",
        &["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"],
    );
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "persistence true\npersistence_location {}/\nlog_type all\nlog_dest stderr\n\
             {listeners}",
            dir.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    Server::start("mosquitto", cmd, dir)
}

#[derive(Debug)]
enum Got {
    Subscribed,
    Message {
        topic: String,
        json: serde_json::Value,
        retain: bool,
        qos: QoS,
    },
}

/// A subscriber (persistent session `id`, QoS 1 on `filter`, subscribed
/// again after every connection, reconnecting every 100 ms).
fn subscriber(
    port: u16,
    id: &str,
    filter: &str,
) -> (mpsc::UnboundedReceiver<Got>, tokio::task::JoinHandle<()>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 10);
    let (tx, rx) = mpsc::unbounded_channel();
    let filter = filter.to_string();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(Got::Subscribed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Got::Message {
                        topic: p.topic.clone(),
                        json: serde_json::from_slice(&p.payload).unwrap(),
                        retain: p.retain,
                        qos: p.qos,
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (rx, task)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Got>) -> Got {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("nothing received within 20 s")
        .expect("subscriber gone")
}

async fn next_message(
    rx: &mut mpsc::UnboundedReceiver<Got>,
) -> (String, serde_json::Value, bool, QoS) {
    loop {
        if let Got::Message {
            topic,
            json,
            retain,
            qos,
        } = next(rx).await
        {
            return (topic, json, retain, qos);
        }
    }
}

fn config(port: u16, retain_last: bool) -> MqttConfig {
    MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        prefix: "kiln".into(),
        retain_last,
        ca_file: None,
        username: None,
        password: None,
        cert_file: None,
        key_file: None,
    }
}

async fn deliver(m: &Mqtt, n: &kiln_notify::Notice) -> String {
    tokio::time::timeout(Duration::from_secs(30), m.deliver(n))
        .await
        .expect("deliver did not finish within 30 s")
        .unwrap()
}

#[tokio::test]
async fn mqtt_topics_json_and_puback() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = mosquitto(dir.path(), port);
    wait_port(port).await;
    let (mut rx, sub) = subscriber(port, "test-sub-1", "kiln/#");
    assert!(matches!(next(&mut rx).await, Got::Subscribed));

    let mqtt = Mqtt::start_named(config(port, true), "sink-1").unwrap();
    let mut evil = notice("e4", "build.failed");
    evil.target = Some("c9/x+#\0y".into());
    let mut job = notice("e5", "job.failed");
    job.arch = Some("x86_64".into());
    job.log_tail = vec!["error: bad".into()];
    let mut worker = notice("e6", "worker.lost");
    worker.worker = Some("w1".into());
    let mut test = notice("e7", "test");
    test.target = None;
    let sent = [
        (notice("e1", "build.queued"), "kiln/builds/c9/queued"),
        (notice("e2", "build.started"), "kiln/builds/c9/started"),
        (notice("e3", "build.failed"), "kiln/builds/c9/failed"),
        (evil, "kiln/builds/c9_x___y/failed"),
        (job, "kiln/jobs/x86_64/failed"),
        (worker, "kiln/workers/w1/lost"),
        (test, "kiln/test"),
    ];
    for (n, topic) in &sent {
        let answer = deliver(&mqtt, n).await;
        assert_eq!(answer, format!("PUBACK from the broker: {topic}"));
    }
    // In order, each once, with the documented JSON; with retain_last each
    // build event also went to the package's retained topic.
    let mut main = Vec::new();
    let mut retained = Vec::new();
    while main.len() < sent.len() || retained.len() < 4 {
        let (topic, json, retain, qos) = next_message(&mut rx).await;
        assert_eq!(qos, QoS::AtLeastOnce, "{topic}");
        if topic.starts_with("kiln/packages/") {
            retained.push((topic, json));
        } else {
            assert!(!retain, "{topic}");
            main.push((topic, json));
        }
    }
    for ((n, topic), (got_topic, json)) in sent.iter().zip(&main) {
        assert_eq!(got_topic, topic);
        assert_eq!(json["id"], n.id.as_str());
        assert_eq!(json["event"], n.event.as_str());
        assert_eq!(json["build"], 42);
        assert_eq!(json["package"], "bash");
        if let Some(s) = &n.state {
            assert_eq!(json["state"], s.as_str());
        }
        assert_eq!(json["target"].as_str(), n.target.as_deref());
    }
    assert_eq!(main[4].1["log_tail"][0], "error: bad");
    let ids: Vec<&str> = retained
        .iter()
        .map(|(_, j)| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e2", "e3", "e4"]);
    assert_eq!(retained[0].0, "kiln/packages/c9/bash");
    assert_eq!(retained[3].0, "kiln/packages/c9_x___y/bash");

    // A new subscriber gets the last state of the package, retained.
    let (mut rx2, sub2) = subscriber(port, "test-sub-2", "kiln/packages/c9/+");
    let (topic, json, retain, _) = next_message(&mut rx2).await;
    assert_eq!(topic, "kiln/packages/c9/bash");
    assert!(retain);
    assert_eq!(json["state"], "failed");
    assert_eq!(json["id"], "e3");
    sub.abort();
    sub2.abort();
}

#[tokio::test]
async fn mqtt_broker_restart_pending_deliveries_complete_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = mosquitto(dir.path(), port);
    wait_port(port).await;
    let (mut rx, sub) = subscriber(port, "test-sub-3", "kiln/#");
    assert!(matches!(next(&mut rx).await, Got::Subscribed));
    let mqtt = std::sync::Arc::new(Mqtt::start_named(config(port, false), "sink-2").unwrap());
    deliver(&mqtt, &notice("r1", "build.queued")).await;

    // The broker stops (cleanly: its persistence keeps the subscriber's
    // session); two deliveries start while it is away.
    broker.stop();
    let pending: Vec<_> = ["r2", "r3"]
        .iter()
        .map(|id| {
            let m = mqtt.clone();
            let n = notice(id, "build.started");
            tokio::spawn(async move { deliver(&m, &n).await })
        })
        .collect();
    let broker2 = mosquitto(dir.path(), port);
    wait_port(port).await;
    for p in pending {
        p.await.unwrap();
    }
    deliver(&mqtt, &notice("r4", "build.succeeded")).await;
    deliver(&mqtt, &notice("r5", "build.published")).await;

    // Every id once; r5 is the last one sent, so once it is here every
    // earlier copy would be too.
    let mut seen = Vec::new();
    loop {
        let (_, json, _, _) = next_message(&mut rx).await;
        let id = json["id"].as_str().unwrap().to_string();
        seen.push(id.clone());
        if id == "r5" {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["r1", "r2", "r3", "r4", "r5"], "{}", broker2.errors());
    sub.abort();
}

#[tokio::test]
async fn mqtt_tls_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certs(dir.path());
    let passwd = dir.path().join("passwd");
    let st = Command::new(tool("mosquitto_passwd", &["/usr/bin/mosquitto_passwd"]))
        .arg("-b")
        .arg("-c")
        .arg(&passwd)
        .args(["kiln", "s3cret"])
        .status()
        .unwrap();
    assert!(st.success());
    let (port, tls_port) = (free_port(), free_port());
    let _broker = mosquitto_with(
        dir.path(),
        &format!(
            "per_listener_settings true\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n\
             allow_anonymous false\npassword_file {}\n",
            cert.display(),
            key.display(),
            passwd.display()
        ),
    );
    wait_port(port).await;
    wait_port(tls_port).await;
    let (mut rx, sub) = subscriber(port, "test-sub-4", "kiln/#");
    assert!(matches!(next(&mut rx).await, Got::Subscribed));

    let cfg = MqttConfig {
        url: format!("mqtts://127.0.0.1:{tls_port}"),
        ca_file: Some(ca),
        username: Some("kiln".into()),
        password: Some("s3cret".into()),
        ..config(0, false)
    };
    // A wrong password: refused, and said so.
    let wrong = Mqtt::start_named(
        MqttConfig {
            password: Some("wrong".into()),
            ..cfg.clone()
        },
        "wrong",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let why = loop {
        if let Some(e) = wrong.last_error() {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failure reported in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(why.contains("refused"), "{why}");
    drop(wrong);

    let mqtt = Mqtt::start_named(cfg, "tls").unwrap();
    deliver(&mqtt, &notice("t1", "build.succeeded")).await;
    let (topic, json, _, _) = next_message(&mut rx).await;
    assert_eq!(topic, "kiln/builds/c9/succeeded");
    assert_eq!(json["id"], "t1");
    sub.abort();
}
