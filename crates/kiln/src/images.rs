//! `kiln image …`: images (issue 12). `kiln image build-local` builds a
//! recipe on this machine with the worker's own image builder
//! (`kiln_worker::image::build_image`), without a master: for admins
//! trying a recipe, and for the tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_core::image::ImageRecipe;
use kiln_worker::backend::LogSink;
use kiln_worker::buildroot::Roots;
use kiln_worker::image::{build_image, ImageOutcome, ImageRequest};

use crate::commands::{emit, emit_value, parse_duration, say, term_safe_lines};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build an image recipe on this machine (no master): dnf
    /// --installroot from the repositories given, the recipe's files, post
    /// and test commands, each format, the boot test. Needs root.
    BuildLocal(BuildLocalArgs),
    /// Build an image recipe of the master's configuration on the farm:
    /// one build, one job per arch.
    Build(crate::image_cmds::ImageBuildArgs),
    /// The master's image recipes and their newest builds.
    Ls(crate::image_cmds::ImageLsArgs),
    /// An image build: its recipe, jobs and files.
    Show(crate::image_cmds::ImageShowArgs),
    /// Add an image recipe to the master (stored in its database; admin).
    Add(crate::image_cmds::ImageAddArgs),
    /// Remove an image recipe added with `kiln image add` (admin).
    Rm(crate::image_cmds::ImageRmArgs),
}

#[derive(Args)]
pub struct BuildLocalArgs {
    /// A TOML file holding the recipe: its keys at the top, or one
    /// `[[image]]` table (several: pick one with --name).
    pub recipe: PathBuf,
    /// A repository base URL (the target's published repositories; the
    /// recipe's `repos` are added after them). Repeatable.
    #[arg(long = "repo", value_name = "URL")]
    pub repos: Vec<String>,
    /// Where the files go (made; must not hold an image.log yet).
    #[arg(long)]
    pub out: PathBuf,
    /// The build id the filesystems' UUIDs derive from.
    #[arg(long, default_value_t = 1)]
    pub build_id: u64,
    /// The recipe to build when the file has several `[[image]]` tables.
    #[arg(long)]
    pub name: Option<String>,
    /// dnf's --releasever (default: none).
    #[arg(long, default_value = "")]
    pub releasever: String,
    /// dnf's package and metadata cache, kept between builds; each build's
    /// scratch directory is made under it and removed after.
    #[arg(long, env = "KILN_IMAGE_CACHE", default_value = "/var/tmp/kiln-image")]
    pub cache: PathBuf,
    /// The longest any one command (dnf, a post or test command, a format
    /// tool) may run.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Also write the build's log to stderr as it happens.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: ImageCmd) -> anyhow::Result<i32> {
    match cmd {
        ImageCmd::BuildLocal(a) => build_local(a).await,
        ImageCmd::Build(a) => crate::image_cmds::build(a).await,
        ImageCmd::Ls(a) => crate::image_cmds::ls(a).await,
        ImageCmd::Show(a) => crate::image_cmds::show(a).await,
        ImageCmd::Add(a) => crate::image_cmds::add(a).await,
        ImageCmd::Rm(a) => crate::image_cmds::rm(a).await,
    }
}

/// A TOML error on one line: where, and what.
fn toml_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = e
        .span()
        .map(|s| {
            format!(
                "line {}: ",
                text[..s.start.min(text.len())].matches('\n').count() + 1
            )
        })
        .unwrap_or_default();
    anyhow::anyhow!("{at}{}", e.message().trim().replace('\n', " "))
}

/// The recipe in `text`: top-level keys, or `[[image]]` tables.
pub fn parse_recipe(text: &str, name: Option<&str>) -> anyhow::Result<ImageRecipe> {
    let value: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let Some(images) = value.get("image") else {
        let r: ImageRecipe = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        if let Some(n) = name {
            anyhow::ensure!(r.name == n, "the recipe is {:?}, not {n:?}", r.name);
        }
        return Ok(r);
    };
    let list = images
        .as_array()
        .context("`image` must be a list of tables ([[image]])")?;
    anyhow::ensure!(
        value.len() == 1,
        "the file holds more than [[image]] tables"
    );
    let mut recipes = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let r: ImageRecipe = t.clone().try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!(
                "[[image]] number {}: {}",
                i + 1,
                e.message().trim().replace('\n', " ")
            )
        })?;
        recipes.push(r);
    }
    match name {
        Some(n) => recipes
            .into_iter()
            .find(|r| r.name == n)
            .with_context(|| format!("no [[image]] named {n:?}")),
        None => {
            anyhow::ensure!(
                recipes.len() == 1,
                "the file holds {} [[image]] tables: pick one with --name",
                recipes.len()
            );
            recipes.pop().context("no [[image]] table")
        }
    }
}

/// Writes the log to stderr (with --verbose).
struct Stderr(bool);

impl LogSink for Stderr {
    fn write(&self, data: &[u8]) {
        if self.0 {
            use std::io::Write;
            let text = String::from_utf8_lossy(data);
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(term_safe_lines(&text).as_bytes());
        }
    }
}

async fn build_local(a: BuildLocalArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&a.recipe)
        .with_context(|| format!("reading {}", a.recipe.display()))?;
    let recipe = parse_recipe(&text, a.name.as_deref())
        .with_context(|| format!("in {}", a.recipe.display()))?;
    recipe.check()?;
    let arch = kiln_core::names::host_arch().to_string();
    if !recipe.arches.is_empty() && !recipe.arches.contains(&arch) {
        anyhow::bail!(
            "image {} is for {}, not this {arch} machine",
            recipe.name,
            recipe.arches.join(", ")
        );
    }
    for r in &a.repos {
        kiln_core::image::check_repo_url(r).map_err(|why| anyhow::anyhow!("--repo {why}"))?;
    }
    std::fs::create_dir_all(&a.cache).with_context(|| format!("creating {}", a.cache.display()))?;
    let roots = Arc::new(Roots::new(&a.cache, None, 4 << 30));
    let req = ImageRequest {
        recipe,
        arch,
        repos: a.repos.clone(),
        releasever: a.releasever.clone(),
        gpgcheck: false,
        gpgkeys: Vec::new(),
        build_id: a.build_id,
        work: a
            .cache
            .join("builds")
            .join(format!("{}-{}", a.build_id, std::process::id())),
        out: a.out.clone(),
        timeout: a.timeout,
    };
    let (_stop, cancel) = tokio::sync::watch::channel(false);
    let log = Stderr(a.verbose);
    let outcome = build_image(&req, &roots, &log, cancel).await;
    // The scratch directory is removed in the background: not left behind.
    tokio::task::spawn_blocking(kiln_worker::image::wait_for_removals)
        .await
        .ok();
    let outcome = outcome?;
    if a.json {
        emit_value(&outcome)?;
    } else {
        emit(&summary(&outcome, &a.out))?;
    }
    if !outcome.success {
        say(&format!(
            "error: image {} failed: {} (log: {})",
            req.recipe.name,
            term_safe_lines(&outcome.message),
            a.out.join(kiln_worker::image::IMAGE_LOG).display()
        ));
        return Ok(1);
    }
    Ok(0)
}

/// Where the files are and where the time went.
fn summary(o: &ImageOutcome, out: &Path) -> String {
    let mut s = format!(
        "image {} in {} ({} packages, SOURCE_DATE_EPOCH {})\n",
        if o.success { "built" } else { "FAILED" },
        out.display(),
        o.packages,
        o.source_date_epoch
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into())
    );
    for f in &o.files {
        s += &format!("  {:<28} {:>12} bytes  {}\n", f.name, f.size, f.sha256);
    }
    s += "phases (ms: all / in the tools):\n";
    for p in &o.phases {
        s += &format!("  {:<18} {:>8} {:>8}\n", p.phase, p.ms, p.tool_ms);
    }
    let total = o.total_ms.max(1);
    s += &format!(
        "total {} ms; Kiln's own {} ms ({:.1} %)\n",
        o.total_ms,
        o.overhead_ms(),
        o.overhead_ms() as f64 * 100.0 / total as f64
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_is_read_bare_or_as_an_image_table() {
        let bare =
            "name = \"a\"\ntarget = \"el9\"\npackages = [\"bash\"]\nformats = [\"tar.zst\"]\n";
        assert_eq!(parse_recipe(bare, None).unwrap().name, "a");
        let tables = "[[image]]\nname = \"a\"\ntarget = \"el9\"\npackages = [\"bash\"]\nformats = [\"tar.zst\"]\n\
                      [[image]]\nname = \"b\"\ntarget = \"el9\"\npackages = [\"bash\"]\nformats = [\"cpio\"]\n\
                      files = { \"/etc/motd\" = \"hi\\n\" }\n";
        assert!(parse_recipe(tables, None).is_err());
        let b = parse_recipe(tables, Some("b")).unwrap();
        assert_eq!(b.files["/etc/motd"], "hi\n");
        let bad = "name = \"a\"\ntarget = \"el9\"\npackages = [\"bash\"]\nformats = [\"tar.zst\"]\ncolour = 1\n";
        let e = format!("{:#}", parse_recipe(bad, None).unwrap_err());
        assert!(e.contains("colour"), "{e}");
    }
}
