//! Build logs (live with `follow`) and the event stream.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kiln_api::{Event, LogQuery};

use super::error::{ApiError, ApiResult};
use super::S;
use crate::logs::LogEvent;
use axum::body::Body;

/// The build log of a job; with `follow`, the response stays open and
/// streams new lines until the job ends.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/log", tag = "jobs",
    params(("id" = i64, Path, description = "The job id"), kiln_api::LogQuery),
    responses(
        (status = 200, description = "The log so far; with follow, streamed until the job ends", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 404, description = "No such job", body = kiln_api::ErrorBody),
    ),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn job_log(
    State(core): S,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let job = core
        .store
        .read(move |c| kiln_store::get_job(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let build = job.build;
    let active = core
        .sched()
        .job_current(id)
        .is_some_and(|(_, _, _, _, st)| !st.is_final());
    let mut sub = None;
    if q.follow && active {
        core.logs.open(build, id).map_err(ApiError::internal)?;
        sub = core.logs.subscribe(id);
    }
    let start = core
        .logs
        .read(build, id)
        .await
        .map_err(ApiError::internal)?;
    let Some(mut rx) = sub else {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], start).into_response());
    };
    let mut sent = start.len() as u64;
    let stream = async_stream(move |tx| async move {
        if tx.send(Ok(bytes::Bytes::from(start))).await.is_err() {
            return;
        }
        loop {
            match rx.recv().await {
                Ok(LogEvent::Data { offset, data }) => {
                    let end = offset + data.len() as u64;
                    if end <= sent {
                        continue;
                    }
                    let skip = sent.saturating_sub(offset) as usize;
                    sent = end;
                    if tx.send(Ok(data.slice(skip..))).await.is_err() {
                        return;
                    }
                }
                Ok(LogEvent::End) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(all) = core.logs.read(build, id).await {
                        if (all.len() as u64) > sent {
                            let rest = bytes::Bytes::from(all).slice(sent as usize..);
                            sent += rest.len() as u64;
                            if tx.send(Ok(rest)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A body stream fed by a task.
pub(super) fn async_stream<F, Fut>(
    f: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<bytes::Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Every durable state change as newline-delimited JSON, live.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "events",
    responses((status = 200, description = "Newline-delimited JSON, one Event a line, kept open: `subscribed` first, then every durable state change", body = Event, content_type = "application/x-ndjson")),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn events(State(core): S) -> Response {
    let mut rx = core.events.subscribe();
    let stream = async_stream(move |tx| async move {
        // Tell the client it is subscribed: events after this line are complete.
        if tx.send(Ok(line(&Event::Subscribed))).await.is_err() {
            return;
        }
        loop {
            let event = match rx.recv().await {
                Ok(e) => event(e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    Event::Lagged { missed }
                }
                Err(_) => return,
            };
            if tx.send(Ok(line(&event))).await.is_err() {
                return;
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A scheduler event as the event stream (and the web UI's websocket)
/// shows it.
pub(crate) fn event(e: crate::sched::Event) -> Event {
    use crate::sched::Event as E;
    match e {
        E::Job {
            build,
            job,
            arch,
            state,
            worker,
            attempt,
        } => Event::Job {
            build,
            job,
            arch,
            state,
            worker,
            attempt,
        },
        E::Build { build, state } => Event::Build { build, state },
        E::Publish { build, state } => Event::Publish { build, state },
    }
}

/// One line of the event stream.
fn line(e: &Event) -> bytes::Bytes {
    let mut line = serde_json::to_vec(e).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}
