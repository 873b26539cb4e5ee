//! `kiln release promote|ls|rollback`: image builds promoted to releases
//! (issue 12), through the master's API (`/api/v1/releases/{name}`).

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use kiln_api::release::{PromoteAnswer, PromoteRequest, ReleaseView, RollbackRequest};

use crate::client::Client;
use crate::commands::{emit, emit_value, term_safe};

#[derive(Subcommand)]
pub enum ReleaseCmd {
    /// Promote a succeeded image build to a channel of a release (admin):
    /// its files linked under /releases/NAME/CHANNEL/VERSION/ with
    /// SHA256SUMS and its signature, `latest` switched.
    Promote(PromoteArgs),
    /// A release's channels, versions and history.
    Ls(LsArgs),
    /// Point a channel's `latest` back at the version promoted before (admin).
    Rollback(RollbackArgs),
}

#[derive(Args)]
pub struct PromoteArgs {
    /// The image build's id.
    pub build: i64,
    /// The release's name.
    #[arg(long)]
    pub release: String,
    /// The channel (default `stable`).
    #[arg(long)]
    pub channel: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LsArgs {
    /// The release's name.
    pub name: String,
    /// Print it as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RollbackArgs {
    /// The release's name.
    pub name: String,
    /// The channel to roll back.
    #[arg(long)]
    pub channel: String,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: ReleaseCmd) -> anyhow::Result<i32> {
    match cmd {
        ReleaseCmd::Promote(a) => promote(a).await,
        ReleaseCmd::Ls(a) => ls(a).await,
        ReleaseCmd::Rollback(a) => rollback(a).await,
    }
}

fn answer(a: &PromoteAnswer, json: bool) -> anyhow::Result<i32> {
    if json {
        emit_value(a)?;
    } else {
        let mut out = format!("{}\n", term_safe(&a.message));
        let _ = writeln!(out, "files at {}", term_safe(&a.url));
        for f in &a.files {
            let _ = writeln!(
                out,
                "  {}  {:>12}  {}",
                f.sha256,
                f.size,
                term_safe(&f.path)
            );
        }
        emit(&out)?;
    }
    Ok(0)
}

async fn promote(a: PromoteArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let r: PromoteAnswer = c
        .post(
            &format!("/api/v1/releases/{}/promote", urlencode(&a.release)),
            &PromoteRequest {
                build: a.build,
                channel: a.channel,
            },
        )
        .await?;
    answer(&r, a.json)
}

async fn rollback(a: RollbackArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let r: PromoteAnswer = c
        .post(
            &format!("/api/v1/releases/{}/rollback", urlencode(&a.name)),
            &RollbackRequest { channel: a.channel },
        )
        .await?;
    answer(&r, a.json)
}

async fn ls(a: LsArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: ReleaseView = c
        .get(&format!("/api/v1/releases/{}", urlencode(&a.name)))
        .await?;
    if a.json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = format!("release {}\n", term_safe(&v.name));
    for ch in &v.channels {
        let _ = writeln!(
            out,
            "channel {} (latest: {})",
            term_safe(&ch.name),
            term_safe(ch.latest.as_deref().unwrap_or("-"))
        );
        for ver in &ch.versions {
            let _ = writeln!(
                out,
                "  {} {}  build {}",
                if ver.latest { "*" } else { " " },
                term_safe(&ver.version),
                ver.build
            );
        }
    }
    let _ = writeln!(out, "history (newest first):");
    for h in &v.history {
        let _ = writeln!(
            out,
            "  {:>5}  {:<8} {:<12} {:<32} build {:<6} by {} at {}",
            h.id,
            term_safe(&h.action),
            term_safe(&h.channel),
            term_safe(&h.version),
            h.build,
            term_safe(h.who.as_deref().unwrap_or("-")),
            h.at
        );
    }
    emit(&out)?;
    Ok(0)
}

/// A name in a URL path (names are identifiers; anything else is escaped
/// and refused by the master).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
