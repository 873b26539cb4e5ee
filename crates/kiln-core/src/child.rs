//! Child processes that do not outlive the process that runs them.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Have the kernel SIGKILL the child when the thread that started it ends
/// (the master killed mid-publication takes its createrepo_c with it, so
/// two never run in one directory after a restart). Start such a child
/// from a thread that waits for it (`output()`, `status()`).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls prctl(2), which is async-signal-safe, and touches no memory
    // shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_runs() {
        let out = die_with_parent(Command::new("sh").args(["-c", "echo ok"]))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"ok\n");
    }
}
