//! A small filesystem to fill on purpose.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A small tmpfs the test mounts (to fill a disk on purpose), lazily
/// unmounted on drop. Mounting needs root: the test fails (never skips)
/// when it does not run as root, as `scripts/test.sh` does.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, bytes: u64) -> Tmpfs {
        Tmpfs::mount_with(path, &format!("size={bytes}"))
    }

    /// The same with mount options of the test's choosing (`size=…`,
    /// `nr_inodes=…`).
    pub fn mount_with(path: &Path, opts: &str) -> Tmpfs {
        require_tool("mount");
        require_tool("umount");
        // SAFETY: geteuid(2) has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test fills a small tmpfs it mounts, which needs root (run the suite as root, \
             as scripts/test.sh does); it never skips"
        );
        fs::create_dir_all(path).unwrap();
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o"])
            .arg(format!("{opts},mode=0700"))
            .arg("kiln-test")
            .arg(path);
        run_timeout(cmd, CLI_TIMEOUT, "mount -t tmpfs").assert_ok();
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Gives the filesystem a new size (space comes back).
    pub fn resize(&self, bytes: u64) {
        let mut cmd = Command::new("mount");
        cmd.args(["-o"])
            .arg(format!("remount,size={bytes}"))
            .arg(&self.path);
        run_timeout(cmd, CLI_TIMEOUT, "mount -o remount").assert_ok();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
