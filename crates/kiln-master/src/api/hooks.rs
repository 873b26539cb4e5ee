//! `POST /hooks/{github,gitlab,gitea,forgejo}`: a forge's push. The raw
//! body is verified against every project's secret before anything is
//! parsed; then the projects whose secret signed it, whose repository it
//! names and whose ref it pushes are triggered. It only records: the fetch
//! happens in the srpm job.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use kiln_api::{ErrorCode, HookAnswer, Project, TriggerKind};

use super::error::{ApiError, ApiResult};
use super::S;
use crate::hooks::{self, Forge, HookError, HookEvent, Push};
use crate::project::{self, TriggerRequest};

fn answer(
    status: StatusCode,
    what: &str,
    message: String,
    builds: Vec<i64>,
    delivery: &Option<String>,
) -> (StatusCode, Json<HookAnswer>) {
    (
        status,
        Json(HookAnswer {
            status: what.to_string(),
            message,
            builds,
            delivery: delivery.clone(),
        }),
    )
}

fn unauthorized(m: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m)
}

#[utoipa::path(
    post, path = "/hooks/{forge}", tag = "webhooks", operation_id = "receive_webhook",
    description = "A forge's push, tag push or ping. The raw body must be signed with a project's secret (GitHub and Gitea/Forgejo: HMAC-SHA256 in X-Hub-Signature-256 / X-Gitea-Signature; GitLab: X-Gitlab-Token); no other credential is asked.",
    params(("forge" = String, Path, description = "github, gitlab, gitea or forgejo")),
    request_body(description = "The forge's event, as it sends it", content(("application/json"))),
    responses(
        (status = 200, description = "queued, duplicate or ping", body = HookAnswer),
        (status = 202, description = "ignored (another event, a deleted ref, a ref no project watches)", body = HookAnswer),
        (status = 400, description = "A body that is not the forge's event", body = kiln_api::ErrorBody),
        (status = 401, description = "No signature, or none of a project's secret", body = kiln_api::ErrorBody),
        (status = 404, description = "No such forge", body = kiln_api::ErrorBody),
        (status = 413, description = "too_large: past hook_max_bytes", body = kiln_api::ErrorBody),
    ),
    security(())
)]
pub(super) async fn receive(
    State(core): S,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<HookAnswer>)> {
    let Some(forge) = Forge::from_path(&forge) else {
        return Err(ApiError::not_found(format!(
            "no webhook endpoint {:?} (github, gitlab, gitea, forgejo)",
            kiln_core::names::printable(&forge)
        )));
    };
    let delivery = hooks::delivery_id(forge, &headers);
    let shown = delivery.as_deref().unwrap_or("(none)");
    let max = core.cfg.hook_max_bytes;
    let body = axum::body::to_bytes(body, max as usize)
        .await
        .map_err(|_| {
            tracing::warn!("{forge} webhook, delivery {shown}: body over {max} bytes refused");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!("the body is over {max} bytes (hook_max_bytes)"),
            )
        })?;
    if !hooks::has_signature(forge, &headers) {
        let e = HookError::MissingSignature(hooks::signature_header(forge));
        tracing::warn!("{forge} webhook, delivery {shown}: refused: {e}");
        return Err(unauthorized(e.to_string()));
    }
    // The projects whose secret signed it (before anything is parsed),
    // read once.
    let projects: Vec<Project> = project::list(&core)
        .await?
        .into_iter()
        .filter(|p| {
            p.secret.as_ref().is_some_and(|secret| {
                hooks::verify(forge, &headers, &body, secret.as_bytes()).is_ok()
            })
        })
        .collect();
    if projects.is_empty() {
        tracing::warn!("{forge} webhook, delivery {shown}: refused: no project's secret signed it");
        return Err(unauthorized(format!(
            "{} (no project's secret signed this body)",
            HookError::BadSignature
        )));
    }
    let event = hooks::parse(forge, &headers, &body).map_err(|e| {
        tracing::warn!("{forge} webhook, delivery {shown}: {e}");
        ApiError::bad(e.to_string())
    })?;
    let push = match event {
        HookEvent::Other { event } => {
            return Ok(answer(
                StatusCode::ACCEPTED,
                "ignored",
                format!("event {event:?} starts nothing (only pushes of branches and tags do)"),
                vec![],
                &delivery,
            ))
        }
        HookEvent::Ping { repo_urls } => {
            let names: Vec<String> = projects
                .iter()
                .filter(|p| repo_urls.is_empty() || names_repo(p, &repo_urls).is_some())
                .map(|p| p.name.clone())
                .collect();
            return Ok(answer(
                StatusCode::OK,
                "ping",
                if names.is_empty() {
                    "pong: the signature is good, but no project builds this repository".into()
                } else {
                    format!(
                        "pong: a push to the watched branch builds project {} (CI), a tag push makes a release build",
                        names.join(", ")
                    )
                },
                vec![],
                &delivery,
            ));
        }
        HookEvent::Push(p) => p,
    };
    if push.deleted {
        return Ok(answer(
            StatusCode::ACCEPTED,
            "ignored",
            format!("{} was deleted: nothing to build", push.git_ref),
            vec![],
            &delivery,
        ));
    }
    let mut started = Vec::new();
    let mut duplicate = Vec::new();
    let mut why_not = Vec::new();
    for p in &projects {
        let Some(which) = names_repo(p, &push.repo_urls) else {
            why_not.push(format!("project {} builds another repository", p.name));
            continue;
        };
        let req = match watched(p, &push, which) {
            Ok(r) => r,
            Err(why) => {
                why_not.push(why);
                continue;
            }
        };
        let t = project::trigger(
            &core,
            TriggerRequest {
                delivery: delivery.as_ref().map(|d| format!("{forge}:{d}:{}", p.name)),
                sender: push.sender.clone(),
                kind: TriggerKind::Webhook,
                ..req
            },
        )
        .await?;
        let ids = t.builds.iter().map(|b| b.id);
        if t.duplicate {
            duplicate.extend(ids);
        } else {
            started.extend(ids);
        }
    }
    tracing::info!(
        "{forge} webhook, delivery {shown}: {} {}: started {started:?}{}",
        push.git_ref,
        &push.after[..push.after.len().min(12)],
        if duplicate.is_empty() {
            String::new()
        } else {
            format!(", already started {duplicate:?}")
        }
    );
    if !started.is_empty() {
        let n = started.len();
        return Ok(answer(
            StatusCode::OK,
            "queued",
            format!(
                "{n} build{} queued for {} at {}",
                if n == 1 { "" } else { "s" },
                push.git_ref,
                &push.after[..push.after.len().min(12)]
            ),
            started,
            &delivery,
        ));
    }
    if !duplicate.is_empty() {
        return Ok(answer(
            StatusCode::OK,
            "duplicate",
            format!("delivery {shown} was taken before: nothing new started"),
            duplicate,
            &delivery,
        ));
    }
    Ok(answer(
        StatusCode::ACCEPTED,
        "ignored",
        why_not.join("; "),
        vec![],
        &delivery,
    ))
}

/// Which of a project's repositories the push names: upstream or
/// packaging.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Upstream,
    Packaging,
}

fn names_repo(p: &Project, urls: &[String]) -> Option<Which> {
    let keys: Vec<String> = urls.iter().filter_map(|u| hooks::repo_key(u)).collect();
    let is = |u: &str| hooks::repo_key(u).is_some_and(|k| keys.contains(&k));
    if is(&p.upstream) {
        Some(Which::Upstream)
    } else if p.packaging.as_deref().is_some_and(is) {
        Some(Which::Packaging)
    } else {
        None
    }
}

/// The trigger a push makes for a project, or why it makes none. A push to
/// upstream's watched branch builds that commit (CI); a tag push builds the
/// tag (release); a push to the packaging repository's branch builds
/// upstream's tip with the new packaging.
fn watched(p: &Project, push: &Push, which: Which) -> Result<TriggerRequest, String> {
    let watches = |want: Option<&str>, branch: &str| match want {
        None | Some("HEAD") => true,
        Some(w) => w == branch || w.strip_prefix("refs/heads/") == Some(branch),
    };
    match (which, push.branch(), push.tag()) {
        (Which::Upstream, Some(b), _) if watches(p.upstream_ref.as_deref(), b) => {
            Ok(TriggerRequest {
                project: p.name.clone(),
                git_ref: Some(push.git_ref.clone()),
                commit: Some(push.after.clone()),
                ..Default::default()
            })
        }
        (Which::Upstream, _, Some(_)) => Ok(TriggerRequest {
            project: p.name.clone(),
            git_ref: Some(push.git_ref.clone()),
            mode: Some(kiln_core::git::GitMode::Release),
            ..Default::default()
        }),
        (Which::Packaging, Some(b), _) if watches(p.packaging_ref.as_deref(), b) => {
            Ok(TriggerRequest {
                project: p.name.clone(),
                ..Default::default()
            })
        }
        _ => Err(format!(
            "{} is not watched by project {} (it builds {} of {})",
            push.git_ref,
            p.name,
            match which {
                Which::Upstream => p.upstream_ref.as_deref().unwrap_or("HEAD"),
                Which::Packaging => p.packaging_ref.as_deref().unwrap_or("HEAD"),
            },
            match which {
                Which::Upstream => "upstream",
                Which::Packaging => "packaging",
            }
        )),
    }
}
