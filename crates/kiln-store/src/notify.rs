//! The notification outbox (issue 11): one row per event and sink, written
//! in the same commit as the state change that causes it, then delivered
//! in order by the master's task for that sink.
//!
//! A row's life: `queued` (waiting, or failed and waiting for `next_at`),
//! then `delivered` or, past its sink's maximum age, `dead` with the last
//! error (`retry_dead` queues it again). A row of sink `""` is an event not
//! yet fanned out to the sinks: the migration's trigger writes one when a
//! build is marked published (that commit is the repository builder's);
//! the master replaces it with one row per matching sink
//! ([`fan_out`]).

use rusqlite::{params, OptionalExtension, Row};

/// What a write's closure is given (a transaction derefs to it), for
/// callers that queue rows inside their own writes.
pub use rusqlite::Connection;

use crate::{Result, StoreError};

/// Where a row is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Queued,
    Delivered,
    Dead,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Queued => "queued",
            OutboxState::Delivered => "delivered",
            OutboxState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Result<OutboxState> {
        Ok(match s {
            "queued" => OutboxState::Queued,
            "delivered" => OutboxState::Delivered,
            "dead" => OutboxState::Dead,
            other => {
                return Err(StoreError::Invalid(format!(
                    "unknown outbox state {other:?}"
                )))
            }
        })
    }
}

/// An event to queue, the same for every sink it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotice {
    /// The idempotency key (same for every sink).
    pub event_id: String,
    /// `build.failed`...
    pub event: String,
    pub build: Option<i64>,
    /// The notice as JSON (`kiln_notify::Notice`).
    pub notice: String,
}

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub sink: String,
    pub event_id: String,
    pub event: String,
    pub build: Option<i64>,
    pub notice: String,
    pub state: OutboxState,
    pub attempts: u32,
    /// Unix ms: not tried again before.
    pub next_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

const COLS: &str = "id, sink, event_id, event, build_id, notice, state, attempts, next_at, \
                    last_error, created_at, delivered_at";

fn row(r: &Row<'_>) -> rusqlite::Result<(OutboxRow, String)> {
    let state: String = r.get(6)?;
    Ok((
        OutboxRow {
            id: r.get(0)?,
            sink: r.get(1)?,
            event_id: r.get(2)?,
            event: r.get(3)?,
            build: r.get(4)?,
            notice: r.get(5)?,
            state: OutboxState::Queued,
            attempts: r.get::<_, i64>(7)?.max(0) as u32,
            next_at: r.get(8)?,
            last_error: r.get(9)?,
            created_at: r.get(10)?,
            delivered_at: r.get(11)?,
        },
        state,
    ))
}

fn finish(r: (OutboxRow, String)) -> Result<OutboxRow> {
    let (mut o, s) = r;
    o.state = OutboxState::parse(&s)?;
    Ok(o)
}

/// Queue `n` for each of `sinks` (names checked by the caller), due now.
pub fn enqueue(c: &Connection, sinks: &[String], n: &NewNotice, now: i64) -> Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO notify_outbox (sink, event_id, event, build_id, notice, state, next_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6)",
    )?;
    for s in sinks {
        if s.is_empty() {
            return Err(StoreError::Invalid("a sink has a name".into()));
        }
        stmt.execute(params![s, n.event_id, n.event, n.build, n.notice, now])?;
    }
    Ok(())
}

/// The oldest queued row of `sink` (delivery is in order: a row waiting
/// for its retry holds up the rows behind it).
pub fn next_queued(c: &Connection, sink: &str) -> Result<Option<OutboxRow>> {
    let r = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM notify_outbox WHERE sink = ?1 AND state = 'queued' ORDER BY id LIMIT 1"
        ))?
        .query_row([sink], row)
        .optional()?;
    r.map(finish).transpose()
}

/// A row by id.
pub fn get_row(c: &Connection, id: i64) -> Result<Option<OutboxRow>> {
    let r = c
        .prepare_cached(&format!("SELECT {COLS} FROM notify_outbox WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?;
    r.map(finish).transpose()
}

/// Every row of `sink` (tests and tools; oldest first).
pub fn rows_of(c: &Connection, sink: &str) -> Result<Vec<OutboxRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLS} FROM notify_outbox WHERE sink = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([sink], row)?;
    rows.map(|r| finish(r?)).collect()
}

/// The row was delivered.
pub fn mark_delivered(c: &Connection, id: i64, now: i64) -> Result<()> {
    c.prepare_cached(
        "UPDATE notify_outbox SET state = 'delivered', attempts = attempts + 1, \
         delivered_at = ?2, last_error = NULL WHERE id = ?1 AND state = 'queued'",
    )?
    .execute(params![id, now])?;
    Ok(())
}

/// An attempt failed: tried again at `next_at`, or, when `dead`, never.
pub fn mark_failed(c: &Connection, id: i64, error: &str, next_at: i64, dead: bool) -> Result<()> {
    let state = if dead { "dead" } else { "queued" };
    c.prepare_cached(
        "UPDATE notify_outbox SET state = ?4, attempts = attempts + 1, last_error = ?2, \
         next_at = ?3 WHERE id = ?1 AND state = 'queued'",
    )?
    .execute(params![id, error, next_at, state])?;
    Ok(())
}

/// Queue the dead rows of `sink` again (their age counts from now). How many.
pub fn retry_dead(c: &Connection, sink: &str, now: i64) -> Result<u64> {
    let n = c
        .prepare_cached(
            "UPDATE notify_outbox SET state = 'queued', attempts = 0, next_at = ?2, \
             created_at = ?2 WHERE sink = ?1 AND state <> 'queued' AND state = 'dead'",
        )?
        .execute(params![sink, now])?;
    Ok(n as u64)
}

/// What a sink's rows are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub queued: u64,
    pub delivered: u64,
    pub dead: u64,
    /// The newest row's error, if it has one (the head of the queue
    /// failing, or the last dead row).
    pub last_error: Option<String>,
    /// When the last delivery was (Unix ms).
    pub last_delivered_at: Option<i64>,
}

/// The counts of one sink.
pub fn sink_counts(c: &Connection, sink: &str) -> Result<SinkCounts> {
    let mut out = SinkCounts {
        queued: c
            .prepare_cached(
                "SELECT COUNT(*) FROM notify_outbox WHERE sink = ?1 AND state = 'queued'",
            )?
            .query_row([sink], |r| r.get::<_, i64>(0))?
            .max(0) as u64,
        ..SinkCounts::default()
    };
    // Each count by its partial index (queued, ended).
    let mut stmt = c.prepare_cached(
        "SELECT state, COUNT(*) FROM notify_outbox WHERE sink = ?1 AND state <> 'queued' \
         GROUP BY state",
    )?;
    let rows = stmt.query_map([sink], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for r in rows {
        let (s, n) = r?;
        let n = n.max(0) as u64;
        match OutboxState::parse(&s)? {
            OutboxState::Queued => out.queued = n,
            OutboxState::Delivered => out.delivered = n,
            OutboxState::Dead => out.dead = n,
        }
    }
    out.last_error = c
        .prepare_cached(
            "SELECT last_error FROM ( \
               SELECT id, last_error FROM notify_outbox WHERE sink = ?1 AND state = 'queued' \
                 AND last_error IS NOT NULL \
               UNION ALL \
               SELECT id, last_error FROM notify_outbox WHERE sink = ?1 AND state <> 'queued' \
                 AND state = 'dead' AND last_error IS NOT NULL) \
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([sink], |r| r.get(0))
        .optional()?;
    out.last_delivered_at = c
        .prepare_cached(
            "SELECT MAX(delivered_at) FROM notify_outbox WHERE sink = ?1 AND state <> 'queued' \
             AND state = 'delivered'",
        )?
        .query_row([sink], |r| r.get(0))?;
    Ok(out)
}

/// Events not yet fanned out to their sinks (sink `""`), oldest first.
pub fn pending_fan_out(c: &Connection, limit: u32) -> Result<Vec<OutboxRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLS} FROM notify_outbox WHERE sink = '' AND state = 'queued' ORDER BY id LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], row)?;
    rows.map(|r| finish(r?)).collect()
}

/// Replace the not-yet-fanned-out row `id` by one row per sink, with the
/// notice made for it (same event id). Nothing happens if the row is
/// gone (fanned out already).
pub fn fan_out(c: &Connection, id: i64, sinks: &[String], notice: &str, now: i64) -> Result<()> {
    let Some(r) = get_row(c, id)? else {
        return Ok(());
    };
    if !r.sink.is_empty() {
        return Ok(());
    }
    c.prepare_cached("DELETE FROM notify_outbox WHERE id = ?1")?
        .execute([id])?;
    enqueue(
        c,
        sinks,
        &NewNotice {
            event_id: r.event_id,
            event: r.event,
            build: r.build,
            notice: notice.to_string(),
        },
        now,
    )
}

/// Remove delivered and dead rows created before `before` (Unix ms). How many.
pub fn prune(c: &Connection, before: i64) -> Result<u64> {
    let n = c
        .prepare_cached("DELETE FROM notify_outbox WHERE state <> 'queued' AND created_at < ?1")?
        .execute([before])?;
    Ok(n as u64)
}

/// Queued rows of sinks not in `configured` (removed from the config) can
/// never be delivered: they are marked `dead` with the reason, so they
/// are counted, pruned like any ended row, and queued again by
/// `retry_dead` if the sink comes back. How many.
pub fn retire_unconfigured(c: &Connection, configured: &[String], now: i64) -> Result<u64> {
    let names: Vec<String> = c
        .prepare_cached(
            "SELECT DISTINCT sink FROM notify_outbox WHERE state = 'queued' AND sink <> ''",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = 0;
    for name in names.iter().filter(|s| !configured.contains(s)) {
        n += c
            .prepare_cached(
                "UPDATE notify_outbox SET state = 'dead', next_at = ?2, \
                 last_error = 'the sink is no longer in the configuration' \
                 WHERE sink = ?1 AND state = 'queued'",
            )?
            .execute(params![name, now])? as u64;
    }
    Ok(n)
}

/// The e-mail address recorded on the live token named `name` (the
/// submitter of a build), for `to_submitter`.
pub fn token_email(c: &Connection, name: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached(
        "SELECT email FROM api_tokens WHERE name = ?1 AND revoked_at IS NULL \
             AND email IS NOT NULL ORDER BY id DESC LIMIT 1",
    )?
    .query_row([name], |r| r.get(0))
    .optional()?)
}

/// Record the e-mail address of the live token named `name`. Whether
/// there was one.
pub fn set_token_email(c: &Connection, name: &str, email: Option<&str>) -> Result<bool> {
    let n = c
        .prepare_cached("UPDATE api_tokens SET email = ?2 WHERE name = ?1 AND revoked_at IS NULL")?
        .execute(params![name, email])?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn notice(id: &str, event: &str) -> NewNotice {
        NewNotice {
            event_id: id.into(),
            event: event.into(),
            build: Some(1),
            notice: format!("{{\"id\":\"{id}\"}}"),
        }
    }

    fn sinks(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The admin's queries (counts, last error, retry) read the partial
    /// indexes, not the whole table: the outbox keeps days of rows.
    #[test]
    fn admin_queries_use_the_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("kiln.db")).unwrap();
        crate::schema::migrate(&mut c).unwrap();
        for sql in [
            "SELECT COUNT(*) FROM notify_outbox WHERE sink = 'a' AND state = 'queued'",
            "SELECT state, COUNT(*) FROM notify_outbox WHERE sink = 'a' AND state <> 'queued' \
             GROUP BY state",
            "SELECT id FROM notify_outbox WHERE sink = 'a' AND state <> 'queued' AND state = 'dead'",
            "SELECT MAX(delivered_at) FROM notify_outbox WHERE sink = 'a' AND state <> 'queued' \
             AND state = 'delivered'",
        ] {
            let plan: Vec<String> = c
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                plan.iter().any(|p| p.contains("USING") && p.contains("INDEX")),
                "{sql}: {plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn rows_go_out_in_order_and_count_per_sink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db"), crate::Durability::Normal).unwrap();
        store
            .write(|t| {
                enqueue(t, &sinks(&["a", "b"]), &notice("e1", "build.queued"), 10)?;
                enqueue(t, &sinks(&["a"]), &notice("e2", "build.failed"), 11)
            })
            .await
            .unwrap();
        let first = store.read(|c| next_queued(c, "a")).await.unwrap().unwrap();
        assert_eq!(
            (first.event_id.as_str(), first.state, first.attempts),
            ("e1", OutboxState::Queued, 0)
        );
        // A failure keeps it at the head, with its error and next time.
        let id = first.id;
        store
            .write(move |t| mark_failed(t, id, "HTTP 500", 1000, false))
            .await
            .unwrap();
        let again = store.read(|c| next_queued(c, "a")).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts, again.next_at), (id, 1, 1000));
        assert_eq!(again.last_error.as_deref(), Some("HTTP 500"));
        store
            .write(move |t| mark_delivered(t, id, 2000))
            .await
            .unwrap();
        // Delivered once: marking again changes nothing.
        store
            .write(move |t| mark_failed(t, id, "late", 3000, true))
            .await
            .unwrap();
        let r = store.read(move |c| get_row(c, id)).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.attempts, r.delivered_at, r.last_error),
            (OutboxState::Delivered, 2, Some(2000), None)
        );
        let next = store.read(|c| next_queued(c, "a")).await.unwrap().unwrap();
        assert_eq!(next.event_id, "e2");
        let nid = next.id;
        store
            .write(move |t| mark_failed(t, nid, "gone", 0, true))
            .await
            .unwrap();
        assert_eq!(store.read(|c| next_queued(c, "a")).await.unwrap(), None);
        let counts = store.read(|c| sink_counts(c, "a")).await.unwrap();
        assert_eq!(
            counts,
            SinkCounts {
                queued: 0,
                delivered: 1,
                dead: 1,
                last_error: Some("gone".into()),
                last_delivered_at: Some(2000),
            }
        );
        let b = store.read(|c| sink_counts(c, "b")).await.unwrap();
        assert_eq!((b.queued, b.delivered, b.dead), (1, 0, 0));
        // Retry: the dead row is queued again, from now.
        assert_eq!(store.write(|t| retry_dead(t, "a", 5000)).await.unwrap(), 1);
        let back = store.read(|c| next_queued(c, "a")).await.unwrap().unwrap();
        assert_eq!((back.id, back.attempts, back.created_at), (nid, 0, 5000));
        // Pruning takes only ended rows older than the limit.
        assert_eq!(store.write(|t| prune(t, 4000)).await.unwrap(), 1);
        assert_eq!(store.read(|c| rows_of(c, "a")).await.unwrap().len(), 1);
        assert_eq!(store.read(|c| rows_of(c, "b")).await.unwrap().len(), 1);
        // Sink `b` removed from the config: its queued row is dead, with
        // the reason; `a`'s is left alone; retry brings `b`'s back.
        let known = sinks(&["a"]);
        assert_eq!(
            store
                .write(move |t| retire_unconfigured(t, &known, 6000))
                .await
                .unwrap(),
            1
        );
        let b = store.read(|c| sink_counts(c, "b")).await.unwrap();
        assert_eq!((b.queued, b.dead), (0, 1));
        assert!(b
            .last_error
            .unwrap()
            .contains("no longer in the configuration"));
        assert_eq!(store.read(|c| sink_counts(c, "a")).await.unwrap().queued, 1);
        assert_eq!(store.write(|t| retry_dead(t, "b", 7000)).await.unwrap(), 1);
        // An empty sink name is refused (it means "not fanned out").
        assert!(store
            .write(|t| enqueue(t, &sinks(&[""]), &notice("e3", "x"), 1))
            .await
            .is_err());
    }

    /// Marking a build published queues its event in the same commit; the
    /// fan-out replaces it by one row per sink.
    #[tokio::test]
    async fn a_publication_is_queued_by_its_own_commit() {
        use kiln_core::state::{BuildState, PublishState};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db"), crate::Durability::Normal).unwrap();
        store
            .write(|t| {
                t.execute_batch(
                    "INSERT INTO builds (id, target, package, evr, srpm_name, srpm_sha256, srpm_size, \
                     channel, disttag, priority, scratch, ci, state, excluded, created_at) \
                     VALUES (3, 't', 'p', '1-1', 'p-1-1.src.rpm', 'ab', 1, 'default', '', 0, 0, 0, \
                     'building', '[]', 5)",
                )?;
                crate::set_build_state(
                    t,
                    3,
                    BuildState::Succeeded,
                    None,
                    Some(PublishState::Pending),
                )
            })
            .await
            .unwrap();
        assert!(store
            .read(|c| pending_fan_out(c, 10))
            .await
            .unwrap()
            .is_empty());
        store
            .write(|t| crate::set_publish(t, 3, PublishState::Published, None))
            .await
            .unwrap();
        let p = store.read(|c| pending_fan_out(c, 10)).await.unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].event.as_str(), p[0].build),
            ("build.published", Some(3))
        );
        assert_eq!(p[0].event_id.len(), 24);
        assert!((p[0].created_at - crate::now_ms()).abs() < 60_000);
        // Published again (a regeneration): no second event.
        store
            .write(|t| crate::set_publish(t, 3, PublishState::Published, None))
            .await
            .unwrap();
        assert_eq!(
            store.read(|c| pending_fan_out(c, 10)).await.unwrap().len(),
            1
        );
        let (id, ev) = (p[0].id, p[0].event_id.clone());
        store
            .write(move |t| fan_out(t, id, &sinks(&["a", "b"]), "{}", 7))
            .await
            .unwrap();
        assert!(store
            .read(|c| pending_fan_out(c, 10))
            .await
            .unwrap()
            .is_empty());
        for s in ["a", "b"] {
            let r = store
                .read(move |c| next_queued(c, s))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((r.event_id.as_str(), r.next_at), (ev.as_str(), 7));
        }
        // Fanning out twice does nothing.
        store
            .write(move |t| fan_out(t, id, &sinks(&["a"]), "{}", 8))
            .await
            .unwrap();
        assert_eq!(store.read(|c| rows_of(c, "a")).await.unwrap().len(), 1);
        // A build skipped (here as `insert_skipped` does: inserted, then
        // its state set) queues its event in that commit too, once.
        store
            .write(|t| {
                t.execute_batch(
                    "INSERT INTO builds (id, target, package, evr, srpm_name, srpm_sha256, srpm_size, \
                     channel, disttag, priority, scratch, ci, state, excluded, created_at) \
                     VALUES (4, 't', 'p', '1-1', 'p-1-1.src.rpm', 'ab', 1, 'default', '', 0, 0, 0, \
                     'queued', '[]', 5)",
                )?;
                crate::set_build_state(t, 4, BuildState::Skipped, Some("1-1 is not newer"), None)?;
                crate::set_build_state(t, 4, BuildState::Skipped, None, None)
            })
            .await
            .unwrap();
        let p = store.read(|c| pending_fan_out(c, 10)).await.unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].event.as_str(), p[0].build),
            ("build.skipped", Some(4))
        );
    }
}
