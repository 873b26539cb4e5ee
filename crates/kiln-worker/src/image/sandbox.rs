//! Commands inside an image's root: `post` (the root itself, writable)
//! and `test` (an overlay over the root, thrown away), both in bubblewrap
//! with no network; the recipe's `files` written into the root without
//! following a link out of it; and the pipelines the formats are made by.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kiln_core::error::{io_err, IoError};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::backend::{Bwrap, LogSink, RunEnd};

/// `PATH` inside the sandbox.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// bubblewrap's arguments up to the command, with `root` (a host
/// directory) as `/`, read-write: new user (uid 0 inside, mapped to the
/// worker's), PID, IPC, UTS, network and cgroup namespaces, a private
/// `/proc`, `/dev` and `/tmp`, killed with the worker.
pub fn root_argv(bwrap: &Bwrap, root: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![bwrap.path.clone().into()];
    let mut push =
        |args: &[&dyn AsRef<OsStr>]| a.extend(args.iter().map(|s| s.as_ref().to_owned()));
    push(&[&"--unshare-all", &"--unshare-user"]);
    if bwrap.disable_userns {
        push(&[&"--disable-userns"]);
    }
    push(&[
        &"--uid",
        &"0",
        &"--gid",
        &"0",
        &"--die-with-parent",
        &"--new-session",
        &"--hostname",
        &"kiln-image",
        &"--clearenv",
        &"--setenv",
        &"PATH",
        &PATH,
        &"--setenv",
        &"HOME",
        &"/root",
        &"--setenv",
        &"LC_ALL",
        &"C",
        &"--setenv",
        &"TMPDIR",
        &"/tmp",
        &"--bind",
        &root,
        &"/",
        &"--proc",
        &"/proc",
        &"--dev",
        &"/dev",
        &"--tmpfs",
        &"/tmp",
        &"--chdir",
        &"/",
        &"--",
    ]);
    a
}

/// The host path of `path` (absolute, inside the image) under `root`,
/// following the links on the way as they would be followed with `root`
/// as `/` (an absolute link target is taken from `root`, `..` stops at
/// `root`): nothing written there lands outside the root. The last
/// component is not followed when `follow_last` is false.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, String> {
    let mut todo: Vec<OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut at: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            at.pop();
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&at);
        here.push(&c);
        let last = todo.is_empty();
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() && (follow_last || !last) => {
                links += 1;
                if links > 40 {
                    return Err(format!("{path}: too many levels of links"));
                }
                let target = std::fs::read_link(&here)
                    .map_err(|e| format!("reading the link {}: {e}", here.display()))?;
                if target.is_absolute() {
                    at.clear();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => todo.push(n.to_owned()),
                        Component::ParentDir => todo.push(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            _ => at.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&at);
    Ok(out)
}

/// Write `content` at `path` inside `root` (mode 0644, parents 0755 made
/// as needed), never through a link out of the root.
pub fn write_in_root(root: &Path, path: &str, content: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dest = resolve_in_root(root, path, true)?;
    if let Some(parent) = dest.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| format!("making the directory {}: {e}", parent.display()))?;
        // A link made on the way (nothing runs in the root now) would have
        // been followed by the line above: check the result is inside.
        let real = parent
            .canonicalize()
            .map_err(|e| format!("{}: {e}", parent.display()))?;
        let real_root = root
            .canonicalize()
            .map_err(|e| format!("{}: {e}", root.display()))?;
        if !real.starts_with(&real_root) {
            return Err(format!("{path} leads out of the image's root"));
        }
    }
    if dest.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(format!("{path} is a directory in the image"));
    }
    let _ = std::fs::remove_file(&dest);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&dest)
        .map_err(|e| format!("creating {}: {e}", dest.display()))?;
    f.write_all(content.as_bytes())
        .map_err(|e| format!("writing {}: {e}", dest.display()))?;
    // The mode asked for, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(())
}

/// Kills a process group when dropped (every way out of a wait, panics
/// and dropped futures included), unless disarmed after the processes were
/// waited for.
pub struct GroupGuard(pub Option<i32>);

impl GroupGuard {
    pub fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals the process group
            // this code made for its children; no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One command of a pipeline.
pub struct Stage {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

impl Stage {
    pub fn new<S: AsRef<OsStr>>(argv: impl IntoIterator<Item = S>) -> Stage {
        Stage {
            argv: argv.into_iter().map(|s| s.as_ref().to_owned()).collect(),
            env: Vec::new(),
        }
    }

    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Run `stages` as a pipeline in `cwd` (each one's output into the next
/// one's input; the first reads `stdin`, the last writes `out`), all in
/// one process group, their stderr to `log`. The group is killed on
/// timeout, cancel, or when this future is dropped. Ends with the first
/// failing stage's end, else `Exited(0)`.
pub async fn run_pipeline(
    stages: &[Stage],
    cwd: &Path,
    stdin: Option<std::fs::File>,
    out: std::fs::File,
    log: &dyn LogSink,
    timeout: Duration,
    mut cancel: watch::Receiver<bool>,
) -> Result<RunEnd, IoError> {
    let (err_r, err_w) = std::io::pipe().map_err(io_err("making a pipe"))?;
    let mut guard = GroupGuard(None);
    let mut children = Vec::new();
    let mut next_in: Option<Stdio> = Some(match stdin {
        Some(f) => Stdio::from(f),
        None => Stdio::null(),
    });
    let mut out = Some(out);
    for (i, s) in stages.iter().enumerate() {
        let Some((prog, args)) = s.argv.split_first() else {
            continue;
        };
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .stdin(next_in.take().unwrap_or_else(Stdio::null))
            .stderr(Stdio::from(
                err_w.try_clone().map_err(io_err("duplicating a pipe"))?,
            ))
            .kill_on_drop(true)
            .process_group(guard.0.unwrap_or(0));
        if i + 1 == stages.len() {
            cmd.stdout(match out.take() {
                Some(f) => Stdio::from(f),
                None => Stdio::null(),
            });
        } else {
            let (r, w) = std::io::pipe().map_err(io_err("making a pipe"))?;
            cmd.stdout(Stdio::from(w));
            next_in = Some(Stdio::from(r));
        }
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", prog.to_string_lossy())))?;
        drop(cmd);
        if guard.0.is_none() {
            guard.0 = child.id().and_then(|p| i32::try_from(p).ok());
        }
        children.push(child);
    }
    drop(err_w);
    let mut err = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(err_r))
        .map_err(io_err("reading a pipe"))?;
    let wait_all = async {
        let mut first_bad: Option<RunEnd> = None;
        for c in children.iter_mut() {
            let st = c.wait().await;
            let end = match st {
                Ok(s) => match s.code() {
                    Some(c) => RunEnd::Exited(c),
                    None => RunEnd::Signaled,
                },
                Err(_) => RunEnd::Signaled,
            };
            if first_bad.is_none() && !matches!(end, RunEnd::Exited(0)) {
                first_bad = Some(end);
            }
        }
        first_bad.unwrap_or(RunEnd::Exited(0))
    };
    tokio::pin!(wait_all);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut buf = vec![0u8; 16 * 1024];
    let mut open = true;
    let mut ended: Option<RunEnd> = None;
    loop {
        if ended.is_some() && !open {
            break;
        }
        tokio::select! {
            n = err.read(&mut buf), if open => match n {
                Ok(0) | Err(_) => open = false,
                Ok(n) => log.write(&buf[..n]),
            },
            e = &mut wait_all, if ended.is_none() => {
                ended = Some(e);
                // What a stage left in the group goes with it.
                guard.kill();
            }
            _ = &mut deadline, if ended.is_none() => {
                guard.kill();
                return Ok(RunEnd::TimedOut);
            }
            r = cancel.changed(), if ended.is_none() => {
                if r.is_err() || *cancel.borrow() {
                    guard.kill();
                    return Ok(RunEnd::Canceled);
                }
            }
        }
    }
    Ok(ended.unwrap_or(RunEnd::Exited(0)))
}

/// The first line `argv` prints (stdout, else stderr), for the manifest.
pub async fn tool_version(argv: &[&str]) -> String {
    let Some((prog, args)) = argv.split_first() else {
        return String::new();
    };
    let out = tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(o) => {
            let text = if o.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
                o.stdout
            } else {
                o.stderr
            };
            String::from_utf8_lossy(&text)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(kiln_core::names::printable)
                .unwrap_or_default()
        }
        Err(e) => format!("(not run: {e})"),
    }
}

/// [`tool_version`] of an owned command line.
pub async fn tool_version_owned(argv: Vec<&'static str>) -> String {
    tool_version(&argv).await
}

/// `tool` on `PATH` (or an absolute path), if there.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    if tool.starts_with('/') {
        return Path::new(tool).is_file().then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(PATH));
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // The sbin directories hold mkfs.*, even when the caller's PATH lacks them.
    for d in ["/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|c| c.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("hostetc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("usr/up")).unwrap();
        assert_eq!(
            resolve_in_root(&root, "/bin/sh", true).unwrap(),
            root.join("usr/bin/sh")
        );
        // An absolute link is the root's, not the host's.
        assert_eq!(
            resolve_in_root(&root, "/hostetc/motd", true).unwrap(),
            root.join("etc/motd")
        );
        assert_eq!(
            resolve_in_root(&root, "/usr/up/etc/passwd", true).unwrap(),
            root.join("etc/passwd")
        );
        write_in_root(&root, "/hostetc/kiln-test", "hi\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/kiln-test")).unwrap(),
            "hi\n"
        );
        // A link to a host path is followed inside the root.
        let host_before = std::fs::read("/etc/hostname").ok();
        std::os::unix::fs::symlink("/etc/hostname", root.join("etc/motd")).unwrap();
        write_in_root(&root, "/etc/motd", "image\n").unwrap();
        assert_eq!(std::fs::read("/etc/hostname").ok(), host_before);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "image\n"
        );
        // A link to itself is refused, not followed forever.
        std::os::unix::fs::symlink("/etc/loop", root.join("etc/loop")).unwrap();
        assert!(write_in_root(&root, "/etc/loop", "x").is_err());
    }

    struct Buf(std::sync::Mutex<Vec<u8>>);
    impl LogSink for Buf {
        fn write(&self, d: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(d);
        }
    }

    #[tokio::test]
    async fn a_pipeline_runs_and_times_out_without_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let out_path = tmp.path().join("out");
        let log = Buf(Default::default());
        let (_tx, rx) = watch::channel(false);
        let end = run_pipeline(
            &[
                Stage::new(["sh", "-c", "printf 'b\\na\\n'; echo warn >&2"]),
                Stage::new(["sort"]),
            ],
            tmp.path(),
            None,
            std::fs::File::create(&out_path).unwrap(),
            &log,
            Duration::from_secs(10),
            rx.clone(),
        )
        .await
        .unwrap();
        assert!(matches!(end, RunEnd::Exited(0)), "{end:?}");
        assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "a\nb\n");
        assert_eq!(log.0.lock().unwrap().as_slice(), b"warn\n");
        let end = run_pipeline(
            &[Stage::new(["sleep", "3007201"]), Stage::new(["cat"])],
            tmp.path(),
            None,
            std::fs::File::create(&out_path).unwrap(),
            &log,
            Duration::from_millis(300),
            rx,
        )
        .await
        .unwrap();
        assert!(matches!(end, RunEnd::TimedOut), "{end:?}");
        let left = std::process::Command::new("pgrep")
            .args(["-f", "sleep 3007201"])
            .output()
            .unwrap();
        assert!(left.stdout.is_empty(), "left behind: {:?}", left.stdout);
    }
}
