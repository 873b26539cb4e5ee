//! Images (issue 12): the recipes, a build of one, an image build.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_api::image::{ImageBuildRef, ImageBuildRequest, ImageBuildView, ImageView};
use kiln_api::BuildView;
use kiln_store::BuildRow;

use super::error::{ApiError, ApiResult};
use super::session::Submitter;
use super::views::{build_of, build_view};
use super::S;

/// How many builds of each recipe the list shows.
const LAST_BUILDS: u32 = 5;

fn build_ref(b: BuildRow) -> ImageBuildRef {
    ImageBuildRef {
        build: b.id,
        version: b.evr,
        state: b.state,
        reason: b.reason,
        created_at: b.created_at,
        finished_at: b.finished_at,
    }
}

/// The configured recipes, each with its newest builds.
#[utoipa::path(
    get, path = "/api/v1/images", tag = "builds", operation_id = "list_images",
    responses((status = 200, description = "The image recipes (`[[image]]`), each with its newest builds", body = Vec<ImageView>)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn list(State(core): S) -> ApiResult<Json<Vec<ImageView>>> {
    let recipes = core.cfg.images.clone();
    let names: Vec<String> = recipes.iter().map(|r| r.name.clone()).collect();
    let builds = core
        .store
        .read(move |c| {
            names
                .iter()
                .map(|n| kiln_store::image_builds(c, Some(n), LAST_BUILDS))
                .collect::<kiln_store::Result<Vec<_>>>()
        })
        .await?;
    Ok(Json(
        recipes
            .into_iter()
            .zip(builds)
            .map(|(r, b)| ImageView {
                name: r.name.clone(),
                target: r.target.clone(),
                arches: r.arches.clone(),
                formats: r.formats.iter().map(|f| f.as_str().to_string()).collect(),
                recipe: r,
                builds: b.into_iter().map(build_ref).collect(),
            })
            .collect(),
    ))
}

/// Build an image: one build (package: the recipe's name, evr: the image's
/// version) with one job per arch; never published to the repositories.
#[utoipa::path(
    post, path = "/api/v1/images/{name}/build", tag = "builds", operation_id = "build_image",
    params(("name" = String, Path, description = "The recipe's name")),
    request_body = ImageBuildRequest,
    responses(
        (status = 201, description = "The build, queued", body = BuildView),
        (status = 404, description = "No such image recipe", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = []))
)]
pub(super) async fn build(
    State(core): S,
    Submitter(who): Submitter,
    Path(name): Path<String>,
    Json(req): Json<ImageBuildRequest>,
) -> ApiResult<(StatusCode, Json<BuildView>)> {
    let done = crate::image::build(&core, &name, req.priority.unwrap_or(0), Some(who.name)).await?;
    let view = build_of(&core.sched(), done.build, done.jobs, vec![]);
    Ok((StatusCode::CREATED, Json(view)))
}

/// An image build: the build with the recipe it was made from.
#[utoipa::path(
    get, path = "/api/v1/image-builds/{id}", tag = "builds", operation_id = "show_image_build",
    params(("id" = i64, Path, description = "The build id")),
    responses(
        (status = 200, body = ImageBuildView),
        (status = 404, description = "No such image build", body = kiln_api::ErrorBody),
    ),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn show(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<ImageBuildView>> {
    let row = core
        .store
        .read(move |c| kiln_store::get_build(c, id))
        .await?
        .filter(|b| b.image.is_some())
        .ok_or_else(|| ApiError::not_found(format!("no image build {id}")))?;
    let recipe = crate::image::recipe_of(&row)
        .ok_or_else(|| ApiError::internal(format!("build {id}: its recipe does not read")))?;
    let build = build_view(&core, id).await?;
    Ok(Json(ImageBuildView {
        image: row.package.clone(),
        version: row.evr.clone(),
        recipe,
        dir: format!("images/{}/{id}/", row.package),
        build,
    }))
}
