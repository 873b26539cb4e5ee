//! The client commands: submit, listings, logs, cancel, tokens, revoke.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;

use crate::client::{ApiError, Client};

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

#[derive(Args)]
pub struct SubmitArgs {
    /// The source RPM.
    pub file: PathBuf,
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
    /// Follow the build; exit non-zero unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
}

fn hash_file(path: &std::path::Path) -> anyhow::Result<(String, u64)> {
    kiln_core::fsutil::sha256_file(path).with_context(|| format!("reading {}", path.display()))
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

async fn upload(c: &Client, path: &std::path::Path, sha: &str, size: u64) -> anyhow::Result<()> {
    let f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let show = is_tty(2);
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    let stream = tokio_util_stream(f).map(move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            if show {
                eprint!("\r{}", progress_line(sent, size, started.elapsed()));
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
        eprintln!();
    }
    r.map(|_| ())
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

pub async fn submit(a: SubmitArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let (mut build, sent) = submit_with(&c, &a).await?;
    let id = build["id"]
        .as_i64()
        .context("the master's answer has no build id")?;
    if !a.json {
        let arches: Vec<&str> = build["jobs"]
            .as_array()
            .map(|j| j.iter().filter_map(|j| j["arch"].as_str()).collect())
            .unwrap_or_default();
        eprintln!(
            "build {id} accepted: {}-{} for {} (target {}){}",
            build["package"].as_str().unwrap_or("?"),
            build["evr"].as_str().unwrap_or("?"),
            arches.join(", "),
            build["target"].as_str().unwrap_or("?"),
            if sent == 0 {
                ", SRPM already on the master"
            } else {
                ""
            }
        );
        if let Some(ex) = build["excluded_arches"].as_array() {
            for e in ex {
                eprintln!(
                    "  not built for {}: {}",
                    e["arch"].as_str().unwrap_or("?"),
                    e["reason"].as_str().unwrap_or("?")
                );
            }
        }
    }
    if a.wait {
        build = wait_build(&c, id).await?;
    }
    if a.json {
        build["upload"] = serde_json::json!({ "sent": sent });
        println!("{}", serde_json::to_string_pretty(&build)?);
    } else if a.wait {
        print_build(&build);
    } else {
        println!("{id}");
    }
    let state = build["state"].as_str().unwrap_or("");
    Ok(if a.wait && state != "succeeded" { 1 } else { 0 })
}

/// Submit a build: the SRPM is uploaded only when the master lacks it.
/// Returns the accepted build and how many bytes were sent.
pub async fn submit_with(c: &Client, a: &SubmitArgs) -> anyhow::Result<(Value, u64)> {
    let name = a
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", a.file.display()))?
        .to_string();
    let (sha, size) = hash_file(&a.file)?;
    let mut body = serde_json::json!({
        "srpm_sha256": sha,
        "srpm_name": name,
        "now": a.now,
        "scratch": a.scratch,
        "ci": a.ci,
    });
    if let Some(t) = &a.target {
        body["target"] = t.clone().into();
    }
    if !a.arch.is_empty() {
        body["arches"] = a.arch.clone().into();
    }
    if let Some(ch) = &a.channel {
        body["channel"] = ch.clone().into();
    }
    if let Some(p) = a.priority {
        body["priority"] = p.into();
    }
    let mut sent = 0u64;
    let build: Value = match c.post("/api/v1/builds", &body).await {
        Ok(b) => b,
        Err(e) => match e.downcast_ref::<ApiError>() {
            Some(api) if api.code == "blob_missing" => {
                upload(c, &a.file, &sha, size).await?;
                sent = size;
                c.post("/api/v1/builds", &body).await?
            }
            _ => return Err(e),
        },
    };
    Ok((build, sent))
}

/// Wait for a build to end; rides over a master restart.
pub async fn wait_build(c: &Client, id: i64) -> anyhow::Result<Value> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match c.get::<Value>(&format!("/api/v1/builds/{id}/wait")).await {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<ApiError>().is_some() => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn print_build(b: &Value) {
    println!(
        "build {}  {}  {}-{}  target {}  channel {}  priority {}",
        s(&b["id"]),
        s(&b["state"]),
        s(&b["package"]),
        s(&b["evr"]),
        s(&b["target"]),
        s(&b["channel"]),
        s(&b["priority"])
    );
    if let Some(r) = b["reason"].as_str() {
        println!("  reason: {r}");
    }
    for e in b["excluded_arches"].as_array().into_iter().flatten() {
        println!("  not built for {}: {}", s(&e["arch"]), s(&e["reason"]));
    }
    println!("  jobs:");
    for j in b["jobs"].as_array().into_iter().flatten() {
        println!(
            "    {:>6}  {:<8} {:<10} worker {:<12} attempt {}{}",
            s(&j["id"]),
            s(&j["arch"]),
            s(&j["state"]),
            s(&j["worker"]),
            s(&j["attempt"]),
            j["waiting"]
                .as_str()
                .map(|w| format!("  waiting: {w}"))
                .or_else(|| j["message"].as_str().map(|m| format!("  {m}")))
                .unwrap_or_default()
        );
    }
    let arts = b["artifacts"].as_array().map(|a| a.len()).unwrap_or(0);
    if arts > 0 {
        println!("  artifacts:");
        for a in b["artifacts"].as_array().into_iter().flatten() {
            println!(
                "    {:<8} {:<8} {:>10}  {}",
                s(&a["arch"]),
                s(&a["kind"]),
                s(&a["size"]),
                s(&a["name"])
            );
        }
    }
}

pub async fn builds(a: ListArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<Value> = c.get(&format!("/api/v1/builds?limit={}", a.limit)).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:>6}  {:<10} {:<12} {:<28} {:<20}",
        "ID", "STATE", "TARGET", "PACKAGE", "ARCHES"
    );
    for b in &v {
        let arches: Vec<String> = b["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| format!("{}:{}", s(&j["arch"]), s(&j["state"])))
            .collect();
        println!(
            "{:>6}  {:<10} {:<12} {:<28} {}",
            s(&b["id"]),
            s(&b["state"]),
            s(&b["target"]),
            format!("{}-{}", s(&b["package"]), s(&b["evr"])),
            arches.join(" ")
        );
    }
    Ok(0)
}

pub async fn build_show(id: i64, json: bool) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Value = c.get(&format!("/api/v1/builds/{id}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_build(&v);
    }
    Ok(0)
}

pub async fn jobs(a: ListArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<Value> = c.get(&format!("/api/v1/jobs?limit={}", a.limit)).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:>6}  {:>6}  {:<8} {:<10} {:<14} {:>7}  NOTE",
        "JOB", "BUILD", "ARCH", "STATE", "WORKER", "ATTEMPT"
    );
    for j in &v {
        println!(
            "{:>6}  {:>6}  {:<8} {:<10} {:<14} {:>7}  {}",
            s(&j["id"]),
            s(&j["build"]),
            s(&j["arch"]),
            s(&j["state"]),
            s(&j["worker"]),
            s(&j["attempt"]),
            j["waiting"]
                .as_str()
                .or(j["message"].as_str())
                .unwrap_or("")
        );
    }
    Ok(0)
}

pub async fn logs(a: LogsArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let url = c.url(&format!(
        "/api/v1/jobs/{}/log{}",
        a.job,
        if a.follow { "?follow=true" } else { "" }
    ));
    let r = c.send(c.http.get(url)).await?;
    let mut body = r.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the log stream broke off")?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(0)
}

pub async fn cancel(id: i64) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Value = c
        .post(
            &format!("/api/v1/builds/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await?;
    println!("build {id} {}", s(&v["state"]));
    Ok(0)
}

pub async fn workers(json: bool) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<Value> = c.get("/api/v1/workers").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<16} {:<10} {:<22} {:<16} {:>8}  LAST SEEN",
        "NAME", "STATE", "ARCHES", "CHANNELS", "RUNNING"
    );
    for w in &v {
        let state = if w["revoked"].as_bool() == Some(true) {
            "revoked"
        } else if w["draining"].as_bool() == Some(true) {
            "draining"
        } else if w["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "offline"
        };
        let join = |k: &str| {
            w[k].as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        let last = w["last_seen"]
            .as_i64()
            .map(|ms| {
                let ago = (kiln_store::now_ms() - ms) / 1000;
                format!("{ago} s ago")
            })
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<16} {:<10} {:<22} {:<16} {:>8}  {last}",
            s(&w["name"]),
            state,
            join("arches"),
            join("channels"),
            format!("{}/{}", s(&w["running"]), s(&w["capacity"]))
        );
    }
    Ok(0)
}

pub async fn token_create(worker: &str) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Value = c
        .post("/api/v1/tokens", &serde_json::json!({ "worker": worker }))
        .await?;
    match v["token"].as_str() {
        Some(t) => println!("{t}"),
        None => bail!("the master's answer has no token"),
    }
    Ok(0)
}

pub async fn revoke(name: &str) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let _: Value = c
        .post(
            &format!("/api/v1/workers/{name}/revoke"),
            &serde_json::json!({}),
        )
        .await?;
    println!("worker {name} revoked");
    Ok(0)
}

/// `rpmdev-vercmp`'s convention: print the relation, exit 0 when equal, 11
/// when A is newer, 12 when B is newer.
pub fn vercmp(a: &str, b: &str) -> i32 {
    use std::cmp::Ordering;
    match kiln_core::srpm::compare_evr(a, b) {
        Ordering::Equal => {
            println!("{a} == {b}");
            0
        }
        Ordering::Greater => {
            println!("{a} > {b}");
            11
        }
        Ordering::Less => {
            println!("{a} < {b}");
            12
        }
    }
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
    print!("{}", r.text().await.context("reading the .repo file")?);
    Ok(0)
}

pub async fn repo_ls(target: &str, json: bool) -> anyhow::Result<i32> {
    check_target(target)?;
    let c = Client::from_env()?;
    let v: Vec<Value> = c.get(&format!("/api/v1/targets/{target}/packages")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<10} {:<50} {:>7}", "REPO", "PACKAGE", "BUILD");
    for p in &v {
        let epoch = p["epoch"].as_u64().unwrap_or(0);
        println!(
            "{:<10} {:<50} {:>7}",
            s(&p["repo"]),
            format!(
                "{}-{}{}-{}.{}",
                s(&p["name"]),
                if epoch > 0 {
                    format!("{epoch}:")
                } else {
                    String::new()
                },
                s(&p["version"]),
                s(&p["release"]),
                s(&p["arch"])
            ),
            s(&p["build"])
        );
    }
    Ok(0)
}

pub async fn repo_regen(target: &str) -> anyhow::Result<i32> {
    check_target(target)?;
    let c = Client::from_env()?;
    let _: Value = c
        .post(
            &format!("/api/v1/targets/{target}/regen"),
            &serde_json::json!({}),
        )
        .await?;
    println!("regeneration of {target} queued");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::progress_line;
    use std::time::Duration;

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
