//! `kiln image build|ls|show`: images built by the farm (issue 12), through
//! the master's API (`/api/v1/images`, `/api/v1/image-builds/{id}`).

use std::fmt::Write as _;

use clap::Args;
use kiln_api::image::{ImageBuildRequest, ImageBuildView, ImageView};
use kiln_api::{BuildState, BuildView};

use crate::client::Client;
use crate::commands::{emit, emit_value, format_build, say, term_safe, wait_for_build};

#[derive(Args)]
pub struct ImageBuildArgs {
    /// The recipe's name (`[[image]]` in the master's configuration).
    pub name: String,
    /// Wait for the build to end (exit 1 unless it succeeded).
    #[arg(long)]
    pub wait: bool,
    /// Print the build as JSON.
    #[arg(long)]
    pub json: bool,
    /// Higher first (default 0).
    #[arg(long)]
    pub priority: Option<i64>,
}

#[derive(Args)]
pub struct ImageLsArgs {
    /// Print the recipes and their builds as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ImageShowArgs {
    /// The image build's id.
    pub build: i64,
    /// Print it as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ImageAddArgs {
    /// A TOML file holding the recipe: its keys at the top, or one
    /// `[[image]]` table (several: pick one with --name).
    pub recipe: std::path::PathBuf,
    /// The recipe to add when the file has several `[[image]]` tables.
    #[arg(long)]
    pub name: Option<String>,
    /// Print the recipe stored as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ImageRmArgs {
    /// The recipe's name.
    pub name: String,
}

/// `kiln image add RECIPE.toml [--name N] [--json]`.
pub async fn add(a: ImageAddArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&a.recipe)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", a.recipe.display()))?;
    let recipe = crate::images::parse_recipe(&text, a.name.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.recipe.display()))?;
    let c = Client::from_env()?;
    let v: ImageView = c.post("/api/v1/images", &recipe).await?;
    if a.json {
        emit_value(&v)?;
    } else {
        emit(&format!(
            "image {} added (target {}, arches {})\n",
            term_safe(&v.name),
            term_safe(&v.target),
            term_safe(&v.arches.join(","))
        ))?;
    }
    Ok(0)
}

/// `kiln image rm NAME`.
pub async fn rm(a: ImageRmArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let path = format!("/api/v1/images/{}", urlencode(&a.name));
    c.send(c.http.delete(c.url(&path))).await?;
    emit(&format!("image {} removed\n", term_safe(&a.name)))?;
    Ok(0)
}

/// `kiln image build NAME [--wait] [--json]`.
pub async fn build(a: ImageBuildArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let mut b: BuildView = c
        .post(
            &format!("/api/v1/images/{}/build", urlencode(&a.name)),
            &ImageBuildRequest {
                priority: a.priority,
            },
        )
        .await?;
    if !a.json {
        say(&format!(
            "build {}: image {} version {}",
            b.id,
            term_safe(&b.package),
            term_safe(&b.evr)
        ));
    }
    if a.wait {
        b = wait_for_build(&c, b.id).await?;
    }
    if a.json {
        emit_value(&b)?;
    } else if a.wait {
        emit(&format_build(&b))?;
    } else {
        emit(&format!("{}\n", b.id))?;
    }
    Ok(i32::from(a.wait && b.state != BuildState::Succeeded))
}

/// `kiln image ls [--json]`.
pub async fn ls(a: ImageLsArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: Vec<ImageView> = c.get("/api/v1/images").await?;
    if a.json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<12} {:<16} {:<28} {:<8} LAST BUILD",
        "IMAGE", "TARGET", "ARCHES", "FORMATS", "FROM"
    );
    for i in &v {
        let last = i
            .builds
            .first()
            .map(|b| format!("{} {} {}", b.build, term_safe(&b.version), b.state.as_str()))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:<16} {:<28} {:<8} {last}",
            term_safe(&i.name),
            term_safe(&i.target),
            term_safe(&i.arches.join(",")),
            term_safe(&i.formats.join(",")),
            term_safe(&i.origin),
        );
    }
    emit(&out)?;
    Ok(0)
}

/// `kiln image show BUILD [--json]`.
pub async fn show(a: ImageShowArgs) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    let v: ImageBuildView = c.get(&format!("/api/v1/image-builds/{}", a.build)).await?;
    if a.json {
        emit_value(&v)?;
        return Ok(0);
    }
    let mut out = format!(
        "image {} version {} (files in {})\n",
        term_safe(&v.image),
        term_safe(&v.version),
        term_safe(&v.dir)
    );
    out.push_str(&format_build(&v.build));
    emit(&out)?;
    Ok(0)
}

/// A recipe name in a URL path (names are identifiers; anything else is
/// escaped and refused by the master).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
