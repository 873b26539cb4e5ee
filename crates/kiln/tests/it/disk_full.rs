//! A full disk on the master, seen by a client: an SRPM upload that does not
//! fit is answered "no space left on device" (507), nothing half-written is
//! kept, and once there is room the same submit goes through and builds.
//! (A worker's artifact upload refused for a full disk, and retried on the
//! same session, is in `sandbox`.)
//!
//! How the small filesystem is made: the master's data directory is a tmpfs
//! the test mounts (`common::Tmpfs`: it needs root, as CI runs; without it
//! the test fails, it does not skip), and whose size it changes.

use crate::common::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn an_upload_past_the_free_space_is_refused_as_such_and_nothing_is_kept() {
    require_build_tools();
    let mut m = Master::start();
    m.kill();
    // 16 MiB: the database, the CA and a little more; the SRPM is 24 MiB.
    let disk = Tmpfs::mount(&m.data, 16 << 20);
    m.restart();
    let _w = m.start_worker("w-full", "x86_64,noarch", "default", 1);
    let srpm = Pkg::noarch("full-upload")
        .big_source(24 << 20)
        .build_srpm(&m.scratch);

    let out = m.cli_timeout(
        &["submit", srpm.to_str().unwrap()],
        Duration::from_secs(120),
    );
    out.assert_error_line(&["no space left on device"]);
    assert!(
        dir_names(&m.data.join("tmp")).is_empty(),
        "tmp/ kept a part"
    );
    assert!(
        dir_names(&m.data.join("cas")).is_empty(),
        "cas/ kept a part"
    );
    assert!(m.builds().is_empty(), "a build was recorded");

    // Room again: the same submit goes through and builds.
    disk.resize(256 << 20);
    let b = m.submit_wait(&srpm, &[]);
    check_artifacts_on_disk(&m, &b);
}

/// Fill the filesystem of `dir` to the last byte with one file.
fn fill_up(dir: &std::path::Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    for _ in 0..64 {
        if f.write_all(&chunk[..512]).is_err() {
            break;
        }
    }
    p
}

#[test]
fn a_submit_the_database_cannot_commit_is_a_503_and_nothing_half_stored() {
    require_build_tools();
    let mut m = Master::start();
    m.kill();
    let _disk = Tmpfs::mount(&m.data, 64 << 20);
    m.restart();
    // The SRPM is in the master's store (nobody builds it: no worker).
    let srpm = Pkg::noarch("full-db").build_srpm(&m.scratch);
    build_id(&m.submit(&srpm, &["--scratch"]));
    let before = m.builds().len();
    // The disk is full: the next build's insert cannot commit.
    let filler = fill_up(&m.data);
    let out = m.cli(&["submit", srpm.to_str().unwrap(), "--scratch"]);
    let line = out.assert_error_line(&["could not commit"]);
    assert!(!line.contains("bad request"), "{line}");
    std::fs::remove_file(&filler).unwrap();
    // Nothing of it was kept, and the master goes on.
    assert_eq!(m.builds().len(), before);
    build_id(&m.submit(&srpm, &["--scratch"]));
    assert_eq!(m.builds().len(), before + 1);
}

/// The master cannot file a result (no inode left on its disk when the
/// artifacts arrive): the job is not failed for the master's fault; the
/// worker is told to report again, and does until the master takes it.
#[test]
fn a_result_the_master_cannot_file_is_taken_later_not_failed() {
    require_build_tools();
    let mut m = Master::start();
    m.kill();
    let _disk = Tmpfs::mount_with(&m.data, "size=256m,nr_inodes=4000");
    m.restart();
    let _w = m.start_worker("w-inodes", "x86_64,noarch", "default", 1);
    let srpm = Pkg::noarch("full-inodes").sleep(3).build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    m.wait_job_running(id);
    // Every inode taken while the job builds.
    let fill = m.data.join("inode-filler");
    std::fs::create_dir(&fill).unwrap();
    let mut n = 0u64;
    while std::fs::File::create_new(fill.join(n.to_string())).is_ok() {
        n += 1;
    }
    assert!(n > 0);
    // The result arrives and cannot be filed: the master says why and keeps
    // the job; the build has not failed.
    wait_for(Duration::from_secs(60), || {
        m.stderr_text()
            .contains("cannot file its result")
            .then_some(())
    })
    .expect("the master refusing to file the result for now");
    let b = m.build(id);
    assert_eq!(jstr(&b, "state"), "building", "{b}");
    // Room again: the worker's next report is taken.
    std::fs::remove_dir_all(&fill).unwrap();
    let b = m.wait_build_done(id, BUILD_TIMEOUT);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    assert_eq!(ju64(&only_job(&b), "attempt"), 1, "built again: {b}");
    check_artifacts_on_disk(&m, &b);
}
