//! `rebuild_on_publish = true` (issue 12): when a build of a recipe's target
//! is published and one of the packages it published is among the recipe's
//! `packages`, or was installed in the recipe's last succeeded image (the
//! `manifest.json` under `images/<name>/<build>/<arch>/`), a new image
//! build of that recipe starts, submitted by [`SUBMITTER`]. Publications
//! that arrive together (already waiting on the event stream) start one
//! image build per recipe, not one per build or per package. Scratch
//! builds and image builds are never published, so they start nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use kiln_core::image::ImageRecipe;
use kiln_core::state::{ArtifactKind, BuildState, PublishState};
use kiln_store::StoreError;
use tokio::sync::broadcast;

use crate::{sched, Core};

/// The submitter recorded on an image build started by a publication.
pub const SUBMITTER: &str = "rebuild_on_publish";

/// Sleeps on the event stream; each batch of publications already waiting
/// is handled at once.
pub(crate) async fn task(core: Arc<Core>, mut events: broadcast::Receiver<sched::Event>) {
    use broadcast::error::{RecvError, TryRecvError};
    loop {
        let mut published = Vec::new();
        match events.recv().await {
            Ok(e) => published.extend(published_build(&e)),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("{n} events passed unseen: images may miss a rebuild on publish");
            }
            Err(RecvError::Closed) => return,
        }
        loop {
            match events.try_recv() {
                Ok(e) => published.extend(published_build(&e)),
                Err(TryRecvError::Lagged(n)) => {
                    tracing::warn!(
                        "{n} events passed unseen: images may miss a rebuild on publish"
                    );
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        if published.is_empty() {
            continue;
        }
        if let Err(e) = rebuild_for(&core, published).await {
            tracing::error!("rebuild on publish: {e}");
        }
    }
}

fn published_build(e: &sched::Event) -> Option<i64> {
    match e {
        sched::Event::Publish {
            build,
            state: PublishState::Published,
        } => Some(*build),
        _ => None,
    }
}

/// The name of a package from its `name-[epoch:]version-release.arch`.
fn name_of_nevra(nevra: &str) -> Option<&str> {
    let (nevr, _arch) = nevra.rsplit_once('.')?;
    let (nev, _rel) = nevr.rsplit_once('-')?;
    let (name, _ver) = nev.rsplit_once('-')?;
    (!name.is_empty()).then_some(name)
}

/// The names of the packages installed in the newest succeeded build of
/// `recipe` (every arch's manifest), if it has one.
fn installed_in_last_image(core: &Core, last: Option<i64>, recipe: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(id) = last else {
        return names;
    };
    let dir = core.paths.images_dir().join(recipe).join(id.to_string());
    let Ok(arches) = std::fs::read_dir(&dir) else {
        return names;
    };
    for arch in arches.flatten() {
        let p = arch.path().join("manifest.json");
        let Ok(text) = std::fs::read(&p) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
            tracing::warn!("{}: not JSON", p.display());
            continue;
        };
        for pkg in v["packages"].as_array().into_iter().flatten() {
            if let Some(n) = pkg["name"].as_str() {
                names.insert(n.to_string());
            }
        }
    }
    names
}

/// Start, for the builds just published, one image build of each recipe
/// with `rebuild_on_publish` that one of their packages concerns.
async fn rebuild_for(core: &Arc<Core>, builds: Vec<i64>) -> Result<(), StoreError> {
    let recipes: Vec<ImageRecipe> = crate::image::recipes(core)
        .await?
        .into_iter()
        .filter(|r| r.rebuild_on_publish)
        .collect();
    if recipes.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = recipes.iter().map(|r| r.name.clone()).collect();
    // Per published build: its target and the names of what it published;
    // per recipe: its newest succeeded build.
    let (published, last) = core
        .store
        .read(move |c| {
            let mut published = Vec::new();
            for id in builds {
                let Some(b) = kiln_store::get_build(c, id)? else {
                    continue;
                };
                if b.scratch || b.image.is_some() || b.publish != Some(PublishState::Published) {
                    continue;
                }
                let mut pkgs = BTreeSet::from([b.package.clone()]);
                for a in kiln_store::artifacts_of(c, id)? {
                    if a.kind == ArtifactKind::Rpm {
                        if let Some(n) = a.nevra.as_deref().and_then(name_of_nevra) {
                            pkgs.insert(n.to_string());
                        }
                    }
                }
                published.push((b.target, pkgs));
            }
            let mut last = Vec::new();
            for n in &names {
                let newest = kiln_store::image_builds(c, Some(n), 50)?
                    .into_iter()
                    .find(|b| b.state == BuildState::Succeeded)
                    .map(|b| b.id);
                last.push(newest);
            }
            Ok((published, last))
        })
        .await?;
    for (r, last) in recipes.iter().zip(last) {
        let concerned: Vec<&BTreeSet<String>> = published
            .iter()
            .filter(|(t, _)| *t == r.target)
            .map(|(_, p)| p)
            .collect();
        if concerned.is_empty() {
            continue;
        }
        let installed = installed_in_last_image(core, last, &r.name);
        let hit = concerned
            .iter()
            .flat_map(|p| p.iter())
            .find(|p| r.packages.contains(p) || installed.contains(*p));
        let Some(hit) = hit else {
            continue;
        };
        match crate::image::build(core, &r.name, 0, Some(SUBMITTER.to_string())).await {
            Ok(s) => tracing::info!(
                "image {}: build {} started, {} was published",
                r.name,
                s.build.id,
                kiln_core::names::shown(hit)
            ),
            Err(e) => tracing::error!("image {}: rebuild on publish: {e}", r.name),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::name_of_nevra;

    #[test]
    fn the_name_of_a_nevra() {
        assert_eq!(name_of_nevra("imgpkg-2.0-1.noarch"), Some("imgpkg"));
        assert_eq!(
            name_of_nevra("kf-hello-noarch-1:2.0-1.el9.x86_64"),
            Some("kf-hello-noarch")
        );
        assert_eq!(name_of_nevra("bad"), None);
    }
}
