//! Images (issue 12), the master's side. A recipe (`[[image]]`) belongs to a
//! target: it is checked at start against that target ([`prepare_recipes`]).
//! A build of it ([`build`]) is a build of the farm whose package is the
//! recipe's name and whose evr is the image's version
//! (`<name>-YYYYMMDD.n`, `kiln_core::image::next_image_version` over the
//! versions already built), with one job per arch; the build row keeps the
//! recipe as it was (`BuildRow::image`), which is what marks it an image
//! build: its jobs get an `ImageJob` in their Assign
//! ([`image_bases`]: the target's published repositories as workers reach
//! them) and it is never published to the repositories. Its files are filed
//! under `images/<name>/<build>/<arch>/` by the intake.

use std::collections::HashMap;
use std::net::SocketAddr;

use kiln_core::image::{ImageRecipe, RecipeError};
use kiln_store::{BuildRow, NewBuild, StoreError};

use crate::config::{ConfigError, MasterConfig};
use crate::submit::Submitted;
use crate::Core;

/// Check every `[[image]]` of the configuration: the recipe itself, a
/// declared target, its arches among the target's (default: the target's,
/// `noarch` aside), no name twice.
pub fn prepare_recipes(cfg: &mut MasterConfig) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    let targets = cfg.targets.clone();
    for r in &mut cfg.images {
        let shown = kiln_core::names::shown(&r.name);
        let bad = |m: String| ConfigError::Bad(format!("[[image]] {shown}: {m}"));
        prepare_recipe(r, &targets).map_err(bad)?;
        if !names.insert(r.name.clone()) {
            return Err(bad("is declared twice".into()));
        }
    }
    Ok(())
}

/// Check one recipe against the declared targets (what [`prepare_recipes`]
/// does for each `[[image]]`, and `kiln image add` for the one it adds):
/// the recipe itself, a declared target, its arches among the target's
/// (default: the target's, `noarch` aside). The error says what is wrong.
pub fn prepare_recipe(
    r: &mut ImageRecipe,
    targets: &[crate::config::Target],
) -> Result<(), String> {
    r.check().map_err(|e| match e {
        RecipeError::Field { field, why, .. } => format!("{field}: {why}"),
        RecipeError::Name { source, .. } => source.to_string(),
    })?;
    let Some(t) = targets.iter().find(|t| t.name == r.target) else {
        return Err(format!(
            "target {:?} is not declared (targets: {})",
            r.target,
            targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if r.arches.is_empty() {
        r.arches = t
            .arches
            .iter()
            .filter(|a| a.as_str() != "noarch")
            .cloned()
            .collect();
        if r.arches.is_empty() {
            return Err(format!(
                "target {} has no arch an image can be built for; give `arches`",
                t.name
            ));
        }
    } else if !t.implicit {
        if let Some(a) = r.arches.iter().find(|a| !t.arches.contains(a)) {
            return Err(format!(
                "arch {a:?} is not one of target {}'s arches ({})",
                t.name,
                t.arches.join(", ")
            ));
        }
    }
    Ok(())
}

/// Per target: where its image jobs install from (Kiln's published
/// repository of the target as workers reach it, `public_url`), and the
/// release version and signature checks of its buildroot, if it has one.
pub fn image_bases(
    cfg: &MasterConfig,
    api_addr: SocketAddr,
) -> HashMap<String, kiln_proto::ImageJob> {
    let public = cfg.public_url(api_addr);
    cfg.targets
        .iter()
        .map(|t| {
            let b = t.buildroot.as_ref();
            let gpgcheck = b.is_some_and(|b| b.gpgcheck);
            let mut gpgkeys = b.map(|b| b.gpgkeys.clone()).unwrap_or_default();
            if gpgcheck && t.sign_key.is_some() {
                gpgkeys.push(format!("{public}/repos/{0}/RPM-GPG-KEY-kiln-{0}", t.name));
            }
            (
                t.name.clone(),
                kiln_proto::ImageJob {
                    recipe_json: String::new(),
                    version: String::new(),
                    repos: vec![format!("{public}/repos/{}/$basearch/", t.name)],
                    releasever: b.map(|b| b.releasever.clone()).unwrap_or_default(),
                    gpgcheck,
                    gpgkeys,
                },
            )
        })
        .collect()
}

/// The recipe an image build was made from (`None`: a package build, or a
/// recipe that no longer reads).
pub fn recipe_of(b: &BuildRow) -> Option<ImageRecipe> {
    serde_json::from_str(b.image.as_deref()?).ok()
}

/// Every recipe: the configuration's (`[[image]]`), then those added with
/// `kiln image add` (stored in the database).
pub async fn recipes(core: &Core) -> Result<Vec<ImageRecipe>, StoreError> {
    Ok(listed_recipes(core)
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

/// Where a recipe comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeOrigin {
    Config,
    Database,
}

impl RecipeOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipeOrigin::Config => "config",
            RecipeOrigin::Database => "database",
        }
    }
}

/// Every recipe with where it comes from: the configuration's first, then
/// the stored ones by name (a stored one that no longer reads or checks,
/// say its target was removed from the configuration, is left out with a
/// warning).
pub async fn listed_recipes(core: &Core) -> Result<Vec<(ImageRecipe, RecipeOrigin)>, StoreError> {
    let stored = core.store.read(kiln_store::image_recipes::list).await?;
    let mut out: Vec<(ImageRecipe, RecipeOrigin)> = core
        .cfg
        .images
        .iter()
        .map(|r| (r.clone(), RecipeOrigin::Config))
        .collect();
    for s in stored {
        if out.iter().any(|(r, _)| r.name == s.name) {
            tracing::warn!(
                "stored image {} is hidden by the configuration's",
                kiln_core::names::shown(&s.name)
            );
            continue;
        }
        let checked = serde_json::from_str::<ImageRecipe>(&s.recipe)
            .map_err(|e| e.to_string())
            .and_then(|mut r| prepare_recipe(&mut r, &core.cfg.targets).map(|()| r));
        match checked {
            Ok(r) => out.push((r, RecipeOrigin::Database)),
            Err(e) => tracing::warn!(
                "stored image {}: {e}; left out",
                kiln_core::names::shown(&s.name)
            ),
        }
    }
    Ok(out)
}

/// Why a recipe cannot be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum RecipeChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Store a recipe (`kiln image add`): checked like the configuration's
/// (same function); refused if its name is the configuration's or already
/// stored. Returns it as checked (arches filled in).
pub async fn add_recipe(
    core: &Core,
    mut recipe: ImageRecipe,
    who: Option<String>,
) -> Result<ImageRecipe, RecipeChangeError> {
    let shown = kiln_core::names::shown(&recipe.name);
    prepare_recipe(&mut recipe, &core.cfg.targets)
        .map_err(|e| RecipeChangeError::Invalid(format!("image {shown}: {e}")))?;
    if core.cfg.images.iter().any(|r| r.name == recipe.name) {
        return Err(RecipeChangeError::Conflict(format!(
            "image {shown} is declared in the master's configuration ([[image]]); \
             choose another name"
        )));
    }
    let row = kiln_store::image_recipes::StoredRecipe {
        name: recipe.name.clone(),
        recipe: serde_json::to_string(&recipe)
            .map_err(|e| RecipeChangeError::Invalid(format!("image {shown}: {e}")))?,
        who,
        created_at: kiln_store::now_ms(),
    };
    let added = core
        .store
        .write(move |c| kiln_store::image_recipes::add(c, &row))
        .await?;
    if !added {
        return Err(RecipeChangeError::Conflict(format!(
            "image {shown} is already stored; remove it first (kiln image rm)"
        )));
    }
    Ok(recipe)
}

/// Remove a stored recipe (`kiln image rm`); its builds stay.
pub async fn remove_recipe(core: &Core, name: &str) -> Result<(), RecipeChangeError> {
    let shown = kiln_core::names::shown(name);
    if core.cfg.images.iter().any(|r| r.name == name) {
        return Err(RecipeChangeError::Conflict(format!(
            "image {shown} is declared in the master's configuration; \
             remove it there"
        )));
    }
    let n = name.to_string();
    let removed = core
        .store
        .write(move |c| kiln_store::image_recipes::remove(c, &n))
        .await?;
    if removed {
        Ok(())
    } else {
        Err(RecipeChangeError::NotFound(format!(
            "no stored image {shown}"
        )))
    }
}

/// One image build at a time: its version is the next after those stored,
/// which must include the one before it.
static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Start a build of the image `name`: committed (one pending job per arch
/// of the recipe, dispatched like any other) before this returns.
pub async fn build(
    core: &Core,
    name: &str,
    priority: i64,
    submitter: Option<String>,
) -> Result<Submitted, StoreError> {
    let recipe = recipes(core)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            StoreError::NotFound(format!("no image {}", kiln_core::names::shown(name)))
        })?;
    let target = core
        .cfg
        .target(&recipe.target)
        .cloned()
        .ok_or_else(|| StoreError::Invalid(format!("no target {}", recipe.target)))?;
    let json = serde_json::to_string(&recipe)
        .map_err(|e| StoreError::Invalid(format!("cannot encode image {name}: {e}")))?;
    let _one = BUILDING.lock().await;
    let version = match &recipe.version {
        Some(v) => v.clone(),
        None => {
            let n = name.to_string();
            let existing = core
                .store
                .read(move |c| kiln_store::image_versions(c, &n))
                .await?;
            let now = kiln_store::now_ms() / 1000;
            kiln_core::image::next_image_version(name, now, existing.iter().map(String::as_str))
        }
    };
    let nb = NewBuild {
        target: target.name.clone(),
        package: recipe.name.clone(),
        evr: version,
        srpm_name: String::new(),
        srpm_sha256: String::new(),
        srpm_size: 0,
        channel: target.channel.clone(),
        disttag: target.disttag.clone(),
        priority,
        scratch: false,
        ci: false,
        excluded: Vec::new(),
        arches: recipe.arches.clone(),
        batch: None,
        waits_for: Vec::new(),
        source: None,
        submitter,
    };
    let (submitted, fx) = core.decide(|s, fx| {
        let (id, job_ids) = s.allocate_ids(nb.arches.len());
        let (mut build, jobs) = kiln_store::new_rows(&nb, id, &job_ids);
        build.image = Some(json);
        s.submit(fx, build.clone(), jobs.clone());
        Submitted { build, jobs }
    });
    let id = submitted.build.id;
    if let Err(e) = core.try_apply(fx).await {
        let ((), undo) = core.decide(|s, fx| s.forget_build(fx, id));
        core.apply(undo).await;
        return Err(e);
    }
    tracing::info!(
        "build {id}: image {} version {}",
        submitted.build.package,
        submitted.build.evr
    );
    Ok(submitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(image: serde_json::Value) -> Result<MasterConfig, String> {
        let v = serde_json::json!({
            "target": [{ "name": "el9", "arches": ["x86_64", "noarch"] }],
            "image": [image],
        });
        let mut c: MasterConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    fn recipe() -> serde_json::Value {
        serde_json::json!({
            "name": "rootfs", "target": "el9", "packages": ["bash"], "formats": ["tar.zst"]
        })
    }

    fn with(k: &str, v: serde_json::Value) -> serde_json::Value {
        let mut r = recipe();
        r[k] = v;
        r
    }

    #[test]
    fn a_recipe_takes_its_targets_arches() {
        let c = cfg(recipe()).unwrap();
        assert_eq!(c.images[0].arches, vec!["x86_64".to_string()]);
    }

    #[test]
    fn a_bad_recipe_is_refused_with_why() {
        let e = cfg(with("target", "el8".into())).unwrap_err();
        assert!(
            e.contains("[[image]] \"rootfs\": target \"el8\" is not declared"),
            "{e}"
        );
        let e = cfg(with("arches", serde_json::json!(["aarch64"]))).unwrap_err();
        assert!(
            e.contains("arch \"aarch64\" is not one of target el9's arches"),
            "{e}"
        );
        let e = cfg(with("packages", serde_json::json!([]))).unwrap_err();
        assert!(e.contains("packages: lists no package"), "{e}");
        let e = cfg(with("formats", serde_json::json!(["zip"]))).unwrap_err();
        assert!(e.contains("zip"), "{e}");
    }
}
