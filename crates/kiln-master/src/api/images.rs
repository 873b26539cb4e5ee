//! Images (issue 12): the recipes, a build of one, an image build.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_api::image::{ImageBuildRef, ImageBuildRequest, ImageBuildView, ImageRemoved, ImageView};
use kiln_api::{BuildView, ErrorCode};
use kiln_core::image::ImageRecipe;
use kiln_store::BuildRow;

use super::error::{ApiError, ApiResult};
use super::session::{Admin, Submitter};
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

impl From<crate::image::RecipeChangeError> for ApiError {
    fn from(e: crate::image::RecipeChangeError) -> Self {
        use crate::image::RecipeChangeError as E;
        match e {
            E::Invalid(m) => ApiError::bad(m),
            E::Conflict(m) => ApiError::new(StatusCode::CONFLICT, ErrorCode::Exists, m),
            E::NotFound(m) => ApiError::not_found(m),
            E::Store(e) => e.into(),
        }
    }
}

/// Add an image recipe (stored in the database), checked exactly like the
/// configuration's `[[image]]`.
#[utoipa::path(
    post, path = "/api/v1/images", tag = "builds", operation_id = "add_image",
    request_body(content = Object, description = "The recipe, as an `[[image]]` table in JSON"),
    responses(
        (status = 201, description = "Stored: the recipe as checked", body = ImageView),
        (status = 400, description = "The recipe is wrong (the message says why)", body = kiln_api::ErrorBody),
        (status = 409, description = "An image of that name is in the configuration or already stored", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn add(
    State(core): S,
    Admin(who): Admin,
    Json(recipe): Json<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
    let recipe: ImageRecipe = serde_json::from_value(recipe)
        .map_err(|e| ApiError::bad(format!("not an image recipe: {e}")))?;
    let r = crate::image::add_recipe(&core, recipe, Some(who.name)).await?;
    Ok((
        StatusCode::CREATED,
        Json(ImageView {
            name: r.name.clone(),
            target: r.target.clone(),
            arches: r.arches.clone(),
            formats: r.formats.iter().map(|f| f.as_str().to_string()).collect(),
            recipe: r,
            builds: Vec::new(),
            origin: crate::image::RecipeOrigin::Database.as_str().to_string(),
        }),
    ))
}

/// Remove an image recipe added with `kiln image add` (its builds stay).
#[utoipa::path(
    delete, path = "/api/v1/images/{name}", tag = "builds", operation_id = "remove_image",
    params(("name" = String, Path, description = "The recipe's name")),
    responses(
        (status = 200, description = "Removed", body = ImageRemoved),
        (status = 404, description = "No such stored recipe", body = kiln_api::ErrorBody),
        (status = 409, description = "The recipe is the configuration's", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn remove(
    State(core): S,
    Admin(_who): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ImageRemoved>> {
    crate::image::remove_recipe(&core, &name).await?;
    Ok(Json(ImageRemoved { name }))
}

/// The recipes (the configuration's, then those added), each with its
/// newest builds and where it comes from.
#[utoipa::path(
    get, path = "/api/v1/images", tag = "builds", operation_id = "list_images",
    responses((status = 200, description = "The image recipes (`[[image]]` and `kiln image add`), each with its newest builds", body = Vec<ImageView>)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn list(State(core): S) -> ApiResult<Json<Vec<ImageView>>> {
    let (recipes, origins): (Vec<ImageRecipe>, Vec<crate::image::RecipeOrigin>) =
        crate::image::listed_recipes(&core)
            .await?
            .into_iter()
            .unzip();
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
            .zip(origins)
            .map(|((r, b), o)| ImageView {
                name: r.name.clone(),
                target: r.target.clone(),
                arches: r.arches.clone(),
                formats: r.formats.iter().map(|f| f.as_str().to_string()).collect(),
                recipe: r,
                builds: b.into_iter().map(build_ref).collect(),
                origin: o.as_str().to_string(),
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
