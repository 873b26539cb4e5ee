//! Releases (issue 12): the promotions of image builds to the channels of
//! a release, and the rollbacks, in one table (`release_promotions`). The
//! row marked `current` is what the channel's `latest` points at.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::Result;

/// One promotion or rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionRow {
    pub id: i64,
    pub release: String,
    pub channel: String,
    pub version: String,
    pub build: i64,
    /// `promote` or `rollback`.
    pub action: String,
    pub who: Option<String>,
    pub created_at: i64,
    pub current: bool,
}

const COLS: &str = "id, release, channel, version, build_id, action, who, created_at, current";

fn row(r: &Row<'_>) -> rusqlite::Result<PromotionRow> {
    Ok(PromotionRow {
        id: r.get(0)?,
        release: r.get(1)?,
        channel: r.get(2)?,
        version: r.get(3)?,
        build: r.get(4)?,
        action: r.get(5)?,
        who: r.get(6)?,
        created_at: r.get(7)?,
        current: r.get::<_, i64>(8)? != 0,
    })
}

/// Record a promotion or a rollback and make it the channel's current row.
#[allow(clippy::too_many_arguments)]
pub fn record(
    c: &Connection,
    release: &str,
    channel: &str,
    version: &str,
    build: i64,
    action: &str,
    who: Option<&str>,
    at: i64,
) -> Result<i64> {
    c.execute(
        "UPDATE release_promotions SET current = 0 WHERE release = ?1 AND channel = ?2 AND current = 1",
        params![release, channel],
    )?;
    c.execute(
        "INSERT INTO release_promotions (release, channel, version, build_id, action, who, created_at, current) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
        params![release, channel, version, build, action, who, at],
    )?;
    Ok(c.last_insert_rowid())
}

/// The row a channel's `latest` points at.
pub fn current(c: &Connection, release: &str, channel: &str) -> Result<Option<PromotionRow>> {
    Ok(c.query_row(
        &format!(
            "SELECT {COLS} FROM release_promotions WHERE release = ?1 AND channel = ?2 AND current = 1"
        ),
        params![release, channel],
        row,
    )
    .optional()?)
}

/// The history of one release (every channel), oldest first.
pub fn history(c: &Connection, release: &str) -> Result<Vec<PromotionRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {COLS} FROM release_promotions WHERE release = ?1 ORDER BY id"
    ))?;
    let rows = st.query_map(params![release], row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Every promotion and rollback of every release, oldest first (the
/// master's start-up check of the release tree).
pub fn all(c: &Connection) -> Result<Vec<PromotionRow>> {
    let mut st = c.prepare(&format!(
        "SELECT {COLS} FROM release_promotions ORDER BY id"
    ))?;
    let rows = st.query_map([], row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_current_row_per_channel() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("k.db")).unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        conn.execute_batch(
            "INSERT INTO builds (id, target, package, evr, srpm_name, srpm_sha256, srpm_size, \
             channel, disttag, priority, scratch, ci, state, excluded, created_at) \
             VALUES (1, 't', 'img', 'img-1', '', '', 0, 'default', '', 0, 0, 0, 'succeeded', '[]', 5), \
                    (2, 't', 'img', 'img-2', '', '', 0, 'default', '', 0, 0, 0, 'succeeded', '[]', 6)",
        )
        .unwrap();
        record(
            &conn,
            "r",
            "stable",
            "img-1",
            1,
            "promote",
            Some("admin"),
            10,
        )
        .unwrap();
        record(&conn, "r", "stable", "img-2", 2, "promote", None, 11).unwrap();
        record(&conn, "r", "testing", "img-2", 2, "promote", None, 12).unwrap();
        let cur = current(&conn, "r", "stable").unwrap().unwrap();
        assert_eq!((cur.version.as_str(), cur.build), ("img-2", 2));
        record(&conn, "r", "stable", "img-1", 1, "rollback", None, 13).unwrap();
        let cur = current(&conn, "r", "stable").unwrap().unwrap();
        assert_eq!(
            (cur.version.as_str(), cur.action.as_str()),
            ("img-1", "rollback")
        );
        let h = history(&conn, "r").unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h.iter().filter(|r| r.current).count(), 2);
        assert_eq!(h[0].who.as_deref(), Some("admin"));
        assert!(current(&conn, "r", "nope").unwrap().is_none());
        assert_eq!(all(&conn).unwrap().len(), 4);
    }
}
