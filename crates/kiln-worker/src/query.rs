//! What an SRPM makes: every binary package its spec builds and every
//! Provides of those packages. That is not in the SRPM's header; it is
//! learned by evaluating the spec, which runs the spec's macros (they can
//! run shell), so it happens here, on a worker, in the same bubblewrap
//! sandbox as a host build (no network, only a private scratch directory
//! writable), and never on the master.
//!
//! Two commands, each by argument vector, each in a sandbox of its own
//! with the scratch directory at `/build` and the SRPM read-only at
//! `/input/source.src.rpm`:
//! 1. `rpm -i` of the SRPM into `/build/top` (its own database in
//!    `/build/db`: Debian's rpm would use `~/.rpmdb` otherwise); the one
//!    `*.spec` of `top/SPECS` is then found from the worker's side (no
//!    spec, several, or a symbolic link: refused);
//! 2. `rpmspec -q --builtrpms` of that spec with a query format that marks
//!    its lines with a random token, printing for each package built its
//!    Provides (`PROVIDENEVRS`: `name`, `name = [epoch:]version-release`,
//!    `name >= 1.0`…) and then its name and `[epoch:]version-release`.
//!    Only the marked lines count (rpm's warnings share the pipe); a
//!    package's own `name = [epoch:]version-release` is added when rpm did
//!    not list it.
//!
//! Bounded: both commands together get [`TIMEOUT`], the output at most
//! [`MAX_OUTPUT`] bytes, at most [`MAX_PROVIDES`] Provides; a name or a
//! Provides with a control character is refused.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use kiln_core::names::printable;
use kiln_proto as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{self, Bwrap, Invocation, LogSink, RunEnd};

/// Queries evaluated at once on one worker (they take no build slot).
pub const MAX_AT_ONCE: usize = 2;
/// Time for both commands of one query (unpacking and evaluating).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Most output (stdout and stderr together) one command may print.
pub const MAX_OUTPUT: usize = 1 << 20;
/// Most Provides one spec may make (its packages' names count as well).
pub const MAX_PROVIDES: usize = 10_000;
/// Longest package name or Provides kept.
pub const MAX_ENTRY: usize = 4096;
/// The scratch directories' parent, under the worker's work directory.
pub const QUERIES_DIR: &str = "queries";

/// Where the scratch directory appears in the sandbox (see
/// [`backend::sandbox_argv`]).
const SANDBOX_BUILD: &str = "/build";
/// Where the SRPM appears in the sandbox, read-only.
const SANDBOX_SRPM: &str = "/input/source.src.rpm";
/// Lines of a failed command's output quoted in its error.
const TAIL_LINES: usize = 6;

/// What a spec makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Makes {
    /// The binary packages it builds, in the spec's order.
    pub packages: Vec<String>,
    /// Their Provides as rpm prints them (each once), every package's own
    /// `name = [epoch:]version-release` included.
    pub provides: Vec<String>,
}

/// Why a spec could not be evaluated. The message is what the master (and
/// whoever asked it) is told.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "evaluating a spec needs bubblewrap (bwrap) on the worker: its macros can run anything"
    )]
    NoSandbox,
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("unpacking the SRPM failed: {0}")]
    Unpack(String),
    #[error("the SRPM's spec: {0}")]
    Spec(String),
    #[error("rpmspec failed: {0}")]
    Rpmspec(String),
    #[error("{what} timed out (the query may take {} s in all)", TIMEOUT.as_secs())]
    TimedOut { what: &'static str },
    #[error("{what} printed more than {} bytes", MAX_OUTPUT)]
    TooMuchOutput { what: &'static str },
    #[error("rpmspec's answer is refused: {0}")]
    Refused(String),
    #[error("canceled")]
    Canceled,
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
}

/// Answer `q` about `srpm` (the SRPM, already fetched and checked against
/// its sha256), with a scratch directory under `work`.
pub async fn answer(q: &pb::Query, srpm: &Path, work: &Path) -> pb::QueryResult {
    reply(q, evaluate(work, srpm, &q.arch, &q.disttag, TIMEOUT).await)
}

/// The same, inside the target's base root when the query names a
/// buildroot (its rpm, its macros), through an overlay of the query's own
/// (the base is never written). A worker that cannot mount one (not root)
/// reads the spec on its own system.
pub async fn answer_in_root(
    q: &pb::Query,
    srpm: &Path,
    work: &Path,
    roots: &std::sync::Arc<crate::buildroot::Roots>,
) -> pb::QueryResult {
    let Some(b) = &q.buildroot else {
        return answer(q, srpm, work).await;
    };
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return answer(q, srpm, work).await;
    }
    let spec = crate::buildroot::RootSpec::new(&q.target, &q.arch, b);
    let (_tx, rx) = watch::channel(false);
    let held = match roots.base(&spec, &Discard, rx).await {
        Ok(h) => h,
        Err(e) => {
            return failed(
                q.id,
                format!(
                    "{}: the target's base root: {e}",
                    kiln_core::names::shown(&q.srpm_name)
                ),
            )
        }
    };
    let dir = work
        .join(QUERIES_DIR)
        .join(format!("root-{:016x}", rand::random::<u64>()));
    let jr = match crate::buildroot::JobRoot::new(&dir, &held) {
        Ok(j) => j,
        Err(e) => return failed(q.id, e.to_string()),
    };
    let r = evaluate_in(work, srpm, &q.arch, &q.disttag, TIMEOUT, Some(&jr.overlay)).await;
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
    reply(q, r)
}

/// What a query's download and base root print: the worker's own debug
/// log only.
pub(crate) struct Discard;

impl LogSink for Discard {
    fn write(&self, data: &[u8]) {
        tracing::debug!("{}", String::from_utf8_lossy(data).trim_end());
    }
}

fn reply(q: &pb::Query, r: Result<Makes, QueryError>) -> pb::QueryResult {
    match r {
        Ok(m) => pb::QueryResult {
            id: q.id,
            ok: true,
            error: String::new(),
            packages: m.packages,
            provides: m.provides,
        },
        Err(e) => failed(
            q.id,
            format!("{}: {e}", kiln_core::names::shown(&q.srpm_name)),
        ),
    }
}

/// A failed answer to query `id`.
pub fn failed(id: u64, error: String) -> pb::QueryResult {
    pb::QueryResult {
        id,
        ok: false,
        error,
        packages: vec![],
        provides: vec![],
    }
}

/// Evaluate the spec of `srpm` for `arch` (rpm's `--target`; empty: the
/// host's) with `%{dist}` set to `disttag` (empty: none), in the sandbox,
/// in a private scratch directory under `work/`[`QUERIES_DIR`] removed
/// afterwards (also when the returned future is dropped: the commands are
/// killed with it).
pub async fn evaluate(
    work: &Path,
    srpm: &Path,
    arch: &str,
    disttag: &str,
    timeout: Duration,
) -> Result<Makes, QueryError> {
    evaluate_in(work, srpm, arch, disttag, timeout, None).await
}

/// The same, with the sandbox's root made of `root` (a target's base
/// root through an overlay) instead of the host's `/usr`.
pub async fn evaluate_in(
    work: &Path,
    srpm: &Path,
    arch: &str,
    disttag: &str,
    timeout: Duration,
    root: Option<&backend::OverlayMount>,
) -> Result<Makes, QueryError> {
    if !arch.is_empty() {
        kiln_core::names::check_arch(arch).map_err(|e| QueryError::BadQuery(e.to_string()))?;
    }
    if disttag.chars().any(char::is_control) || disttag.len() > 256 {
        return Err(QueryError::BadQuery(format!(
            "disttag {} is not a plain value",
            kiln_core::names::shown(disttag)
        )));
    }
    let bwrap = Bwrap::find().ok_or(QueryError::NoSandbox)?;
    let scratch = Scratch::new(&work.join(QUERIES_DIR))?;
    let deadline = Instant::now() + timeout;
    let build = scratch.0.clone();
    for d in ["top", "tmp"] {
        backend::make_private_dir(&build.join(d))
            .map_err(kiln_core::error::io_err("making the query's directory"))?;
    }

    // 1. The spec, out of the SRPM.
    let unpack = run(
        &bwrap,
        &build,
        srpm,
        unpack_argv(),
        deadline,
        "unpacking the SRPM",
        root,
    )
    .await?;
    if unpack.end != Some(0) {
        return Err(QueryError::Unpack(unpack.failure("rpm")));
    }
    let spec = find_spec(&build.join("top"))?;

    // 2. What it makes.
    let mark = format!("@kiln:{:016x}:", rand::random::<u64>());
    let out = run(
        &bwrap,
        &build,
        srpm,
        rpmspec_argv(&spec, arch, disttag, &mark),
        deadline,
        "rpmspec",
        root,
    )
    .await?;
    if out.end != Some(0) {
        return Err(QueryError::Rpmspec(out.failure("rpmspec")));
    }
    parse(&out.text, &mark)
}

/// `rpm -i` of the SRPM into `/build/top`, with its own database.
fn unpack_argv() -> Vec<OsString> {
    let mut argv = vec![OsString::from("rpm"), "-i".into()];
    for def in [
        "_topdir /build/top",
        "_specdir /build/top/SPECS",
        "_sourcedir /build/top/SOURCES",
        "_tmppath /build/tmp",
        "_dbpath /build/db",
    ] {
        argv.push("--define".into());
        argv.push(def.into());
    }
    argv.push(SANDBOX_SRPM.into());
    argv
}

/// `rpmspec -q` of the spec named `spec` (in `/build/top/SPECS`): for each
/// package it builds, its Provides, then its name and EVR, on lines that
/// begin with `mark`.
fn rpmspec_argv(spec: &str, arch: &str, disttag: &str, mark: &str) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["rpmspec".into(), "-q".into(), "--builtrpms".into()];
    if !arch.is_empty() {
        argv.push("--target".into());
        argv.push(arch.into());
    }
    let dist = if disttag.is_empty() {
        "dist %{nil}".to_string()
    } else {
        format!("dist {disttag}")
    };
    for def in [
        dist.as_str(),
        "_topdir /build/top",
        "_specdir /build/top/SPECS",
        "_sourcedir /build/top/SOURCES",
        "_tmppath /build/tmp",
        "_dbpath /build/db",
    ] {
        argv.push("--define".into());
        argv.push(def.into());
    }
    argv.push("--qf".into());
    argv.push(
        format!("[{mark}P %{{PROVIDENEVRS}}\\n]{mark}N %{{NAME}} %|EPOCH?{{%{{EPOCH}}:}}|%{{VERSION}}-%{{RELEASE}}\\n")
            .into(),
    );
    argv.push(format!("{SANDBOX_BUILD}/top/SPECS/{spec}").into());
    argv
}

/// The one spec file in `top/SPECS`, by name: a regular file (never a
/// symbolic link), the only `*.spec` there, its name plain.
fn find_spec(top: &Path) -> Result<String, QueryError> {
    let specs = top.join("SPECS");
    for d in [top, specs.as_path()] {
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(QueryError::Spec(format!(
                    "{} is not a directory",
                    d.strip_prefix(top.parent().unwrap_or(top))
                        .unwrap_or(d)
                        .display()
                )))
            }
            Err(_) => {
                return Err(QueryError::Spec(
                    "the SRPM holds no spec file (nothing in SPECS)".into(),
                ))
            }
        }
    }
    let mut found = spec_files(&specs)?;
    match found.len() {
        0 => Err(QueryError::Spec("the SRPM holds no spec file".into())),
        1 => Ok(found.remove(0)),
        n => Err(QueryError::Spec(format!(
            "the SRPM holds {n} spec files ({}); expected one",
            name_list(&found)
        ))),
    }
}

/// The `*.spec` files directly in `dir`, by name, sorted: each a regular
/// file (never a symbolic link: refused, not followed) with a plain name.
pub(crate) fn spec_files(dir: &Path) -> Result<Vec<String>, QueryError> {
    let reading = || kiln_core::error::io_err("reading the directory of the spec");
    let rd = std::fs::read_dir(dir).map_err(reading())?;
    let mut found: Vec<String> = Vec::new();
    for e in rd.take(10_000) {
        let e = e.map_err(reading())?;
        let raw = e.file_name();
        let name = raw.to_string_lossy();
        if !name.ends_with(".spec") {
            continue;
        }
        let shown = printable(&name);
        let m = std::fs::symlink_metadata(e.path()).map_err(reading())?;
        if m.is_symlink() {
            return Err(QueryError::Spec(format!(
                "{shown} is a symbolic link (refused)"
            )));
        }
        if !m.is_file() {
            return Err(QueryError::Spec(format!("{shown} is not a regular file")));
        }
        if raw.to_str().is_none()
            || name.chars().any(|c| c.is_control())
            || kiln_core::names::check_file_name(&name).is_err()
        {
            return Err(QueryError::Spec(format!(
                "{shown} is not a plain file name"
            )));
        }
        found.push(name.into_owned());
    }
    found.sort();
    Ok(found)
}

/// The first few of `names`, printable, comma separated.
pub(crate) fn name_list(names: &[String]) -> String {
    names
        .iter()
        .take(5)
        .map(|s| printable(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turn rpmspec's output into what the spec makes: the lines that begin
/// with `mark` only; each package's Provides come before its name line.
pub fn parse(out: &[u8], mark: &str) -> Result<Makes, QueryError> {
    let refused = |what: &str, raw: &[u8]| {
        QueryError::Refused(format!(
            "{what} {}",
            printable(&String::from_utf8_lossy(&raw[..raw.len().min(200)]))
        ))
    };
    let mut makes = Makes::default();
    let mut seen = std::collections::HashSet::new();
    let mut pending: Vec<String> = Vec::new();
    for line in out.split(|b| *b == b'\n') {
        let Some(rest) = line.strip_prefix(mark.as_bytes()) else {
            continue;
        };
        let text =
            std::str::from_utf8(rest).map_err(|_| refused("a line that is not UTF-8:", rest))?;
        if text.len() > MAX_ENTRY + 64 {
            return Err(refused("an entry that is too long:", rest));
        }
        if text
            .chars()
            .any(|c| c.is_control() || kiln_core::names::is_bidi_control(c))
        {
            return Err(refused("an entry with a control character:", rest));
        }
        match text.split_once(' ') {
            Some(("P", provide)) => {
                if provide.trim().is_empty() {
                    return Err(refused("an empty Provides:", rest));
                }
                pending.push(provide.to_string());
            }
            Some(("N", name_evr)) => {
                let Some((name, evr)) = name_evr.split_once(' ') else {
                    return Err(refused("a package line without a version:", rest));
                };
                if name.is_empty() || evr.is_empty() || evr.contains(' ') {
                    return Err(refused("a malformed package line:", rest));
                }
                makes.packages.push(name.to_string());
                let own = format!("{name} = {evr}");
                if !pending.contains(&own) {
                    pending.push(own);
                }
                for p in pending.drain(..) {
                    if seen.insert(p.clone()) {
                        makes.provides.push(p);
                    }
                }
                if makes.provides.len() + makes.packages.len() > MAX_PROVIDES {
                    return Err(QueryError::Refused(format!(
                        "the spec makes more than {MAX_PROVIDES} Provides"
                    )));
                }
            }
            _ => return Err(refused("an unexpected line:", rest)),
        }
        if pending.len() > MAX_PROVIDES {
            return Err(QueryError::Refused(format!(
                "the spec makes more than {MAX_PROVIDES} Provides"
            )));
        }
    }
    if !pending.is_empty() {
        return Err(QueryError::Refused(
            "Provides without the package they belong to (the output was cut?)".into(),
        ));
    }
    Ok(makes)
}

/// A command's end and output.
pub(crate) struct Ran {
    /// Its exit status (`None`: killed by a signal).
    pub(crate) end: Option<i32>,
    pub(crate) text: Vec<u8>,
}

impl Ran {
    /// Why the command failed, with the last lines it printed (rpm's
    /// Debian warning about installing packages left out).
    pub(crate) fn failure(&self, what: &str) -> String {
        let status = match self.end {
            Some(c) => format!("{what} exited with status {c}"),
            None => format!("{what} was killed by a signal"),
        };
        let text = String::from_utf8_lossy(&self.text);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("rpm: RPM should not be used directly")
                    && !l.starts_with("rpm: However assuming you know")
            })
            .collect();
        let tail: Vec<String> = lines[lines.len().saturating_sub(TAIL_LINES)..]
            .iter()
            .map(|l| {
                let cut: String = l.chars().take(300).collect();
                printable(&cut)
            })
            .collect();
        if tail.is_empty() {
            status
        } else {
            format!("{status}: {}", tail.join(" | "))
        }
    }
}

/// Output kept in memory up to [`MAX_OUTPUT`]; past it the command is
/// stopped (through its cancel channel).
struct Capture {
    text: Mutex<Vec<u8>>,
    over: watch::Sender<bool>,
}

impl LogSink for Capture {
    fn write(&self, data: &[u8]) {
        let mut t = self.text.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() + data.len() > MAX_OUTPUT {
            self.over.send_replace(true);
            return;
        }
        t.extend_from_slice(data);
    }
}

/// Run `argv` in the sandbox with `build` at `/build` and `srpm` at
/// [`SANDBOX_SRPM`], until `deadline`.
async fn run(
    bwrap: &Bwrap,
    build: &Path,
    srpm: &Path,
    argv: Vec<OsString>,
    deadline: Instant,
    what: &'static str,
    root: Option<&backend::OverlayMount>,
) -> Result<Ran, QueryError> {
    let inv = backend::sandboxed(bwrap, build, Some(srpm), root, argv);
    run_captured(&inv, deadline, what, None).await
}

/// Run `inv` until `deadline`, its output kept (at most [`MAX_OUTPUT`]
/// bytes: past it the command is stopped), stopped as well when `cancel`
/// turns true.
pub(crate) async fn run_captured(
    inv: &Invocation,
    deadline: Instant,
    what: &'static str,
    cancel: Option<watch::Receiver<bool>>,
) -> Result<Ran, QueryError> {
    let (over, over_rx) = watch::channel(false);
    let cap = Capture {
        text: Mutex::new(Vec::new()),
        over,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(QueryError::TimedOut { what });
    }
    let canceled = std::sync::atomic::AtomicBool::new(false);
    // The caller's cancel stops the command the way too much output does.
    let forward = async {
        if let Some(mut c) = cancel {
            loop {
                if *c.borrow_and_update() {
                    canceled.store(true, std::sync::atomic::Ordering::SeqCst);
                    cap.over.send_replace(true);
                    break;
                }
                if c.changed().await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    let end = tokio::select! {
        e = backend::run_logged(inv, &cap, left, over_rx) => e,
        never = forward => match never {},
    }
    .map_err(|e| match e {
        backend::BackendError::Io(e) => QueryError::Io(e),
    })?;
    let text = cap.text.into_inner().unwrap_or_else(|p| p.into_inner());
    match end {
        RunEnd::Exited(c) => Ok(Ran { end: Some(c), text }),
        RunEnd::Signaled => Ok(Ran { end: None, text }),
        RunEnd::TimedOut => Err(QueryError::TimedOut { what }),
        RunEnd::Canceled if canceled.into_inner() => Err(QueryError::Canceled),
        RunEnd::Canceled => Err(QueryError::TooMuchOutput { what }),
    }
}

/// A query's private scratch directory (the sandbox's `/build`), removed
/// when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> Result<Scratch, QueryError> {
        use std::os::unix::fs::DirBuilderExt;
        backend::make_private_dir(parent)
            .map_err(kiln_core::error::io_err("making the queries directory"))?;
        let dir = parent.join(format!("q-{:016x}", rand::random::<u64>()));
        // New, never one that exists.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(kiln_core::error::io_err("making the query's directory"))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::run::remove_job_dir(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MARK: &str = "@kiln:0123456789abcdef:";

    fn lines(ls: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for l in ls {
            v.extend_from_slice(l.as_bytes());
            v.push(b'\n');
        }
        v
    }

    #[test]
    fn only_marked_lines_count_and_own_provides_are_added() {
        let out = lines(&[
            "warning: some macro is deprecated",
            &format!("{MARK}P greet-api = 2"),
            &format!("{MARK}P kf-libgreet = 2.0-1"),
            "KILNP fake = 1",
            &format!("{MARK}N kf-libgreet 2.0-1"),
            &format!("{MARK}P greet-api = 2"),
            &format!("{MARK}N libgreet-devel 1:2.0-1"),
        ]);
        let m = parse(&out, MARK).unwrap();
        assert_eq!(m.packages, ["kf-libgreet", "libgreet-devel"]);
        assert_eq!(
            m.provides,
            [
                "greet-api = 2",
                "kf-libgreet = 2.0-1",
                "libgreet-devel = 1:2.0-1"
            ]
        );
    }

    #[test]
    fn control_characters_and_cut_output_are_refused() {
        let out = lines(&[
            &format!("{MARK}P evil\u{1b}[2J = 1"),
            &format!("{MARK}N p 1-1"),
        ]);
        let e = parse(&out, MARK).unwrap_err().to_string();
        assert!(
            e.contains("control character") && e.contains("\\u{1b}"),
            "{e}"
        );
        let out = lines(&[&format!("{MARK}N p 1-1"), &format!("{MARK}P orphan")]);
        assert!(parse(&out, MARK).unwrap_err().to_string().contains("cut"));
        let mut out = Vec::new();
        for i in 0..=MAX_PROVIDES {
            out.extend_from_slice(format!("{MARK}P p{i}\n").as_bytes());
        }
        out.extend_from_slice(format!("{MARK}N p 1-1\n").as_bytes());
        let e = parse(&out, MARK).unwrap_err().to_string();
        assert!(e.contains("more than 10000"), "{e}");
    }

    #[test]
    fn the_query_format_marks_provides_and_names() {
        let argv = rpmspec_argv("a.spec", "x86_64", "", MARK);
        let s: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into()).collect();
        assert!(s.contains(&"dist %{nil}".to_string()), "{s:?}");
        assert!(s.windows(2).any(|w| w == ["--target", "x86_64"]), "{s:?}");
        assert_eq!(s.last().unwrap(), "/build/top/SPECS/a.spec");
        assert!(s.contains(
            &format!("[{MARK}P %{{PROVIDENEVRS}}\\n]{MARK}N %{{NAME}} %|EPOCH?{{%{{EPOCH}}:}}|%{{VERSION}}-%{{RELEASE}}\\n")
        ));
    }

    #[test]
    fn exactly_one_plain_spec_is_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        let specs = top.join("SPECS");
        let msg = |top: &Path| find_spec(top).unwrap_err().to_string();
        assert!(msg(&top).contains("no spec file"), "{}", msg(&top));
        std::fs::create_dir_all(&specs).unwrap();
        std::fs::write(specs.join("README"), "x").unwrap();
        assert!(msg(&top).contains("no spec file"), "{}", msg(&top));
        std::fs::write(specs.join("a.spec"), "x").unwrap();
        assert_eq!(find_spec(&top).unwrap(), "a.spec");
        std::fs::write(specs.join("b.spec"), "x").unwrap();
        assert!(
            msg(&top).contains("2 spec files (a.spec, b.spec)"),
            "{}",
            msg(&top)
        );
        std::fs::remove_file(specs.join("b.spec")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", specs.join("c.spec")).unwrap();
        assert!(
            msg(&top).contains("c.spec is a symbolic link"),
            "{}",
            msg(&top)
        );
        std::fs::remove_file(specs.join("c.spec")).unwrap();
        std::fs::create_dir(specs.join("d.spec")).unwrap();
        assert!(msg(&top).contains("not a regular file"), "{}", msg(&top));
        std::fs::remove_dir(specs.join("d.spec")).unwrap();
        std::fs::write(specs.join("e\u{1b}[2J.spec"), "x").unwrap();
        let m = msg(&top);
        assert!(m.contains("\\u{1b}") && !m.contains('\u{1b}'), "{m}");
        // SPECS itself a link: refused, not followed.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(other.join("SPECS")).unwrap();
        std::fs::write(other.join("SPECS/x.spec"), "x").unwrap();
        let top2 = tmp.path().join("top2");
        std::fs::create_dir(&top2).unwrap();
        std::os::unix::fs::symlink(other.join("SPECS"), top2.join("SPECS")).unwrap();
        assert!(msg(&top2).contains("not a directory"), "{}", msg(&top2));
    }

    // ----- real rpmbuild, rpmspec and bubblewrap -----

    /// `rpmbuild -bs` of `spec` (named `name.spec`) in `dir`: the SRPM.
    /// Its `%(…)` macros see `KILN_TEST_HOST=1` (they run here, on the
    /// host, unsandboxed: a test spec must do nothing there).
    fn srpm(dir: &Path, name: &str, spec: &str) -> PathBuf {
        let src = dir.join(format!("{name}-src"));
        std::fs::create_dir_all(&src).unwrap();
        let specf = src.join(format!("{name}.spec"));
        std::fs::write(&specf, spec).unwrap();
        let out = Command::new("rpmbuild")
            .arg("-bs")
            .arg("--define")
            .arg(format!("_topdir {}", src.join("top").display()))
            .arg("--define")
            .arg(format!("_sourcedir {}", src.display()))
            .arg("--define")
            .arg(format!("_srcrpmdir {}", dir.display()))
            .arg("--define")
            .arg("dist %{nil}")
            .arg(&specf)
            .env("KILN_TEST_HOST", "1")
            .output()
            .expect("these tests need rpmbuild (apt-get install rpm)");
        assert!(
            out.status.success(),
            "rpmbuild -bs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
                    && p.to_string_lossy().ends_with(".src.rpm")
            })
            .expect("rpmbuild -bs made no SRPM");
        made
    }

    const LIBGREET: &str = "\
Name: kf-libgreet
Version: 2.0
Release: 1%{?dist}
Summary: a greeting library
License: MIT
BuildArch: noarch
Provides: greet-api = 2

%description
A greeting library.

%package -n libgreet-devel
Summary: its header
Requires: %{name} = %{version}-%{release}
%description -n libgreet-devel
The header.

%prep
%build
%install
mkdir -p %{buildroot}/usr/share/greet
echo hi > %{buildroot}/usr/share/greet/a

%files
/usr/share/greet/a

%files -n libgreet-devel
";

    fn bwrap_present() {
        assert!(
            Bwrap::find().is_some(),
            "these tests need bubblewrap (apt-get install bubblewrap)"
        );
    }

    #[tokio::test]
    async fn a_spec_says_what_it_makes() {
        bwrap_present();
        let tmp = tempfile::tempdir().unwrap();
        let s = srpm(tmp.path(), "kf-libgreet", LIBGREET);
        let work = tmp.path().join("work");
        let q = pb::Query {
            id: 7,
            srpm_sha256: String::new(),
            srpm_size: 0,
            srpm_name: "kf-libgreet-2.0-1.src.rpm".into(),
            arch: "x86_64".into(),
            disttag: String::new(),
            ..Default::default()
        };
        let r = answer(&q, &s, &work).await;
        assert!(r.ok, "{}", r.error);
        assert_eq!(r.id, 7);
        assert_eq!(r.packages, ["kf-libgreet", "libgreet-devel"]);
        for p in [
            "libgreet-devel = 2.0-1",
            "kf-libgreet = 2.0-1",
            "greet-api = 2",
        ] {
            assert!(r.provides.iter().any(|x| x == p), "{p} in {:?}", r.provides);
        }
        // The scratch directory is gone.
        let left: Vec<_> = std::fs::read_dir(work.join(QUERIES_DIR))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // The disttag is the target's.
        let m = evaluate(&work, &s, "noarch", ".el9", TIMEOUT)
            .await
            .unwrap();
        assert!(
            m.provides.iter().any(|x| x == "kf-libgreet = 2.0-1.el9"),
            "{:?}",
            m.provides
        );
    }

    #[tokio::test]
    async fn the_spec_s_shell_runs_only_in_the_sandbox() {
        bwrap_present();
        let tmp = tempfile::tempdir().unwrap();
        let token = format!("{:016x}", rand::random::<u64>());
        let host_file = PathBuf::from(format!("/tmp/kiln-pwned-{token}"));
        // On the host (rpmbuild -bs) the macro does nothing; in the query it
        // touches a file in /tmp and says whether it could, and whether it
        // reached the network or the worker's files.
        let spec = format!(
            "\
%global pwn %(test -n \"$KILN_TEST_HOST\" && echo host || (touch {tf} && test -e {tf} && echo touched || echo no))
%global net %(test -e /proc/net/dev && grep -c : /proc/net/dev || echo 0)
%global seen %(test -e {work} && echo yes || echo no)
Name: pwned
Version: 1
Release: 1
Summary: x
License: MIT
BuildArch: noarch
Provides: ran-%{{pwn}}
Provides: ifaces-%{{net}}
Provides: work-visible-%{{seen}}
%description
x
%files
",
            tf = host_file.display(),
            work = tmp.path().display(),
        );
        let s = srpm(tmp.path(), "pwned", &spec);
        assert!(!host_file.exists());
        let m = evaluate(&tmp.path().join("work"), &s, "noarch", "", TIMEOUT)
            .await
            .unwrap();
        assert!(
            m.provides.iter().any(|p| p == "ran-touched"),
            "the spec's shell ran (in the sandbox): {:?}",
            m.provides
        );
        assert!(
            !host_file.exists(),
            "the spec's shell wrote the host's /tmp"
        );
        // Only the loopback interface: no network.
        assert!(
            m.provides.iter().any(|p| p == "ifaces-1"),
            "{:?}",
            m.provides
        );
        assert!(
            m.provides.iter().any(|p| p == "work-visible-no"),
            "{:?}",
            m.provides
        );
    }

    #[tokio::test]
    async fn a_broken_srpm_is_a_clear_failure() {
        bwrap_present();
        let tmp = tempfile::tempdir().unwrap();
        let garbage = tmp.path().join("garbage.src.rpm");
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(&garbage, bytes).unwrap();
        let q = pb::Query {
            id: 9,
            srpm_sha256: String::new(),
            srpm_size: 0,
            srpm_name: "garbage.src.rpm".into(),
            arch: "noarch".into(),
            disttag: String::new(),
            ..Default::default()
        };
        let r = answer(&q, &garbage, &tmp.path().join("work")).await;
        assert!(!r.ok);
        assert_eq!(r.id, 9);
        assert!(r.packages.is_empty() && r.provides.is_empty());
        assert!(
            r.error.contains("garbage.src.rpm") && r.error.contains("unpacking the SRPM failed"),
            "{}",
            r.error
        );
        assert!(!r.error.contains("Alien"), "{}", r.error);
    }

    #[tokio::test]
    async fn a_spec_that_fails_to_parse_says_why() {
        bwrap_present();
        let tmp = tempfile::tempdir().unwrap();
        // Valid for rpmbuild -bs on the host, broken in the query (the
        // macro is only defined there).
        let spec = "\
%{!?kiln_ok:%global kiln_ok %(test -n \"$KILN_TEST_HOST\" && echo 1 || echo 0)}
Name: broken
Version: 1
Release: 1
Summary: x
License: MIT
BuildArch: noarch
%if !%{kiln_ok}
%{error:deliberately broken in the sandbox}
%endif
%description
x
%files
";
        let s = srpm(tmp.path(), "broken", spec);
        let e = evaluate(&tmp.path().join("work"), &s, "noarch", "", TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rpmspec failed") && e.contains("deliberately broken"),
            "{e}"
        );
    }
}
