//! `kiln project …`: projects (builds from git) on the master: add, list,
//! show, edit, remove, build, and the webhook settings to paste.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_api::{
    BuildState, BuildView, EditQuery, EmptyBody, GitMode, HooksInfo, Project, ProjectBuildRequest,
    ProjectBuilt, ProjectView,
};

use crate::client::Client;
use crate::commands::{
    emit, emit_value, format_build, parse_duration, say, term_safe, wait_for_build,
    EXIT_WAIT_TIMEOUT,
};

#[derive(Subcommand)]
pub enum ProjectCmd {
    /// Add a project: sources (upstream, and packaging unless the spec is
    /// in upstream) tied to targets.
    Add {
        name: String,
        #[command(flatten)]
        def: ProjectArgs,
        #[arg(long)]
        json: bool,
    },
    /// List projects.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a project.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a project: only the options given change.
    Edit {
        name: String,
        #[command(flatten)]
        def: ProjectArgs,
        /// Remove the project's secret (it then takes no webhook).
        #[arg(long, conflicts_with = "secret_file")]
        no_secret: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove a project (its builds stay).
    Rm { name: String },
    /// Build a project now: one build per target, its SRPM made from git
    /// on a worker first.
    Build {
        name: String,
        /// A branch, a tag (`v1.2`, `refs/tags/v1.2`) or a commit id
        /// (default: the project's ref).
        #[arg(long = "ref", value_name = "REF")]
        git_ref: Option<String>,
        /// ci (a snapshot version; built when >= the newest) or release
        /// (the tag is the version; built when > the newest). Default:
        /// release for refs/tags/…, else the project's mode.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<GitMode>,
        /// Wait for the builds to end (exit 0 only if all succeeded).
        #[arg(long)]
        wait: bool,
        /// With --wait: stop waiting after DURATION (exit 124).
        #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Print the build as JSON (as `kiln build show --json`; several
        /// targets: a list).
        #[arg(long)]
        json: bool,
    },
    /// What to paste into GitHub, GitLab, Gitea or Forgejo: the URL, the
    /// secret, the content type and the events.
    Hooks {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// A project's definition on the command line (every option optional, so
/// `edit` changes only what is given).
#[derive(Args, Default)]
pub struct ProjectArgs {
    /// A target to build for (repeat, or comma-separated).
    #[arg(long = "target", value_delimiter = ',')]
    targets: Vec<String>,
    /// The upstream repository: URL[#REF] (https://, ssh://, git://, file://).
    #[arg(long)]
    upstream: Option<String>,
    /// The packaging repository (spec and patches): URL[#REF]. Omitted: the
    /// spec is in upstream.
    #[arg(long)]
    packaging: Option<String>,
    /// The spec's path in its repository (default: the one *.spec at the top).
    #[arg(long)]
    spec: Option<String>,
    /// ci or release.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<GitMode>,
    /// A file holding the secret that signs webhooks and MQTT triggers.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Put upstream's submodules in the tarball.
    #[arg(long)]
    submodules: Option<bool>,
    /// Release mode: the tag's version wins over a different one in the spec.
    #[arg(long)]
    tag_wins: Option<bool>,
    /// A new push cancels a running build of the same branch too.
    #[arg(long)]
    cancel_superseded: Option<bool>,
}

fn parse_mode(s: &str) -> Result<GitMode, String> {
    s.parse()
}

impl ProjectArgs {
    /// Apply the options given to `p`.
    fn apply(self, p: &mut Project) -> anyhow::Result<()> {
        if !self.targets.is_empty() {
            p.targets = self.targets;
        }
        if let Some(u) = self.upstream {
            let (url, r) = kiln_core::git::split_source(&u)?;
            p.upstream = url.url;
            p.upstream_ref = r;
        }
        if let Some(u) = self.packaging {
            let (url, r) = kiln_core::git::split_source(&u)?;
            p.packaging = Some(url.url);
            p.packaging_ref = r;
        }
        if let Some(s) = self.spec {
            p.spec = Some(s);
        }
        if let Some(m) = self.mode {
            p.mode = m;
        }
        if let Some(f) = self.secret_file {
            let s = std::fs::read_to_string(&f)
                .with_context(|| format!("reading the secret file {}", f.display()))?;
            p.secret = Some(s.trim().to_string());
        }
        if let Some(b) = self.submodules {
            p.submodules = b;
        }
        if let Some(b) = self.tag_wins {
            p.tag_wins = b;
        }
        if let Some(b) = self.cancel_superseded {
            p.cancel_superseded = b;
        }
        Ok(())
    }
}

/// The API path of a project (its name checked first: it goes in a URL).
fn path(name: &str) -> anyhow::Result<String> {
    kiln_core::names::check_ident("project", name)?;
    Ok(format!("/api/v1/projects/{name}"))
}

pub async fn run(cmd: ProjectCmd) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    match cmd {
        ProjectCmd::Add { name, def, json } => {
            let mut p = Project {
                name,
                ..Default::default()
            };
            if def.upstream.is_none() {
                anyhow::bail!("--upstream URL[#REF] is required");
            }
            if def.targets.is_empty() {
                anyhow::bail!("--target is required");
            }
            def.apply(&mut p)?;
            p.validate()?;
            let v: ProjectView = c.post("/api/v1/projects", &p).await?;
            show(&v, json)
        }
        ProjectCmd::Ls { json } => {
            let v: Vec<ProjectView> = c.get("/api/v1/projects").await?;
            if json {
                emit_value(&v)?;
                return Ok(0);
            }
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<20} UPSTREAM",
                "NAME", "MODE", "TARGETS"
            );
            for p in &v {
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {:<20} {}{}",
                    term_safe(&p.name),
                    p.mode.as_str(),
                    term_safe(&p.targets.join(",")),
                    term_safe(&p.upstream),
                    p.upstream_ref
                        .as_deref()
                        .map(|r| format!("#{}", term_safe(r)))
                        .unwrap_or_default()
                );
            }
            emit(&out)?;
            Ok(0)
        }
        ProjectCmd::Show { name, json } => {
            let v: ProjectView = c.get(&path(&name)?).await?;
            show(&v, json)
        }
        ProjectCmd::Edit {
            name,
            def,
            no_secret,
            json,
        } => {
            let cur: ProjectView = c.get(&path(&name)?).await?;
            let mut p = cur.project();
            def.apply(&mut p)?;
            p.validate()?;
            let r = c
                .send(
                    c.http
                        .put(c.url(&path(&name)?))
                        .query(&EditQuery {
                            clear_secret: no_secret,
                        })
                        .json(&p),
                )
                .await?;
            let v: ProjectView = r.json().await.context("reading the master's answer")?;
            show(&v, json)
        }
        ProjectCmd::Rm { name } => {
            let r = c.send(c.http.delete(c.url(&path(&name)?))).await?;
            let _: EmptyBody = r.json().await.context("reading the master's answer")?;
            say(&format!("project {} removed", term_safe(&name)));
            Ok(0)
        }
        ProjectCmd::Build {
            name,
            git_ref,
            mode,
            wait,
            timeout,
            json,
        } => build(&c, &name, git_ref, mode, wait, timeout, json).await,
        ProjectCmd::Hooks { name, json } => {
            let h: HooksInfo = c.get(&format!("{}/hooks", path(&name)?)).await?;
            if json {
                emit_value(&h)?;
                return Ok(0);
            }
            let mut out = String::new();
            let _ = writeln!(out, "project {}", term_safe(&h.project));
            for (forge, url) in &h.urls {
                let _ = writeln!(out, "  {forge:<8} payload URL: {}", term_safe(url));
            }
            let _ = writeln!(out, "  content type: {}", h.content_type);
            match &h.secret {
                Some(s) => {
                    let _ = writeln!(out, "  secret:       {}", term_safe(s));
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  secret:       none set: the project takes no webhook \
                         (kiln project edit {} --secret-file F)",
                        term_safe(&h.project)
                    );
                }
            }
            let _ = writeln!(
                out,
                "  events:       pushes (branches) and tag pushes\n\
                 \x20 GitHub: Settings → Webhooks → Add webhook; content type application/json; \"Just the push event\" (tags included)\n\
                 \x20 GitLab: Settings → Webhooks; Secret token = the secret; triggers: Push events, Tag push events\n\
                 \x20 Gitea/Forgejo: Settings → Webhooks → Gitea; POST, application/json; Secret = the secret; Push events"
            );
            if let Some(t) = &h.mqtt_topic {
                let _ = writeln!(out, "  MQTT trigger topic: {}", term_safe(t));
            }
            emit(&out)?;
            Ok(0)
        }
    }
}

fn show(v: &ProjectView, json: bool) -> anyhow::Result<i32> {
    if json {
        emit_value(v)?;
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "project {}  mode {}",
        term_safe(&v.name),
        v.mode.as_str()
    );
    let _ = writeln!(out, "  targets:   {}", term_safe(&v.targets.join(", ")));
    let at = |r: &Option<String>| {
        r.as_deref()
            .map(|r| format!(" at {}", term_safe(r)))
            .unwrap_or_else(|| " at its HEAD".into())
    };
    let _ = writeln!(
        out,
        "  upstream:  {}{}",
        term_safe(&v.upstream),
        at(&v.upstream_ref)
    );
    match &v.packaging {
        Some(p) => {
            let _ = writeln!(out, "  packaging: {}{}", term_safe(p), at(&v.packaging_ref));
        }
        None => {
            let _ = writeln!(out, "  packaging: the spec is in upstream");
        }
    }
    let _ = writeln!(
        out,
        "  spec:      {}",
        v.spec
            .as_deref()
            .map(term_safe)
            .unwrap_or("the one *.spec at the top".into())
    );
    let _ = writeln!(
        out,
        "  secret:    {}",
        if v.has_secret {
            "set (webhooks and MQTT triggers taken)"
        } else {
            "none (no webhook taken)"
        }
    );
    let flags: Vec<&str> = [
        (v.submodules, "submodules"),
        (v.tag_wins, "tag wins"),
        (v.cancel_superseded, "cancel superseded"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if !flags.is_empty() {
        let _ = writeln!(out, "  options:   {}", flags.join(", "));
    }
    emit(&out)?;
    Ok(0)
}

async fn build(
    c: &Client,
    name: &str,
    git_ref: Option<String>,
    mode: Option<GitMode>,
    wait: bool,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<i32> {
    let built: ProjectBuilt = c
        .post(
            &format!("{}/build", path(name)?),
            &ProjectBuildRequest { git_ref, mode },
        )
        .await?;
    for s in &built.superseded {
        say(&format!("build {s} superseded (canceled)"));
    }
    let mut builds = built.builds;
    if !json {
        for b in &builds {
            say(&format!(
                "build {} queued: project {} for target {} (its SRPM is made from git first)",
                b.id,
                term_safe(name),
                term_safe(&b.target)
            ));
        }
    }
    if wait {
        let all = async {
            let mut done = Vec::new();
            for b in &builds {
                done.push(wait_for_build(c, b.id).await?);
            }
            anyhow::Ok(done)
        };
        match timeout {
            None => builds = all.await?,
            Some(limit) => match tokio::time::timeout(limit, all).await {
                Ok(r) => builds = r?,
                Err(_) => {
                    say("still not done; not waiting any longer");
                    return Ok(EXIT_WAIT_TIMEOUT);
                }
            },
        }
    }
    if json {
        match builds.as_slice() {
            [one] => emit_value(one)?,
            many => emit_value(&many)?,
        }
    } else if wait {
        for b in &builds {
            emit(&format_build(b))?;
        }
    } else {
        let ids: Vec<String> = builds.iter().map(|b| b.id.to_string()).collect();
        emit(&format!("{}\n", ids.join(" ")))?;
    }
    let ok = |b: &BuildView| b.state == BuildState::Succeeded;
    Ok(i32::from(wait && !builds.iter().all(ok)))
}
