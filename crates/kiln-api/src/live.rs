//! The websocket `/api/v1/ws`: what a page subscribes to and what the
//! master pushes (issue 10). Every message is one JSON text frame.
//!
//! A page sends its subscriptions first, then (to catch up) `resume`:
//! - `{"subscribe": "dashboard"}`: every event;
//! - `{"subscribe": {"build": 7}}`: the events of build 7;
//! - `{"subscribe": {"log": 12, "offset": 0}}`: job 12's log from byte
//!   `offset` (what the page has already), then live until the job ends;
//! - `{"resume": 1730000000000042}`: the id of the last event the page has
//!   (the page embeds the id current when it was made, so nothing committed
//!   between its rendering and its websocket is lost); the events after it
//!   that the subscriptions made so far select are sent again.
//!
//! The master answers each event subscription (dashboard, build) and each
//! `resume` with `{"ready": {"last": N}}` (every event after `N` that the subscriptions
//! select follows; after a resume, the missed ones first), and pushes
//! `{"event": {"id": N, "kind": "job", ...}}` as state changes are
//! committed, ids increasing (and larger after a restart of the master).
//! When the events a page missed are no longer kept (or the master
//! restarted since), it sends `{"reload": true}`: the page reloads. Logs
//! come as `{"log": {"job": 12, "offset": 0, "next": 230, "text": "..."}}`
//! (`next` is the byte offset to resume from) and end with
//! `{"log_end": {"job": 12, "length": 230}}`. A message the master cannot
//! take is answered with `{"error": "..."}`.

use serde::{Deserialize, Serialize};

use crate::Event;

/// A message from the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientMsg {
    /// Follow a topic (adds to what the connection follows).
    Subscribe(Topic),
    /// The id of the last event the page has: the master sends what came
    /// after it, or `reload`.
    Resume(u64),
}

/// What a page follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Topic {
    /// A page that follows every event (`"dashboard"`).
    Page(Page),
    /// One build's events (`{"build": 7}`).
    Build {
        /// The build.
        build: i64,
    },
    /// One job's log from a byte offset (`{"log": 12, "offset": 0}`).
    Log {
        /// The job.
        log: i64,
        /// Bytes of the log the page has already.
        #[serde(default)]
        offset: u64,
    },
}

/// A topic that is a whole page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Page {
    /// Every event.
    Dashboard,
}

/// A message from the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerMsg {
    /// A subscription or resume is in place: events after `last` follow.
    Ready {
        /// The newest event id when it took effect.
        last: u64,
    },
    /// A committed state change.
    Event(LiveEvent),
    /// Events the page missed are no longer kept: reload it. Always true.
    Reload(bool),
    /// Text of a job's log.
    Log(LogChunk),
    /// A job's log is complete (the job ended).
    LogEnd {
        /// The job.
        job: i64,
        /// The log's length in bytes.
        length: u64,
    },
    /// A message the master could not take, and why.
    Error(String),
}

/// An event with its id (`{"id": 5, "kind": "build", "build": 1, ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveEvent {
    /// Increasing; what a page resumes from.
    pub id: u64,
    /// What changed (as on `/api/v1/events`).
    #[serde(flatten)]
    pub event: Event,
}

/// A piece of a job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogChunk {
    /// The job.
    pub job: i64,
    /// The byte offset of `text` in the log.
    pub offset: u64,
    /// The byte offset after it (where to resume from).
    pub next: u64,
    /// The text (bytes that are not UTF-8 shown as U+FFFD; a character
    /// cut by the chunk's end is sent with the next chunk).
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BuildState, JobState};

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn what_a_page_sends() {
        let parse = |s: &str| serde_json::from_str::<ClientMsg>(s).unwrap();
        assert_eq!(
            parse(r#"{"subscribe": "dashboard"}"#),
            ClientMsg::Subscribe(Topic::Page(Page::Dashboard))
        );
        assert_eq!(
            parse(r#"{"subscribe": {"build": 7}}"#),
            ClientMsg::Subscribe(Topic::Build { build: 7 })
        );
        assert_eq!(
            parse(r#"{"subscribe": {"log": 12, "offset": 30}}"#),
            ClientMsg::Subscribe(Topic::Log {
                log: 12,
                offset: 30
            })
        );
        assert_eq!(
            parse(r#"{"subscribe": {"log": 12}}"#),
            ClientMsg::Subscribe(Topic::Log { log: 12, offset: 0 })
        );
        assert_eq!(parse(r#"{"resume": 42}"#), ClientMsg::Resume(42));
        for bad in [
            r#"{"subscribe": "everything"}"#,
            r#"{"subscribe": {"job": 1}}"#,
            r#"{"resume": -1}"#,
            r#"{"unsubscribe": "dashboard"}"#,
            r#""dashboard""#,
        ] {
            assert!(serde_json::from_str::<ClientMsg>(bad).is_err(), "{bad}");
        }
        // And the page's own messages are what it would write.
        assert_eq!(
            json(&ClientMsg::Subscribe(Topic::Log { log: 3, offset: 9 })),
            r#"{"subscribe":{"log":3,"offset":9}}"#
        );
    }

    #[test]
    fn what_the_master_pushes_keeps_its_bytes() {
        assert_eq!(
            json(&ServerMsg::Ready { last: 5 }),
            r#"{"ready":{"last":5}}"#
        );
        assert_eq!(json(&ServerMsg::Reload(true)), r#"{"reload":true}"#);
        let e = ServerMsg::Event(LiveEvent {
            id: 6,
            event: Event::Job {
                build: 1,
                job: 2,
                arch: "x86_64".into(),
                state: JobState::Running,
                worker: Some("w1".into()),
                attempt: 1,
            },
        });
        let s = json(&e);
        assert_eq!(
            s,
            r#"{"event":{"id":6,"kind":"job","build":1,"job":2,"arch":"x86_64","state":"running","worker":"w1","attempt":1}}"#
        );
        assert_eq!(serde_json::from_str::<ServerMsg>(&s).unwrap(), e);
        let b = ServerMsg::Event(LiveEvent {
            id: 7,
            event: Event::Build {
                build: 1,
                state: BuildState::Succeeded,
            },
        });
        assert_eq!(
            json(&b),
            r#"{"event":{"id":7,"kind":"build","build":1,"state":"succeeded"}}"#
        );
        assert_eq!(
            json(&ServerMsg::Log(LogChunk {
                job: 2,
                offset: 0,
                next: 3,
                text: "<a>".into()
            })),
            r#"{"log":{"job":2,"offset":0,"next":3,"text":"<a>"}}"#
        );
        assert_eq!(
            json(&ServerMsg::LogEnd { job: 2, length: 3 }),
            r#"{"log_end":{"job":2,"length":3}}"#
        );
        assert_eq!(json(&ServerMsg::Error("no".into())), r#"{"error":"no"}"#);
    }
}
