//! The client commands: submit, listings, logs, cancel, tokens, revoke.
//!
//! Output: everything a command prints on stdout goes through [`emit`], so a
//! reader that goes away (`kiln builds | head -1`) ends the command quietly
//! (exit status [`EXIT_STDOUT_CLOSED`]) instead of a panic; messages on
//! stderr go through [`say`]. Text that came from packages or workers (names,
//! versions, reasons, messages) passes through [`term_safe`] before it is
//! printed, so it cannot carry terminal escapes or bidi overrides.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use kiln_api::auth::{ApiTokenCreated, ApiTokenRequest, ApiTokenRevoked, ApiTokenView, Role};
use kiln_api::{
    BlobInfo, BuildState, BuildView, EmptyBody, ErrorCode, JobView, ListQuery, LogQuery,
    PackageView, RegenResponse, RevokeResponse, SubmitRequest, TokenRequest, TokenResponse,
    WorkerView,
};
use serde::Serialize;
use serde_json::Value;

use crate::client::{ApiError, Client};

/// Exit status when stdout was closed under us (a reader such as `head`
/// went away): what a process killed by SIGPIPE reports in a shell.
pub const EXIT_STDOUT_CLOSED: i32 = 141;

/// Exit status of `kiln submit --wait --timeout` when the limit passed
/// before the build ended (as `timeout(1)`).
pub const EXIT_WAIT_TIMEOUT: i32 = 124;

/// Stdout was closed by its reader: the command ends quietly.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `text` to stdout (locked, flushed). A closed pipe becomes
/// [`StdoutClosed`], which `main` turns into a quiet exit.
pub fn emit(text: &str) -> anyhow::Result<()> {
    emit_bytes(text.as_bytes())
}

fn emit_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// One line on stderr; a stderr that cannot be written to is ignored (no
/// panic as with `eprintln!`).
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Characters that must not reach a terminal as they are: C0 and C1
/// controls (ESC starts every terminal escape sequence), DEL, the Unicode
/// line and paragraph separators, and the bidi controls (overrides
/// U+202A–U+202E, isolates U+2066–U+2069, marks U+200E, U+200F, U+061C)
/// that make text display in another order than it reads.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    let n = u32::from(c);
    if n < 0x100 {
        let _ = write!(out, "\\x{n:02x}");
    } else {
        let _ = write!(out, "\\u{{{n:04x}}}");
    }
}

/// `s` fit for a terminal: every [unsafe](is_unsafe_char) character is
/// written as an escape (`\x1b`, `\x0a`, `\u{202e}`). A backslash is left as
/// it is: this is for reading, not for parsing back.
pub fn term_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Like [`term_safe`], but newlines and tabs stay: for messages that may
/// span lines (an error quoting a config file), not for table fields.
pub fn term_safe_lines(s: &str) -> Cow<'_, str> {
    let unsafe_here = |c: char| c != '\n' && c != '\t' && is_unsafe_char(c);
    if !s.chars().any(unsafe_here) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_here(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Pretty JSON with every [unsafe](is_unsafe_char) character written as a
/// `\uXXXX` escape. serde_json already escapes C0 controls; DEL, C1
/// controls and the bidi controls it writes as they are. They can only
/// occur inside strings, where `\uXXXX` means the same character, so the
/// document parses to the same value.
pub fn json_text(v: &Value) -> anyhow::Result<String> {
    let text = serde_json::to_string_pretty(v)?;
    if !text.chars().any(|c| c != '\n' && is_unsafe_char(c)) {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c != '\n' && is_unsafe_char(c) {
            // All of them are in the Basic Multilingual Plane.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn emit_json(v: &Value) -> anyhow::Result<()> {
    let mut text = json_text(v)?;
    text.push('\n');
    emit(&text)
}

/// `--json` output of a `kiln_api` answer, printed through a [`Value`]: keys
/// sorted, the same text as the master's answer printed as it came.
pub fn emit_value<T: Serialize>(v: &T) -> anyhow::Result<()> {
    emit_json(&serde_json::to_value(v)?)
}

/// A build log on its way to a terminal: raw bytes in, text out with every
/// control character escaped except newline, tab and the CR of a CRLF;
/// bidi controls escaped; bytes that are not UTF-8 written as `\xNN`.
/// Chunks may split characters and CRLF pairs anywhere.
#[derive(Default)]
pub struct TermLog {
    /// The start of a UTF-8 sequence cut by the end of the last chunk.
    carry: Vec<u8>,
    /// A CR was last: printed as is if a LF follows, else escaped.
    cr: bool,
}

impl TermLog {
    pub fn push(&mut self, chunk: &[u8], out: &mut String) {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(chunk);
        let mut rest: &[u8] = &data;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.text(s, out);
                    return;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // valid_up_to() bytes are UTF-8 by its contract.
                    self.text(std::str::from_utf8(good).unwrap_or_default(), out);
                    match e.error_len() {
                        Some(n) => {
                            self.flush_cr(out);
                            for b in &bad[..n] {
                                let _ = write!(out, "\\x{b:02x}");
                            }
                            rest = &bad[n..];
                        }
                        None => {
                            self.carry = bad.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The end of the log: a cut sequence or a lone CR is escaped.
    pub fn finish(&mut self, out: &mut String) {
        self.flush_cr(out);
        for b in std::mem::take(&mut self.carry) {
            let _ = write!(out, "\\x{b:02x}");
        }
    }

    fn flush_cr(&mut self, out: &mut String) {
        if std::mem::take(&mut self.cr) {
            out.push_str("\\x0d");
        }
    }

    fn text(&mut self, s: &str, out: &mut String) {
        for c in s.chars() {
            if self.cr {
                self.cr = false;
                if c == '\n' {
                    out.push_str("\r\n");
                    continue;
                }
                out.push_str("\\x0d");
            }
            match c {
                '\r' => self.cr = true,
                '\n' | '\t' => out.push(c),
                c if is_unsafe_char(c) => push_escaped(out, c),
                c => out.push(c),
            }
        }
    }
}

#[derive(Args)]
pub struct JsonArg {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
    /// How many, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Args)]
pub struct LogsArgs {
    pub job: i64,
    /// Keep printing until the job ends.
    #[arg(long, short)]
    pub follow: bool,
}

/// `kiln submit`: what a submission is, and how long to wait for it.
#[derive(Args)]
pub struct SubmitCmd {
    #[command(flatten)]
    pub args: SubmitArgs,
    /// With --wait: stop waiting after DURATION (seconds, or with a suffix:
    /// 90s, 10m, 2h). The build goes on; kiln exits with status 124.
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// A duration on the command line: whole seconds (`90`) or a number with a
/// suffix `s`, `m` or `h` (`90s`, `10m`, `2h`); more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let bad = || {
        format!("{text:?} is not a duration (seconds, or a number with s, m or h: 90s, 10m, 2h)")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(factor).ok_or_else(bad)?;
    if secs == 0 {
        return Err("the duration must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

/// A duration as `parse_duration` reads it: `2h`, `10m`, `90s`.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The source RPM.
    pub file: PathBuf,
    /// More source RPMs, with --batch or --chain (with --chain, `:`
    /// separates the groups).
    #[arg(value_name = "MORE")]
    pub more: Vec<PathBuf>,
    /// Submit them as one batch, ordered by what each needs and makes: a
    /// build waits until the builds it needs are published.
    #[arg(long, conflicts_with = "chain")]
    pub batch: bool,
    /// Submit them as a chain: groups separated by `:`, each group starts
    /// once the previous one is published.
    #[arg(long)]
    pub chain: bool,
    /// Target (default: the master's `default_target`, or its only target).
    #[arg(long)]
    pub target: Option<String>,
    /// Arches (comma separated; default: the target's).
    #[arg(long, value_delimiter = ',')]
    pub arch: Vec<String>,
    #[arg(long)]
    pub channel: Option<String>,
    /// Jump the queue.
    #[arg(long)]
    pub now: bool,
    /// Explicit priority (higher first).
    #[arg(long)]
    pub priority: Option<i64>,
    /// Never published to a repository.
    #[arg(long)]
    pub scratch: bool,
    /// CI-style build (equal versions are rebuilt).
    #[arg(long)]
    pub ci: bool,
    /// Follow the build; exit non-zero unless it succeeded (1; 124 when
    /// --timeout passed first).
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
}

fn hash_file(path: &std::path::Path) -> anyhow::Result<(String, u64)> {
    kiln_core::fsutil::sha256_file(path).with_context(|| format!("reading {}", path.display()))
}

async fn upload(c: &Client, path: &std::path::Path, sha: &str, size: u64) -> anyhow::Result<()> {
    let f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let show = std::io::stderr().is_terminal();
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    let stream = tokio_util_stream(f).map(move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            if show {
                let _ = write!(
                    std::io::stderr(),
                    "\r{}",
                    progress_line(sent, size, started.elapsed())
                );
            }
        }
        chunk
    });
    let rb = c
        .http
        .put(c.url(&format!("/api/v1/blobs/{sha}")))
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream));
    let r = c.send(rb).await;
    if show {
        say("");
    }
    let _: BlobInfo = r?.json().await.context("reading the master's answer")?;
    Ok(())
}

/// One line of the upload progress bar: bar, percent, amount and rate.
fn progress_line(sent: u64, size: u64, elapsed: std::time::Duration) -> String {
    const WIDTH: u64 = 30;
    let pct = (sent * 100).checked_div(size).unwrap_or(100).min(100);
    let filled = (sent * WIDTH).checked_div(size).unwrap_or(WIDTH).min(WIDTH) as usize;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { mib(sent) / secs } else { 0.0 };
    format!(
        "uploading [{}{}] {pct:>3}% {:.1}/{:.1} MiB {rate:.1} MiB/s",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        mib(sent),
        mib(size),
    )
}

/// A file as a stream of byte chunks.
fn tokio_util_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(f), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

pub async fn submit(cmd: SubmitCmd) -> anyhow::Result<i32> {
    let a = &cmd.args;
    let c = Client::from_env()?;
    if a.batch || a.chain {
        return submit_batch(&c, a).await;
    }
    if !a.more.is_empty() {
        anyhow::bail!("several source RPMs are submitted with --batch or --chain");
    }
    let (mut build, sent) = submit_build(&c, a).await?;
    let id = build.id;
    // The version gate answers at once with a build that is already final.
    let skipped = build.state == BuildState::Skipped;
    if !a.json {
        if skipped {
            say(&format!(
                "build {id} skipped: {}",
                term_safe(build.reason.as_deref().unwrap_or("no reason given"))
            ));
        } else {
            announce(&build, sent);
        }
    }
    if a.wait && !skipped {
        let waited = match cmd.timeout {
            None => Some(wait_for_build(&c, id).await?),
            Some(limit) => tokio::time::timeout(limit, wait_for_build(&c, id))
                .await
                .ok()
                .transpose()?,
        };
        match waited {
            Some(b) => build = b,
            None => return wait_timed_out(&c, build, sent, cmd.timeout, a.json).await,
        }
    }
    if a.json {
        emit_submitted(&build, sent)?;
    } else if a.wait {
        emit(&format_build(&build))?;
    } else {
        emit(&format!("{id}\n"))?;
    }
    Ok(if skipped {
        // A script reading --json gets the state there; without --wait
        // the exit says only that the submission was answered.
        i32::from(a.wait || !a.json)
    } else {
        i32::from(a.wait && build.state != BuildState::Succeeded)
    })
}

/// What `kiln submit --json` prints: the build, and how many bytes of the
/// SRPM were sent (`"upload": {"sent": N}`).
#[derive(Serialize)]
struct Submitted<'a> {
    #[serde(flatten)]
    build: &'a BuildView,
    upload: Upload,
}

/// The `upload` of [`Submitted`].
#[derive(Serialize)]
struct Upload {
    sent: u64,
}

fn emit_submitted(build: &BuildView, sent: u64) -> anyhow::Result<()> {
    emit_value(&Submitted {
        build,
        upload: Upload { sent },
    })
}

/// `build N accepted: …` on stderr, and the arches the package excludes.
fn announce(build: &BuildView, sent: u64) {
    let arches: Vec<_> = build.jobs.iter().map(|j| term_safe(&j.arch)).collect();
    say(&format!(
        "build {} accepted: {}-{} for {} (target {}){}",
        build.id,
        term_safe(&build.package),
        term_safe(&build.evr),
        arches.join(", "),
        term_safe(&build.target),
        if sent == 0 {
            ", SRPM already on the master"
        } else {
            ""
        }
    ));
    for e in &build.excluded_arches {
        say(&format!(
            "  not built for {}: {}",
            term_safe(&e.arch),
            term_safe(&e.reason)
        ));
    }
}

/// `--wait --timeout` ran out: say in what state the build is, print it
/// with --json, and exit with [`EXIT_WAIT_TIMEOUT`].
async fn wait_timed_out(
    c: &Client,
    accepted: BuildView,
    sent: u64,
    limit: Option<Duration>,
    json: bool,
) -> anyhow::Result<i32> {
    let id = accepted.id;
    let now = tokio::time::timeout(
        Duration::from_secs(10),
        c.get::<BuildView>(&format!("/api/v1/builds/{id}")),
    )
    .await;
    let build = match now {
        Ok(Ok(b)) => b,
        // The master is away too: say what we last knew.
        _ => accepted,
    };
    say(&format!(
        "build {id} still {} after {}; not waiting any longer",
        build.state,
        limit.map(show_duration).unwrap_or_default()
    ));
    if json {
        emit_submitted(&build, sent)?;
    }
    Ok(EXIT_WAIT_TIMEOUT)
}

/// Submit a build: the SRPM is uploaded only when the master lacks it.
/// Returns the accepted build and how many bytes were sent.
pub async fn submit_build(c: &Client, a: &SubmitArgs) -> anyhow::Result<(BuildView, u64)> {
    let name = a
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", a.file.display()))?
        .to_string();
    let (sha, size) = hash_file(&a.file)?;
    let req = SubmitRequest {
        srpm_sha256: sha.clone(),
        srpm_name: name,
        target: a.target.clone(),
        arches: (!a.arch.is_empty()).then(|| a.arch.clone()),
        channel: a.channel.clone(),
        priority: a.priority,
        now: a.now,
        scratch: a.scratch,
        ci: a.ci,
    };
    let mut sent = 0u64;
    let build: BuildView = match c.post("/api/v1/builds", &req).await {
        Ok(b) => b,
        Err(e) => match e.downcast_ref::<ApiError>() {
            Some(api) if api.code == ErrorCode::BlobMissing => {
                upload(c, &a.file, &sha, size).await?;
                sent = size;
                c.post("/api/v1/builds", &req).await?
            }
            _ => return Err(e),
        },
    };
    Ok((build, sent))
}

/// Wait for a build to end; rides over a master restart (an answer that
/// does not parse is an error, not a reason to retry).
pub async fn wait_for_build(c: &Client, id: i64) -> anyhow::Result<BuildView> {
    let mut delay = std::time::Duration::from_millis(200);
    let url = c.url(&format!("/api/v1/builds/{id}/wait"));
    loop {
        let body = match c.send(c.http.get(&url)).await {
            Ok(r) => r.bytes().await.map_err(anyhow::Error::new),
            Err(e) => Err(e),
        };
        match body {
            Ok(b) => return serde_json::from_slice(&b).context("reading the master's answer"),
            Err(e) if e.downcast_ref::<ApiError>().is_some() => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// An optional field of the master's answer for a table: `-` when absent,
/// package data made [safe](term_safe) for a terminal.
fn opt(v: Option<&str>) -> Cow<'_, str> {
    v.map_or(Cow::Borrowed("-"), term_safe)
}

/// `prefix` and the value made safe, or nothing.
fn opt_prefix(prefix: &str, v: Option<&str>) -> String {
    v.map(|v| format!("{prefix}{}", term_safe(v)))
        .unwrap_or_default()
}

/// A build, its jobs (and why they wait) and its artifacts, for people.
pub fn format_build(b: &BuildView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "build {}  {}  {}-{}  target {}  channel {}  priority {}",
        b.id,
        b.state,
        term_safe(&b.package),
        term_safe(&b.evr),
        term_safe(&b.target),
        term_safe(&b.channel),
        b.priority
    );
    if let Some(r) = &b.reason {
        let _ = writeln!(out, "  reason: {}", term_safe(r));
    }
    if let Some(s) = &b.submitter {
        let _ = writeln!(out, "  submitted by {}", term_safe(s));
    }
    if let Some(s) = &b.source {
        let _ = writeln!(
            out,
            "  from git: project {} ({} build of {}), triggered by {}{}{}",
            term_safe(&s.project),
            s.mode.as_str(),
            term_safe(&s.git_ref),
            s.trigger.as_str(),
            opt_prefix(" ", s.sender.as_deref()),
            opt_prefix(", delivery ", s.delivery.as_deref()),
        );
        let _ = writeln!(
            out,
            "    upstream  {} at {}",
            term_safe(&s.upstream),
            opt(s.upstream_commit.as_deref())
        );
        if let Some(p) = &s.packaging {
            let _ = writeln!(
                out,
                "    packaging {} at {}",
                term_safe(p),
                opt(s.packaging_commit.as_deref())
            );
        }
        if let Some(v) = &s.version {
            let _ = writeln!(
                out,
                "    version   {}{}",
                term_safe(v),
                opt_prefix(", release ", s.release.as_deref())
            );
        }
    }
    if !b.buildroot {
        let _ = writeln!(out, "  built on the worker's host, not in a buildroot");
    }
    for e in &b.excluded_arches {
        let _ = writeln!(
            out,
            "  not built for {}: {}",
            term_safe(&e.arch),
            term_safe(&e.reason)
        );
    }
    let _ = writeln!(out, "  jobs:");
    for j in &b.jobs {
        let _ = writeln!(
            out,
            "    {:>6}  {:<8} {:<10} worker {:<12} attempt {}{}",
            j.id,
            term_safe(&j.arch),
            j.state.as_str(),
            opt(j.worker.as_deref()),
            j.attempt,
            j.waiting
                .as_deref()
                .map(|w| format!("  waiting: {}", term_safe(w)))
                .or_else(|| j.message.as_deref().map(|m| format!("  {}", term_safe(m))))
                .unwrap_or_default()
        );
    }
    if !b.artifacts.is_empty() {
        let _ = writeln!(out, "  artifacts:");
        for a in &b.artifacts {
            let _ = writeln!(
                out,
                "    {:<8} {:<8} {:>10}  {}",
                term_safe(&a.arch),
                a.kind.as_str(),
                a.size,
                term_safe(&a.name)
            );
        }
    }
    out
}

pub async fn builds(a: ListArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<BuildView> = c
        .get_with(
            "/api/v1/builds",
            &ListQuery {
                limit: Some(a.limit),
            },
        )
        .await?;
    if a.json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<10} {:<12} {:<28} {:<20}",
        "ID", "STATE", "TARGET", "PACKAGE", "ARCHES"
    );
    for b in &v {
        let arches: Vec<String> = b
            .jobs
            .iter()
            .map(|j| format!("{}:{}", term_safe(&j.arch), j.state))
            .collect();
        let _ = writeln!(
            out,
            "{:>6}  {:<10} {:<12} {:<28} {}",
            b.id,
            b.state.as_str(),
            term_safe(&b.target),
            format!("{}-{}", term_safe(&b.package), term_safe(&b.evr)),
            arches.join(" ")
        );
    }
    emit(&out)?;
    Ok(0)
}

pub async fn build_show(id: i64, json: bool) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: BuildView = c.get(&format!("/api/v1/builds/{id}")).await?;
    if json {
        emit_value(&v)?;
    } else {
        emit(&format_build(&v))?;
    }
    Ok(0)
}

pub async fn jobs(a: ListArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<JobView> = c
        .get_with(
            "/api/v1/jobs",
            &ListQuery {
                limit: Some(a.limit),
            },
        )
        .await?;
    if a.json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:>6}  {:<8} {:<10} {:<14} {:>7}  NOTE",
        "JOB", "BUILD", "ARCH", "STATE", "WORKER", "ATTEMPT"
    );
    for j in &v {
        let _ = writeln!(
            out,
            "{:>6}  {:>6}  {:<8} {:<10} {:<14} {:>7}  {}",
            j.id,
            j.build,
            term_safe(&j.arch),
            j.state.as_str(),
            opt(j.worker.as_deref()),
            j.attempt,
            term_safe(j.waiting.as_deref().or(j.message.as_deref()).unwrap_or(""))
        );
    }
    emit(&out)?;
    Ok(0)
}

/// The log as the build wrote it when stdout is a file or a pipe; on a
/// terminal, with control characters escaped ([`TermLog`]) so a build
/// cannot move the cursor, clear the screen or retitle the window.
pub async fn logs(a: LogsArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let url = c.url(&format!("/api/v1/jobs/{}/log", a.job));
    let query = LogQuery { follow: a.follow };
    let r = c.send(c.http.get(url).query(&query)).await?;
    let mut body = r.bytes_stream();
    let mut term = std::io::stdout().is_terminal().then(TermLog::default);
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the log stream broke off")?;
        match &mut term {
            None => emit_bytes(&chunk)?,
            Some(t) => {
                text.clear();
                t.push(&chunk, &mut text);
                emit(&text)?;
            }
        }
    }
    if let Some(t) = &mut term {
        text.clear();
        t.finish(&mut text);
        emit(&text)?;
    }
    Ok(0)
}

pub async fn cancel(id: i64) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: BuildView = c
        .post(&format!("/api/v1/builds/{id}/cancel"), &EmptyBody {})
        .await?;
    emit(&format!("build {id} {}\n", v.state))?;
    Ok(0)
}

pub async fn workers(json: bool) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<WorkerView> = c.get("/api/v1/workers").await?;
    if json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<10} {:<22} {:<16} {:>8}  LAST SEEN",
        "NAME", "STATE", "ARCHES", "CHANNELS", "RUNNING"
    );
    for w in &v {
        let state = if w.revoked {
            "revoked"
        } else if w.draining {
            "draining"
        } else if w.connected {
            "connected"
        } else {
            "offline"
        };
        let join = |list: &[String]| {
            list.iter()
                .map(|x| term_safe(x))
                .collect::<Vec<_>>()
                .join(",")
        };
        let last = w
            .last_seen
            .map(|ms| {
                let ago = (kiln_store::now_ms() - ms) / 1000;
                format!("{ago} s ago")
            })
            .unwrap_or_else(|| "never".into());
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:<22} {:<16} {:>8}  {last}",
            term_safe(&w.name),
            state,
            join(&w.arches),
            join(&w.channels),
            format!("{}/{}", w.running, w.capacity)
        );
    }
    emit(&out)?;
    Ok(0)
}

pub async fn token_create(worker: &str) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let req = TokenRequest {
        worker: worker.to_string(),
    };
    let v: TokenResponse = c.post("/api/v1/tokens", &req).await?;
    emit(&format!("{}\n", term_safe(&v.token)))?;
    Ok(0)
}

/// `kiln token create --name N --role R`: prints the token alone.
pub async fn api_token_create(name: &str, role: &str, email: Option<&str>) -> anyhow::Result<i32> {
    kiln_core::names::check_ident("token", name)?;
    let role: Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let c = Client::from_env()?;
    let req = ApiTokenRequest {
        name: name.to_string(),
        role,
        email: email.map(str::to_string),
    };
    let v: ApiTokenCreated = c.post("/api/v1/api-tokens", &req).await?;
    emit(&format!("{}\n", term_safe(&v.token)))?;
    Ok(0)
}

/// A time of the master (Unix ms) as UTC, to the minute.
fn utc(ms: i64) -> String {
    let (y, m, d, h, mi, _) = kiln_core::time::utc(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}")
}

/// `kiln token ls [--json]`: never a token or its hash (the master has
/// only the hash, and does not send it).
pub async fn api_token_ls(json: bool) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<ApiTokenView> = c.get("/api/v1/api-tokens").await?;
    if json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<10} {:<17} {:<17} REVOKED",
        "NAME", "ROLE", "CREATED (UTC)", "LAST USED"
    );
    for t in &v {
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<17} {:<17} {}",
            term_safe(&t.name),
            t.role,
            utc(t.created_at),
            t.last_used_at.map_or_else(|| "never".to_string(), utc),
            t.revoked_at.map_or_else(|| "-".to_string(), utc)
        );
    }
    emit(&out)?;
    Ok(0)
}

/// `kiln token revoke NAME`.
pub async fn api_token_revoke(name: &str) -> anyhow::Result<i32> {
    kiln_core::names::check_ident("token", name)?;
    let c = Client::from_env()?;
    let v: ApiTokenRevoked = c
        .post(&format!("/api/v1/api-tokens/{name}/revoke"), &EmptyBody {})
        .await?;
    emit(&format!(
        "token {} revoked ({} web sessions ended)\n",
        term_safe(&v.name),
        v.sessions_ended
    ))?;
    Ok(0)
}

pub async fn revoke(name: &str) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let _: RevokeResponse = c
        .post(&format!("/api/v1/workers/{name}/revoke"), &EmptyBody {})
        .await?;
    emit(&format!("worker {} revoked\n", term_safe(name)))?;
    Ok(0)
}

/// `rpmdev-vercmp`'s convention: print the relation, exit 0 when equal, 11
/// when A is newer, 12 when B is newer.
pub fn vercmp(a: &str, b: &str) -> anyhow::Result<i32> {
    use std::cmp::Ordering;
    let (a_, b_) = (term_safe(a), term_safe(b));
    let (rel, code) = match kiln_core::srpm::compare_evr(a, b) {
        Ordering::Equal => ("==", 0),
        Ordering::Greater => (">", 11),
        Ordering::Less => ("<", 12),
    };
    emit(&format!("{a_} {rel} {b_}\n"))?;
    Ok(code)
}

fn check_target(target: &str) -> anyhow::Result<()> {
    kiln_core::names::check_ident("target", target)?;
    Ok(())
}

pub async fn repo_file(target: &str) -> anyhow::Result<i32> {
    check_target(target)?;
    let c = Client::from_env()?;
    let r = c
        .send(c.http.get(c.url(&format!("/api/v1/targets/{target}/repo"))))
        .await?;
    emit(&r.text().await.context("reading the .repo file")?)?;
    Ok(0)
}

pub async fn repo_ls(target: &str, json: bool) -> anyhow::Result<i32> {
    check_target(target)?;
    let c = Client::from_env()?;
    let v: Vec<PackageView> = c.get(&format!("/api/v1/targets/{target}/packages")).await?;
    if json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<10} {:<50} {:>7}", "REPO", "PACKAGE", "BUILD");
    for p in &v {
        let _ = writeln!(
            out,
            "{:<10} {:<50} {:>7}",
            term_safe(&p.repo),
            format!(
                "{}-{}{}-{}.{}",
                term_safe(&p.name),
                if p.epoch > 0 {
                    format!("{}:", p.epoch)
                } else {
                    String::new()
                },
                term_safe(&p.version),
                term_safe(&p.release),
                term_safe(&p.arch)
            ),
            p.build
        );
    }
    emit(&out)?;
    Ok(0)
}

pub async fn repo_regen(target: &str) -> anyhow::Result<i32> {
    check_target(target)?;
    let c = Client::from_env()?;
    let _: RegenResponse = c
        .post(&format!("/api/v1/targets/{target}/regen"), &EmptyBody {})
        .await?;
    emit(&format!("regeneration of {target} queued\n"))?;
    Ok(0)
}

/// `kiln submit A B … --batch` / `--chain A : B C`: upload what the master
/// lacks, then submit them as one batch.
async fn submit_batch(c: &Client, a: &SubmitArgs) -> anyhow::Result<i32> {
    if a.wait {
        anyhow::bail!("--wait is not available for a batch yet: follow it with `kiln batch show`");
    }
    let mut files: Vec<&PathBuf> = Vec::new();
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    for f in std::iter::once(&a.file).chain(&a.more) {
        if f.as_os_str() == ":" {
            if !a.chain {
                anyhow::bail!("`:` separates the groups of a --chain");
            }
            groups.push(Vec::new());
            continue;
        }
        if let Some(g) = groups.last_mut() {
            g.push(files.len());
        }
        files.push(f);
    }
    let mut builds = Vec::new();
    let mut sent = 0u64;
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", f.display()))?
            .to_string();
        let (sha, size) = hash_file(f)?;
        let have: anyhow::Result<kiln_api::BlobInfo> = c.get(&format!("/api/v1/blobs/{sha}")).await;
        if have.is_err() {
            upload(c, f, &sha, size).await?;
            sent += size;
        }
        builds.push(SubmitRequest {
            srpm_sha256: sha,
            srpm_name: name,
            target: None,
            arches: (!a.arch.is_empty()).then(|| a.arch.clone()),
            channel: a.channel.clone(),
            priority: a.priority,
            now: a.now,
            scratch: a.scratch,
            ci: a.ci,
        });
    }
    let req = kiln_api::BatchRequest {
        target: a.target.clone(),
        builds,
        chain: a.chain.then_some(groups),
    };
    let done: kiln_api::BatchSubmitted = c.post("/api/v1/batches", &req).await?;
    if a.json {
        emit_value(&done)?;
    } else {
        say(&format!(
            "batch {} accepted: {} builds ({} bytes sent)",
            done.batch,
            done.builds.len(),
            sent
        ));
        emit(&format!("{}\n", done.batch))?;
    }
    Ok(0)
}

/// `kiln batch show ID`.
pub async fn batch_show(id: i64, json: bool) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let b: kiln_api::BatchView = c.get(&format!("/api/v1/batches/{id}")).await?;
    if json {
        emit_value(&b)?;
        return Ok(0);
    }
    let mut out = format!("batch {}  target {}\n", b.id, term_safe(&b.target));
    for m in &b.builds {
        let waits: Vec<String> = m.waits_for.iter().map(|w| w.to_string()).collect();
        let _ = writeln!(
            out,
            "  build {:>6}  {:<10} {}-{}{}{}",
            m.id,
            m.state.as_str(),
            term_safe(&m.package),
            term_safe(&m.evr),
            if waits.is_empty() {
                String::new()
            } else {
                format!("  waits for {}", waits.join(", "))
            },
            m.reason
                .as_deref()
                .map(|r| format!("  ({})", term_safe(r)))
                .unwrap_or_default()
        );
    }
    emit(&out)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn terminal_escapes_and_bidi_controls_are_shown_not_obeyed() {
        assert!(matches!(term_safe("fping-5.1-1"), Cow::Borrowed(_)));
        assert_eq!(term_safe("naïve ünïcode ✓"), "naïve ünïcode ✓");
        assert_eq!(term_safe("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(term_safe("1.0\n2"), "1.0\\x0a2");
        assert_eq!(term_safe("x\ty\rz\x07\x7f"), "x\\x09y\\x0dz\\x07\\x7f");
        // C1 controls: U+009B is CSI on some terminals.
        assert_eq!(term_safe("\u{9b}31m"), "\\x9b31m");
        assert_eq!(term_safe("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            term_safe_lines("line 1\n\tline 2\x1b[K\r"),
            "line 1\n\tline 2\\x1b[K\\x0d"
        );
        for c in [
            '\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}', '\u{200f}', '\u{2028}',
        ] {
            let text = format!("a{c}b");
            let out = term_safe(&text);
            assert!(!out.contains(c), "{c:?} passed: {out}");
            assert!(out.starts_with("a\\u{") && out.ends_with("}b"), "{out}");
        }
        // What the tables print goes through opt() or term_safe().
        assert_eq!(opt(Some("p\x1b]0;pwned\x07")), "p\\x1b]0;pwned\\x07");
        assert_eq!(opt(None), "-");
    }

    #[test]
    fn the_human_build_view_escapes_package_data() {
        let b = BuildView {
            id: 15,
            target: "t1".into(),
            package: "evil\u{1b}[2J".into(),
            evr: "1.0-1\u{202e}".into(),
            srpm_name: "evil-1.0-1.src.rpm".into(),
            srpm_sha256: "ab".into(),
            srpm_size: 1,
            channel: "default".into(),
            disttag: String::new(),
            priority: 0,
            scratch: false,
            ci: false,
            state: BuildState::Failed,
            reason: Some("bad\nnews\u{1b}[31m".into()),
            excluded_arches: vec![kiln_api::ExcludedArch {
                arch: "s390x".into(),
                reason: "no\u{7}".into(),
            }],
            created_at: 0,
            finished_at: None,
            publish: None,
            publish_error: None,
            buildroot: false,
            batch: None,
            waits_for: vec![],
            source: None,
            submitter: Some("mallory\u{1b}[8m".into()),
            image: None,
            jobs: vec![JobView {
                id: 3,
                build: 15,
                arch: "x86_64".into(),
                state: kiln_api::JobState::Failed,
                worker: Some("w\u{1b}".into()),
                attempt: 1,
                message: Some("exit 1\u{1b}[0m".into()),
                created_at: 0,
                started_at: None,
                finished_at: None,
                waiting: None,
            }],
            artifacts: vec![kiln_api::ArtifactView {
                job: 3,
                arch: "x86_64".into(),
                name: "build.log\u{1b}".into(),
                kind: kiln_api::ArtifactKind::Log,
                size: 10,
                sha256: "cd".into(),
                nevra: None,
            }],
        };
        let text = format_build(&b);
        assert!(
            !text.chars().any(|c| c != '\n' && is_unsafe_char(c)),
            "{text:?}"
        );
        assert!(text.contains("evil\\x1b[2J-1.0-1\\u{202e}"), "{text}");
        assert!(text.contains("reason: bad\\x0anews\\x1b[31m"), "{text}");
        assert!(text.contains("built on the worker's host, not in a buildroot"));
        assert!(text.contains("submitted by mallory\\x1b[8m"), "{text}");
        assert_eq!(text.lines().count(), 9, "{text}");
    }

    #[test]
    fn typed_json_output_is_the_text_the_untyped_answer_printed() {
        let answer = r#"{"id":4,"target":"t","package":"p","evr":"1-1","srpm_name":"p-1-1.src.rpm",
            "srpm_sha256":"ab","srpm_size":10,"channel":"default","disttag":".t","priority":0,
            "scratch":false,"ci":false,"state":"queued","reason":null,"excluded_arches":[],
            "created_at":7,"finished_at":null,"publish":null,"publish_error":null,"buildroot":false,"batch":null,"waits_for":[],"source":null,
            "submitter":null,"image":null,"jobs":[{"id":9,"build":4,"arch":"x86_64","state":"pending","worker":null,"attempt":0,
            "message":null,"created_at":7,"started_at":null,"finished_at":null,"waiting":"no worker"}],
            "artifacts":[]}"#;
        let mut raw: Value = serde_json::from_str(answer).unwrap();
        let typed: BuildView = serde_json::from_str(answer).unwrap();
        let again = serde_json::to_value(&typed).unwrap();
        assert_eq!(json_text(&again).unwrap(), json_text(&raw).unwrap());
        // kiln submit --json adds the upload.
        raw["upload"] = serde_json::json!({ "sent": 5 });
        let submitted = Submitted {
            build: &typed,
            upload: Upload { sent: 5 },
        };
        assert_eq!(
            json_text(&serde_json::to_value(&submitted).unwrap()).unwrap(),
            json_text(&raw).unwrap()
        );
    }

    #[test]
    fn json_output_escapes_bidi_and_c1_and_parses_back_the_same() {
        let v =
            serde_json::json!({"package": "a\u{202e}b\u{85}c\u{7f}d\u{1b}e", "n": [1, "\u{2066}"]});
        let text = json_text(&v).unwrap();
        assert!(
            !text.chars().any(|c| c != '\n' && is_unsafe_char(c)),
            "{text:?}"
        );
        assert!(text.contains("a\\u202eb\\u0085c\\u007fd\\u001be"), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        // Nothing to escape: serde_json's own text.
        let plain = serde_json::json!({"package": "fping", "evr": "5.1-1"});
        assert_eq!(
            json_text(&plain).unwrap(),
            serde_json::to_string_pretty(&plain).unwrap()
        );
    }

    fn term_log(chunks: &[&[u8]]) -> String {
        let mut t = TermLog::default();
        let mut out = String::new();
        for c in chunks {
            t.push(c, &mut out);
        }
        t.finish(&mut out);
        out
    }

    #[test]
    fn a_log_on_a_terminal_keeps_lines_and_escapes_the_rest() {
        assert_eq!(
            term_log(&[b"make all\n\tcc -c x.c\r\n"]),
            "make all\n\tcc -c x.c\r\n"
        );
        assert_eq!(
            term_log(&[b"\x1b[2J\x1b]0;title\x07ok\n"]),
            "\\x1b[2J\\x1b]0;title\\x07ok\n"
        );
        // A lone CR (overwriting the line) is shown.
        assert_eq!(term_log(&[b"10%\r20%\n"]), "10%\\x0d20%\n");
        assert_eq!(term_log(&[b"end\r"]), "end\\x0d");
        // CRLF and UTF-8 split across chunks.
        assert_eq!(term_log(&[b"a\r", b"\nb"]), "a\r\nb");
        let e = "é✓".as_bytes();
        assert_eq!(term_log(&[&e[..1], &e[1..3], &e[3..]]), "é✓");
        // Bidi override split across chunks, and invalid bytes.
        let rlo = "\u{202e}".as_bytes();
        assert_eq!(term_log(&[b"x", &rlo[..2], &rlo[2..], b"y"]), "x\\u{202e}y");
        assert_eq!(term_log(&[b"a\xff\x9bb"]), "a\\xff\\x9bb");
        assert_eq!(term_log(&[b"cut\xe2\x9c"]), "cut\\xe2\\x9c");
        assert_eq!(term_log(&[b"a\r\xffb"]), "a\\x0d\\xffb");
    }

    #[test]
    fn durations_in_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "1.5m",
            "-3",
            "5d",
            "5 m",
            "m5",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(show_duration(Duration::from_secs(2)), "2s");
        assert_eq!(show_duration(Duration::from_secs(90)), "90s");
        assert_eq!(show_duration(Duration::from_secs(600)), "10m");
        assert_eq!(show_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn the_progress_bar_fills_with_the_upload() {
        let half = progress_line(5 << 20, 10 << 20, Duration::from_secs(2));
        assert_eq!(
            half,
            "uploading [###############---------------]  50% 5.0/10.0 MiB 2.5 MiB/s"
        );
        let done = progress_line(10 << 20, 10 << 20, Duration::from_secs(4));
        assert!(
            done.contains("[##############################] 100%"),
            "{done}"
        );
        let empty = progress_line(0, 0, Duration::ZERO);
        assert!(empty.contains("100%"), "{empty}");
    }
}
