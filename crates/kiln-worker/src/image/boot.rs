//! The boot test: the image's kernel and initramfs under
//! `qemu-system-<arch>` with TCG (no KVM), 256 MiB of guest memory, a
//! 64 MiB translation cache, no network, the serial console into the log.
//! It passes when a line holding the expected text appears before the
//! timeout. qemu runs in its own process group, killed on every way out
//! (passed, timed out, canceled, the future dropped), and with the worker
//! (`PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_core::error::{io_err, IoError};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::sandbox::GroupGuard;
use crate::backend::LogSink;

/// How a boot test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEnd {
    /// The expected line came after this long.
    Passed(Duration),
    /// Not before the timeout.
    TimedOut,
    /// qemu ended first (status), without the line.
    Exited(Option<i32>),
    Canceled,
}

/// qemu's command line for `arch`, or why there is none.
pub fn qemu_argv(arch: &str, kernel: &Path, initrd: &Path) -> Result<Vec<OsString>, String> {
    let (prog, machine, console): (&str, &[&str], &str) = match arch {
        "x86_64" => ("qemu-system-x86_64", &[], "ttyS0"),
        "aarch64" => (
            "qemu-system-aarch64",
            &["-machine", "virt", "-cpu", "max"],
            "ttyAMA0",
        ),
        a => return Err(format!("no boot test for arch {a} (x86_64, aarch64)")),
    };
    let mut v: Vec<OsString> = vec![prog.into()];
    v.extend(machine.iter().map(OsString::from));
    v.extend(
        [
            "-accel",
            "tcg,tb-size=64",
            "-m",
            "256",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
        ]
        .map(OsString::from),
    );
    v.push(kernel.into());
    v.push("-initrd".into());
    v.push(initrd.into());
    v.push("-append".into());
    v.push(format!("console={console} panic=-1").into());
    Ok(v)
}

/// Boot with `argv` and watch the console for `expect`.
pub async fn boot(
    argv: &[OsString],
    expect: &str,
    timeout: Duration,
    log: &dyn LogSink,
    mut cancel: watch::Receiver<bool>,
) -> Result<BootEnd, IoError> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok(BootEnd::Exited(None));
    };
    let (r, w) = std::io::pipe().map_err(io_err("making a pipe"))?;
    let w2 = w.try_clone().map_err(io_err("duplicating a pipe"))?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2))
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let spawned = cmd.spawn();
    drop(cmd);
    let mut child = spawned.map_err(io_err(format!("starting {}", prog.to_string_lossy())))?;
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let mut out = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(r))
        .map_err(io_err("reading qemu's console"))?;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut buf = vec![0u8; 16 * 1024];
    // The line being received (the text may come split across reads).
    let mut line: Vec<u8> = Vec::new();
    let needle = expect.as_bytes();
    let mut open = true;
    // qemu ended (its status): what it wrote last is still read first.
    let mut exited: Option<Option<i32>> = None;
    let drain = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(drain);
    let end = loop {
        tokio::select! {
            n = out.read(&mut buf), if open => match n {
                Ok(0) | Err(_) => {
                    open = false;
                    if let Some(code) = exited {
                        break BootEnd::Exited(code);
                    }
                }
                Ok(n) => {
                    log.write(&buf[..n]);
                    let mut found = false;
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            line.clear();
                            continue;
                        }
                        if line.len() < 64 * 1024 {
                            line.push(b);
                        }
                        if line.ends_with(needle) {
                            found = true;
                        }
                    }
                    if found {
                        break BootEnd::Passed(started.elapsed());
                    }
                }
            },
            st = child.wait(), if exited.is_none() => {
                let code = st.ok().and_then(|s| s.code());
                if !open {
                    break BootEnd::Exited(code);
                }
                exited = Some(code);
                drain.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            _ = &mut drain, if exited.is_some() => break BootEnd::Exited(exited.flatten()),
            _ = &mut deadline => break BootEnd::TimedOut,
            r = cancel.changed() => {
                if r.is_err() || *cancel.borrow() {
                    break BootEnd::Canceled;
                }
            }
        }
    };
    guard.kill();
    let _ = child.wait().await;
    if !matches!(end, BootEnd::Passed(_)) || !line.is_empty() {
        log.write(b"\n");
    }
    Ok(end)
}
