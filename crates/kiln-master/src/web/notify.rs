//! `/notify`: the notification sinks and their outboxes (what `kiln
//! notify ls` shows), for signed-in users; an admin sends a test event or
//! queues the dead notifications again from here.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use maud::html;

use super::layout::{self, Frame};
use super::{html_response, signed_in, WebError, WebResult};
use crate::Core;

type S = State<Arc<Core>>;

fn frame<'a>(title: &'a str, viewer: Option<&'a super::Viewer>, last: u64) -> Frame<'a> {
    Frame {
        title,
        page: "notify",
        nav: "",
        viewer,
        last_event: last,
        build: None,
        job: None,
    }
}

/// `GET /notify` (signed in: a sink's errors may name its servers).
pub(super) async fn list(State(core): S, headers: HeaderMap) -> WebResult {
    let viewer = signed_in(&core, &headers)
        .await
        .ok_or_else(|| WebError::Forbidden("sign in to see the notification sinks".into()))?;
    let last = core.web.last_id();
    let sinks = crate::notify::api::sink_views(&core).await?;
    let admin = viewer.is_admin();
    let body = html! {
        h1 { "Notifications" }
        @if sinks.is_empty() {
            p.empty { "No sink. Add " code { "[[notify]]" } " tables to the master's configuration." }
        } @else {
            div.scroll { table.sinks {
                thead { tr {
                    th { "Sink" } th { "Kind" } th { "Events" } th { "Targets" } th { "State" }
                    th.num { "Queued" } th.num { "Delivered" } th.num { "Dead" } th { "Last delivered" } th { "Last error" }
                    @if admin { th {} }
                } }
                tbody { @for s in &sinks {
                    tr data-sink=(s.name) {
                        td { (s.name) }
                        td { (s.kind) }
                        td { @if s.events.is_empty() { "all" } @else { (s.events.join(", ")) } }
                        td { @if s.targets.is_empty() { "all" } @else { (s.targets.join(", ")) } }
                        td { span class={ "st " @if s.state == "ok" { "st-succeeded" } @else { "st-queued" } } { (s.state) } }
                        td.num { (s.queued) }
                        td.num { (s.delivered) }
                        td.num { (s.dead) }
                        td { (layout::time_opt(s.last_delivered_at)) }
                        td { @if let Some(e) = &s.last_error { code { (e) } } }
                        @if admin {
                            td {
                                form.inline method="post" action={ "/notify/" (layout::q(&s.name)) "/test" } {
                                    input type="hidden" name="csrf" value=(viewer.csrf());
                                    button type="submit" { "Send a test" }
                                }
                                @if s.dead > 0 {
                                    " "
                                    form.inline method="post" action={ "/notify/" (layout::q(&s.name)) "/retry" } {
                                        input type="hidden" name="csrf" value=(viewer.csrf());
                                        button type="submit" { "Retry dead" }
                                    }
                                }
                            }
                        }
                    }
                } }
            } }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(frame("Notifications", Some(&viewer), last), body),
    ))
}

/// `POST /notify/NAME/test` (form: `csrf`; admin): what the sink answered.
pub(super) async fn test(
    State(core): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> WebResult {
    let v = super::pages::admin_form(&core, &headers, &body).await?;
    let a = crate::notify::api::test(&core, &name).await?;
    let last = core.web.last_id();
    let title = format!("Test of {}", a.name);
    let page = html! {
        h1 { "Test of " (a.name) }
        p { "Event " code { (a.id) } ": "
            @if a.ok { span.st.st-succeeded { "delivered" } } @else { span.st.st-failed { "failed" } } }
        pre { (a.answer) }
        p { a href="/notify" { "Back to the sinks" } }
    };
    Ok(html_response(
        &headers,
        layout::page(frame(&title, Some(&v), last), page),
    ))
}

/// `POST /notify/NAME/retry` (form: `csrf`; admin).
pub(super) async fn retry(
    State(core): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> WebResult {
    super::pages::admin_form(&core, &headers, &body).await?;
    crate::notify::api::retry(&core, &name).await?;
    Ok(super::builds::see_other("/notify".into()))
}
