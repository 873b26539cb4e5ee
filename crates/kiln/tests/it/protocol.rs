//! The worker protocol driven by hand, as a worker that misbehaves or gets
//! cut off would: resumable uploads, names from a listing, stale attempts.
//! A real `kiln master` process, a real mTLS session, a real SRPM.

use std::sync::Arc;

use crate::common::*;
use kiln_proto as pb;
use pb::farm_client::FarmClient;
use pb::master_msg::Msg as In;
use pb::worker_msg::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

struct Session {
    client: FarmClient<Channel>,
    tx: mpsc::Sender<pb::WorkerMsg>,
    inbound: tonic::Streaming<pb::MasterMsg>,
}

async fn connect(m: &Master, e: &Enrolled, channel: &str, running: Vec<pb::RunningJob>) -> Session {
    connect_arch(m, e, channel, "noarch", running).await
}

async fn connect_arch(
    m: &Master,
    e: &Enrolled,
    channel: &str,
    arch: &str,
    running: Vec<pb::RunningJob>,
) -> Session {
    let read = |f: &str| std::fs::read_to_string(e.dir.join(f)).expect(f);
    let cfg = kiln_core::pki::worker_client_config(
        &read("ca.crt"),
        &read("worker.crt"),
        &read("worker.key"),
    )
    .expect("client config");
    let ch = kiln_worker::conn::channel("127.0.0.1", m.worker_port, Arc::new(cfg))
        .await
        .expect("mTLS channel");
    let mut client = FarmClient::new(ch);
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::WorkerMsg {
        msg: Some(Out::Hello(pb::Hello {
            name: e.name.clone(),
            arches: vec![arch.into()],
            channels: vec![channel.into()],
            capacity: 1,
            version: "test".into(),
            running,
            backend: "hand".into(),
            draining: false,
            no_host_builds: false,
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    match inbound
        .message()
        .await
        .expect("welcome")
        .and_then(|m| m.msg)
    {
        Some(In::Welcome(_)) => {}
        other => panic!("expected welcome, got {other:?}"),
    }
    Session {
        client,
        tx,
        inbound,
    }
}

async fn next_assign(s: &mut Session) -> pb::Assign {
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(30), s.inbound.message())
            .await
            .expect("an assignment in time")
            .expect("stream")
            .expect("message");
        if let Some(In::Assign(a)) = m.msg {
            return a;
        }
    }
}

async fn next_ack(s: &mut Session) -> pb::FinishAck {
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(30), s.inbound.message())
            .await
            .expect("an ack in time")
            .expect("stream")
            .expect("message");
        if let Some(In::FinishAck(a)) = m.msg {
            return a;
        }
    }
}

/// What the master has of `k`: (bytes, complete).
async fn status(s: &mut Session, k: &pb::UploadKey) -> (u64, bool) {
    let st = s
        .client
        .upload_status(k.clone())
        .await
        .unwrap()
        .into_inner();
    (st.have, st.complete)
}

/// Tell the master the worker took the job.
async fn accept(s: &Session, a: &pb::Assign) {
    s.tx.send(pb::WorkerMsg {
        msg: Some(Out::Accepted(pb::Accepted {
            job_id: a.job_id,
            attempt: a.attempt,
        })),
    })
    .await
    .unwrap();
}

/// The job of `a` as a worker reports it running.
fn held(a: &pb::Assign) -> pb::RunningJob {
    pb::RunningJob {
        job_id: a.job_id,
        attempt: a.attempt,
    }
}

fn key(a: &pb::Assign, name: &str, data: &[u8]) -> pb::UploadKey {
    pb::UploadKey {
        job_id: a.job_id,
        attempt: a.attempt,
        name: name.into(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
    }
}

async fn upload(
    c: &mut FarmClient<Channel>,
    key: pb::UploadKey,
    offset: u64,
    data: &[u8],
) -> Result<pb::UploadState, tonic::Status> {
    let chunks: Vec<pb::UploadChunk> = data
        .chunks(64 * 1024)
        .enumerate()
        .map(|(i, d)| pb::UploadChunk {
            key: (i == 0).then(|| key.clone()),
            offset: if i == 0 { offset } else { 0 },
            data: d.to_vec(),
        })
        .collect();
    c.upload(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

#[test]
fn an_interrupted_upload_resumes_and_bad_names_are_refused() {
    require_build_tools();
    let m = Master::start();
    let e = m.enroll("hand1");
    let srpm = Pkg::noarch(&format!("proto{}", unique())).build_srpm(&m.scratch);
    let build = build_id(&m.submit(&srpm, &["--channel", "hand"]));
    runtime().block_on(async {
        let mut s = connect(&m, &e, "hand", vec![]).await;
        let a = next_assign(&mut s).await;
        assert_eq!(a.build_id, build);

        // Half an artifact, then the stream ends: the master keeps the half.
        let data = random_bytes(300 * 1024);
        let k = key(&a, "big.log", &data);
        let st = upload(&mut s.client, k.clone(), 0, &data[..100 * 1024])
            .await
            .unwrap();
        assert_eq!((st.have, st.complete), (100 * 1024, false));
        assert_eq!(
            status(&mut s, &k).await,
            (100 * 1024, false),
            "status after the break"
        );
        // Resuming past what the master has is refused with where to resume.
        let err = upload(&mut s.client, k.clone(), 200 * 1024, &data[200 * 1024..])
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("102400"), "{}", err.message());
        // The rest, from where it stopped: complete and checked.
        let st = upload(&mut s.client, k.clone(), 100 * 1024, &data[100 * 1024..])
            .await
            .unwrap();
        assert_eq!((st.have, st.complete), (300 * 1024, true));
        assert_eq!(status(&mut s, &k).await, (300 * 1024, true));

        // A wrong sha256 is refused and nothing is kept.
        let mut bad = key(&a, "bad.log", b"hello");
        bad.sha256 = sha256_hex(b"something else");
        let err = upload(&mut s.client, bad.clone(), 0, b"hello")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
        assert_eq!(status(&mut s, &bad).await, (0, false));

        // Names with a slash, "..", or a control character never touch a path.
        for name in ["../escape.log", "a/b.log", "x\n.log", "..", ".hidden"] {
            let err = upload(&mut s.client, key(&a, name, b"x"), 0, b"x")
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{name:?}: {err:?}"
            );
            let err = s
                .client
                .upload_status(key(&a, name, b"x"))
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{name:?}: {err:?}"
            );
        }
        let outside: Vec<_> = files_under(m.data.parent().unwrap())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("escape"))
            .collect();
        assert!(outside.is_empty(), "{outside:?}");

        // A listing that names a file with a path is refused: the job fails
        // with a clear message and nothing is filed.
        let finished = pb::Finished {
            canceled: false,
            source: None,
            job_id: a.job_id,
            attempt: a.attempt,
            success: true,
            message: String::new(),
            artifacts: vec![pb::Artifact {
                name: "../../escape.rpm".into(),
                kind: "rpm".into(),
                size: 1,
                sha256: sha256_hex(b"x"),
                nevra: String::new(),
                inline: vec![],
            }],
        };
        s.tx.send(pb::WorkerMsg {
            msg: Some(Out::Finished(finished)),
        })
        .await
        .unwrap();
        let ack = next_ack(&mut s).await;
        assert!(ack.accepted, "the failure is recorded: {ack:?}");
    });
    let b = m.wait_build_done(build, std::time::Duration::from_secs(30));
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let job = only_job(&b);
    let msg = jstr(&job, "message");
    assert!(msg.contains("artifact name refused"), "{msg}");
    assert!(jarr(&b, "artifacts").is_empty(), "{b}");
    assert!(!incoming_dir(&m, build, "noarch").join("big.log").exists());
    // What the refused result had staged is gone.
    let staged = dir_names(&m.data.join("uploads"));
    assert!(staged.is_empty(), "left in uploads/: {staged:?}");
}

#[test]
fn a_job_held_past_its_timeout_is_failed_by_the_master() {
    require_build_tools();
    // The worker's own timeout would end the build first; this worker
    // ignores it and keeps heartbeating, as a broken or hostile one would.
    let m = Master::start_with(
        MasterOpts::default()
            .arg("--job-timeout-secs", "2")
            .arg("--lease-secs", "2"),
    );
    let e = m.enroll("hand-slow");
    let srpm = Pkg::noarch(&format!("proto{}", unique())).build_srpm(&m.scratch);
    let build = build_id(&m.submit(&srpm, &["--channel", "hand"]));
    let t0 = std::time::Instant::now();
    let cancel = runtime().block_on(async {
        let mut s = connect(&m, &e, "hand", vec![]).await;
        let a = next_assign(&mut s).await;
        assert_eq!(a.build_id, build);
        accept(&s, &a).await;
        let running = vec![held(&a)];
        let mut beat = tokio::time::interval(std::time::Duration::from_millis(300));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    s.tx.send(pb::WorkerMsg {
                        msg: Some(Out::Heartbeat(pb::Heartbeat { running: running.clone() })),
                    })
                    .await
                    .unwrap();
                }
                m = tokio::time::timeout(std::time::Duration::from_secs(30), s.inbound.message()) => {
                    let m = m.expect("a cancel in time").expect("stream").expect("message");
                    if let Some(In::Cancel(c)) = m.msg {
                        break c;
                    }
                }
            }
        }
    });
    assert!(cancel.reason.contains("timed out"), "{cancel:?}");
    let b = m.wait_build_done(build, std::time::Duration::from_secs(30));
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let msg = jstr(&only_job(&b), "message");
    assert!(msg.contains("timed out after 2 s"), "{msg}");
    // Timeout (2 s) plus one lease of grace (2 s), not much more.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn an_attempt_may_stage_only_so_much() {
    require_build_tools();
    let m = Master::start_with(
        MasterOpts::default()
            .arg("--max-job-files", "2")
            .arg("--max-job-upload", "1000"),
    );
    let e = m.enroll("hand-greedy");
    let srpm = Pkg::noarch(&format!("proto{}", unique())).build_srpm(&m.scratch);
    m.submit(&srpm, &["--channel", "hand"]);
    runtime().block_on(async {
        let mut s = connect(&m, &e, "hand", vec![]).await;
        let a = next_assign(&mut s).await;
        for name in ["a.log", "b.log"] {
            upload(&mut s.client, key(&a, name, b"x"), 0, b"x")
                .await
                .unwrap();
        }
        // The same name again is no new file.
        upload(&mut s.client, key(&a, "a.log", b"y"), 0, b"y")
            .await
            .unwrap();
        let err = upload(&mut s.client, key(&a, "c.log", b"x"), 0, b"x")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
        assert!(err.message().contains("max_job_files"), "{err:?}");
        let big = random_bytes(1200);
        let err = upload(&mut s.client, key(&a, "b.log", &big), 0, &big)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
        assert!(err.message().contains("max_job_upload"), "{err:?}");
    });
}

#[test]
fn a_late_result_from_an_old_attempt_is_refused() {
    require_build_tools();
    let m = Master::start();
    let e = m.enroll("hand2");
    let srpm = Pkg::noarch(&format!("proto{}", unique())).build_srpm(&m.scratch);
    let build = build_id(&m.submit(&srpm, &["--channel", "hand2"]));
    runtime().block_on(async {
        let mut s = connect(&m, &e, "hand2", vec![]).await;
        let first = next_assign(&mut s).await;
        assert_eq!(first.attempt, 1);
        drop(s);
        // Back without the job: the master re-queues it as attempt 2 and,
        // this being the only worker of the channel, hands it back.
        let mut s = connect(&m, &e, "hand2", vec![]).await;
        let second = next_assign(&mut s).await;
        assert_eq!((second.job_id, second.attempt), (first.job_id, 2));
        // Uploads of the old attempt are refused…
        let err = upload(&mut s.client, key(&first, "old.log", b"x"), 0, b"x")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("stale"), "{}", err.message());
        // …and so is its result.
        let late = pb::Finished {
            canceled: false,
            source: None,
            job_id: first.job_id,
            attempt: 1,
            success: true,
            message: String::new(),
            artifacts: vec![],
        };
        s.tx.send(pb::WorkerMsg {
            msg: Some(Out::Finished(late)),
        })
        .await
        .unwrap();
        let ack = next_ack(&mut s).await;
        assert!(!ack.accepted, "{ack:?}");
        assert!(ack.message.contains("stale"), "{}", ack.message);
    });
    let b = m.build(build);
    let job = only_job(&b);
    assert_eq!(ju64(&job, "attempt"), 2, "{b}");
    assert_ne!(jstr(&b, "state"), "succeeded", "{b}");
}

/// The live log lost every chunk (say the session dropped during the
/// build): the complete build.log sent with the result becomes the job's log.
#[test]
fn the_result_log_completes_a_live_log_that_missed_chunks() {
    use kiln_core::listing::{Listing, ListingEntry};
    use kiln_core::state::ArtifactKind;
    require_build_tools();
    let m = Master::start();
    let e = m.enroll("hand3");
    let srpm = Pkg::noarch(&format!("proto{}", unique())).build_srpm(&m.scratch);
    let build = build_id(&m.submit(&srpm, &["--channel", "hand3"]));
    let log_text = b"line one of a log the master never saw live\nline two\n".to_vec();
    runtime().block_on(async {
        let mut s = connect(&m, &e, "hand3", vec![]).await;
        let a = next_assign(&mut s).await;
        let entry = ListingEntry {
            name: "build.log".into(),
            kind: ArtifactKind::Log,
            size: log_text.len() as u64,
            sha256: sha256_hex(&log_text),
            nevra: None,
        };
        let listing = serde_json::to_vec(&Listing {
            job: a.job_id,
            attempt: a.attempt,
            arch: a.arch.clone(),
            artifacts: vec![entry.clone()],
        })
        .unwrap();
        let art = |name: &str, kind: &str, data: &[u8]| pb::Artifact {
            name: name.into(),
            kind: kind.into(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
            nevra: String::new(),
            inline: data.to_vec(),
        };
        let finished = pb::Finished {
            canceled: false,
            source: None,
            job_id: a.job_id,
            attempt: a.attempt,
            success: false,
            message: "the build failed".into(),
            artifacts: vec![
                art("build.log", "log", &log_text),
                art("listing.json", "listing", &listing),
            ],
        };
        s.tx.send(pb::WorkerMsg {
            msg: Some(Out::Finished(finished)),
        })
        .await
        .unwrap();
        assert!(next_ack(&mut s).await.accepted);
    });
    let b = m.wait_build_done(build, std::time::Duration::from_secs(30));
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let shown = m.job_log(&b);
    assert_eq!(shown.as_bytes(), &log_text[..]);
}

/// An image job's file that the master had filed under `images/` when it
/// died, before it recorded the result (the state a crash between the two
/// leaves, made here by moving the staged file the way the intake does):
/// after the restart, the worker that still holds the job asks for the
/// file's state and is told it is complete, so it is not uploaded again; a
/// file never uploaded is still wanted.
#[test]
fn an_image_file_filed_before_a_crash_is_not_uploaded_again() {
    let mut config =
        crate::common::config_toml(&[], &[crate::common::target_toml("t", &["x86_64"], &[])]);
    config += "\n[[image]]\nname = \"hand-img\"\ntarget = \"t\"\n\
               repos = [\"http://127.0.0.1:9/\"]\narches = [\"x86_64\"]\n\
               packages = [\"bash\"]\nformats = [\"tar.zst\"]\n";
    let mut m = Master::start_with(MasterOpts::default().config(&config));
    let e = m.enroll("hand-img-worker");
    let b = m.cli_json(&["image", "build", "hand-img", "--json"]);
    let build = build_id(&b);
    let data = random_bytes(200 * 1024);
    let (a, k) = runtime().block_on(async {
        let mut s = connect_arch(&m, &e, "default", "x86_64", vec![]).await;
        let a = next_assign(&mut s).await;
        assert_eq!(a.build_id, build);
        accept(&s, &a).await;
        let k = key(&a, "hand-img.tar.zst", &data);
        let st = upload(&mut s.client, k.clone(), 0, &data).await.unwrap();
        assert!(st.complete, "{st:?}");
        (a, k)
    });
    m.kill();
    let staged = m
        .data
        .join("uploads")
        .join(format!("{}-{}-{}", a.job_id, a.attempt, k.name));
    assert!(staged.exists(), "{} not staged", staged.display());
    let filed = m
        .data
        .join("images/hand-img")
        .join(build.to_string())
        .join("x86_64");
    std::fs::create_dir_all(&filed).unwrap();
    std::fs::rename(&staged, filed.join(&k.name)).unwrap();
    m.restart();
    runtime().block_on(async {
        let running = vec![held(&a)];
        let mut s = connect_arch(&m, &e, "default", "x86_64", running).await;
        assert_eq!(
            status(&mut s, &k).await,
            (k.size, true),
            "a filed image file is not wanted again"
        );
        let other = key(&a, "hand-img.ext4", b"never sent");
        assert_eq!(status(&mut s, &other).await, (0, false));
    });
}
