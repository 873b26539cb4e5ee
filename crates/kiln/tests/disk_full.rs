//! A full disk on the master, seen by a client: an SRPM upload that does not
//! fit is answered "no space left on device" (507), nothing half-written is
//! kept, and once there is room the same submit goes through and builds.
//! (A worker's artifact upload refused for a full disk, and retried on the
//! same session, is in `sandbox.rs`.)
//!
//! How the small filesystem is made: the master's data directory is a tmpfs
//! the test mounts (`common::Tmpfs`: it needs root, as CI runs; without it
//! the test fails, it does not skip), and whose size it changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// A noarch package carrying `size` random bytes (incompressible: the SRPM
/// is about that big).
fn big_srpm(m: &Master, name: &str, size: usize) -> PathBuf {
    let work = m.scratch.join(format!("big-{name}"));
    let top = work.join("rpmbuild");
    std::fs::create_dir_all(top.join("SOURCES")).unwrap();
    std::fs::write(top.join("SOURCES/blob.bin"), random_bytes(size)).unwrap();
    let spec = work.join(format!("{name}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: 1.0\nRelease: 1\nSummary: big\nLicense: MIT\n\
             Source0: blob.bin\nBuildArch: noarch\n\n%description\nbig\n\n%prep\n\n\
             %build\n\n%install\nmkdir -p %{{buildroot}}/usr/share/{name}\n\
             install -m 0644 %{{SOURCE0}} %{{buildroot}}/usr/share/{name}/blob.bin\n\n\
             %files\n/usr/share/{name}/blob.bin\n"
        ),
    )
    .unwrap();
    rpmbuild_bs(&top, &spec)
}

#[test]
fn an_upload_past_the_free_space_is_refused_as_such_and_nothing_is_kept() {
    require_build_tools();
    let mut m = Master::start();
    m.kill();
    // 16 MiB: the database, the CA and a little more; the SRPM is 24 MiB.
    let disk = Tmpfs::mount(&m.data, 16 << 20);
    m.restart();
    let _w = m.start_worker("w-full", "x86_64,noarch", "default", 1);
    let srpm = big_srpm(&m, "full-upload", 24 << 20);

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
