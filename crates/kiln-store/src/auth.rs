//! Named API tokens with roles, and web sessions (issue 10).
//!
//! Only hashes are stored: the sha256 of a token (shown once, when it is
//! made) and of a session's cookie. A token's hash never leaves this module
//! in a row; a lookup is by hash. A name is unique among the tokens that are
//! not revoked, so a revoked name can be given again (a rotation), and the
//! revoked token stays listed. A session names the token it was opened with
//! (none for the master's admin token file) and copies its name and role;
//! it ends when it expires, when it is ended (sign out) or when its token
//! is revoked.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// The roles a token may have, as stored.
pub const ROLES: [&str; 3] = ["admin", "submitter", "reader"];

/// A token's `last_used_at` is written at most this often (ms).
pub const TOUCH_EVERY_MS: i64 = 60_000;

/// A named API token (its hash is not in the row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRow {
    pub id: i64,
    pub name: String,
    /// One of [`ROLES`].
    pub role: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const TOKEN_COLS: &str = "id, name, role, created_at, last_used_at, revoked_at";

fn token_row(r: &Row<'_>) -> rusqlite::Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        created_at: r.get(3)?,
        last_used_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn check_role(role: &str) -> Result<()> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "unknown role {role:?} (admin, submitter or reader)"
        )))
    }
}

/// Record a new token. Refused when a token of that name is live.
pub fn add_api_token(
    c: &Connection,
    name: &str,
    role: &str,
    hash: &str,
    now: i64,
) -> Result<ApiTokenRow> {
    check_role(role)?;
    if live_api_token(c, name)?.is_some() {
        return Err(StoreError::Invalid(format!(
            "a token named {name:?} exists (revoke it first to replace it)"
        )));
    }
    c.prepare_cached(
        "INSERT INTO api_tokens (name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![name, role, hash, now])?;
    Ok(ApiTokenRow {
        id: c.last_insert_rowid(),
        name: name.to_string(),
        role: role.to_string(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    })
}

/// The token whose hash this is, revoked or not.
pub fn api_token_by_hash(c: &Connection, hash: &str) -> Result<Option<ApiTokenRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {TOKEN_COLS} FROM api_tokens WHERE hash = ?1"
    ))?
    .query_row([hash], token_row)
    .optional()?)
}

/// The live (not revoked) token of that name.
pub fn live_api_token(c: &Connection, name: &str) -> Result<Option<ApiTokenRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {TOKEN_COLS} FROM api_tokens WHERE name = ?1 AND revoked_at IS NULL"
    ))?
    .query_row([name], token_row)
    .optional()?)
}

/// Every token, revoked ones included, by name then age.
pub fn list_api_tokens(c: &Connection) -> Result<Vec<ApiTokenRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {TOKEN_COLS} FROM api_tokens ORDER BY name, id"
    ))?;
    let rows = stmt.query_map([], token_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Revoke the live token of that name and end its sessions: the token as
/// it is now, and how many sessions were ended.
pub fn revoke_api_token(c: &Connection, name: &str, now: i64) -> Result<(ApiTokenRow, u64)> {
    let t = live_api_token(c, name)?
        .ok_or_else(|| StoreError::NotFound(format!("no live token named {name:?}")))?;
    c.prepare_cached("UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1")?
        .execute(params![t.id, now])?;
    let ended = c
        .prepare_cached(
            "UPDATE sessions SET revoked_at = ?2 WHERE token_id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![t.id, now])?;
    Ok((
        ApiTokenRow {
            revoked_at: Some(now),
            ..t
        },
        ended as u64,
    ))
}

/// Record that a token was used, unless that was recorded less than
/// [`TOUCH_EVERY_MS`] ago. Returns whether the row was written.
pub fn touch_api_token(c: &Connection, id: i64, now: i64) -> Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1 \
             AND (last_used_at IS NULL OR last_used_at <= ?2 - ?3)",
        )?
        .execute(params![id, now, TOUCH_EVERY_MS])?;
    Ok(n > 0)
}

/// Whether a token last used at `last_used` should be touched at `now`.
pub fn touch_due(last_used: Option<i64>, now: i64) -> bool {
    last_used.is_none_or(|t| now - t >= TOUCH_EVERY_MS)
}

// ---- web sessions ----

/// A web session, as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    /// The token it was opened with (none: the admin token file).
    pub token_id: Option<i64>,
    /// The sha256 of the token it was opened with.
    pub token_hash: String,
    pub name: String,
    /// One of [`ROLES`].
    pub role: String,
    /// The session's CSRF secret (not a credential on its own).
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// When its token was last used (none for the admin token file).
    pub token_last_used_at: Option<i64>,
}

/// What a new session holds (its id is known only by its hash).
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub hash: &'a str,
    pub token_id: Option<i64>,
    pub token_hash: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub csrf: &'a str,
    pub now: i64,
    pub expires_at: i64,
}

/// Open a session. Expired sessions are dropped on the way.
pub fn add_session(c: &Connection, s: &NewSession<'_>) -> Result<()> {
    check_role(s.role)?;
    c.prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
        .execute([s.now])?;
    c.prepare_cached(
        "INSERT INTO sessions (hash, token_id, token_hash, name, role, csrf, created_at, \
         expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        s.hash,
        s.token_id,
        s.token_hash,
        s.name,
        s.role,
        s.csrf,
        s.now,
        s.expires_at
    ])?;
    Ok(())
}

/// The session whose hash this is, if it is live at `now`: not ended, not
/// expired, and its token not revoked.
pub fn live_session(c: &Connection, hash: &str, now: i64) -> Result<Option<SessionRow>> {
    Ok(c.prepare_cached(
        "SELECT s.token_id, s.token_hash, s.name, s.role, s.csrf, s.created_at, \
             s.expires_at, t.last_used_at \
             FROM sessions s LEFT JOIN api_tokens t ON t.id = s.token_id \
             WHERE s.hash = ?1 AND s.revoked_at IS NULL AND s.expires_at > ?2 \
             AND (s.token_id IS NULL OR (t.id IS NOT NULL AND t.revoked_at IS NULL))",
    )?
    .query_row(params![hash, now], |r| {
        Ok(SessionRow {
            token_id: r.get(0)?,
            token_hash: r.get(1)?,
            name: r.get(2)?,
            role: r.get(3)?,
            csrf: r.get(4)?,
            created_at: r.get(5)?,
            expires_at: r.get(6)?,
            token_last_used_at: r.get(7)?,
        })
    })
    .optional()?)
}

/// End a session (sign out). Returns whether a live one was ended.
pub fn end_session(c: &Connection, hash: &str, now: i64) -> Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE sessions SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![hash, now])?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Store};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("kiln.db"), Durability::Normal).unwrap();
        (dir, s)
    }

    fn session<'a>(hash: &'a str, t: &'a ApiTokenRow, now: i64) -> NewSession<'a> {
        NewSession {
            hash,
            token_id: Some(t.id),
            token_hash: "th",
            name: &t.name,
            role: &t.role,
            csrf: "c",
            now,
            expires_at: now + 1000,
        }
    }

    #[tokio::test]
    async fn tokens_are_found_by_hash_listed_without_it_and_revoked_by_name() {
        let (_d, s) = store();
        let t = s
            .write(|t| add_api_token(t, "alice", "submitter", "h1", 10))
            .await
            .unwrap();
        assert_eq!(
            (t.name.as_str(), t.role.as_str(), t.created_at),
            ("alice", "submitter", 10)
        );
        assert_eq!(
            s.read(|c| api_token_by_hash(c, "h1")).await.unwrap(),
            Some(t.clone())
        );
        assert_eq!(s.read(|c| api_token_by_hash(c, "h2")).await.unwrap(), None);
        // A second live token of the same name, or an unknown role: refused.
        let e = s
            .write(|t| add_api_token(t, "alice", "reader", "h2", 11))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        let e = s
            .write(|t| add_api_token(t, "bob", "root", "h3", 11))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unknown role"), "{e}");
        // The same hash twice: refused by the database.
        assert!(s
            .write(|t| add_api_token(t, "carol", "reader", "h1", 11))
            .await
            .is_err());
        // Revoked: still listed (and found by hash, marked), and the name
        // can be given again.
        let (r, ended) = s.write(|t| revoke_api_token(t, "alice", 20)).await.unwrap();
        assert_eq!((r.revoked_at, ended), (Some(20), 0));
        assert_eq!(
            s.read(|c| api_token_by_hash(c, "h1"))
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(20)
        );
        let e = s
            .write(|t| revoke_api_token(t, "alice", 21))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound(_)), "{e}");
        let again = s
            .write(|t| add_api_token(t, "alice", "reader", "h4", 30))
            .await
            .unwrap();
        let all = s.read(list_api_tokens).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1], again);
        assert_eq!(all[0].revoked_at, Some(20));
        // The row carries no hash.
        let j = serde_json::to_string(&all).unwrap();
        assert!(!j.contains("h1") && !j.contains("h4"), "{j}");
    }

    #[tokio::test]
    async fn last_used_is_written_at_most_once_a_minute() {
        let (_d, s) = store();
        let t = s
            .write(|t| add_api_token(t, "r", "reader", "h", 0))
            .await
            .unwrap();
        let id = t.id;
        assert!(touch_due(None, 5));
        assert!(s
            .write(move |t| touch_api_token(t, id, 1000))
            .await
            .unwrap());
        assert!(!s
            .write(move |t| touch_api_token(t, id, 2000))
            .await
            .unwrap());
        assert!(!touch_due(Some(1000), 2000));
        assert!(touch_due(Some(1000), 1000 + TOUCH_EVERY_MS));
        assert!(s
            .write(move |t| touch_api_token(t, id, 1000 + TOUCH_EVERY_MS))
            .await
            .unwrap());
        let row = s
            .read(|c| api_token_by_hash(c, "h"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.last_used_at, Some(1000 + TOUCH_EVERY_MS));
    }

    #[tokio::test]
    async fn sessions_expire_end_and_die_with_their_token() {
        let (_d, s) = store();
        let t = s
            .write(|t| add_api_token(t, "alice", "submitter", "th", 0))
            .await
            .unwrap();
        let (t1, t2) = (t.clone(), t.clone());
        s.write(move |c| {
            add_session(c, &session("s1", &t1, 100))?;
            add_session(c, &session("s2", &t2, 100))
        })
        .await
        .unwrap();
        let live = s
            .read(|c| live_session(c, "s1", 500))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (live.name.as_str(), live.role.as_str(), live.csrf.as_str()),
            ("alice", "submitter", "c")
        );
        assert_eq!((live.token_id, live.expires_at), (Some(t.id), 1100));
        // Expired at its time.
        assert_eq!(s.read(|c| live_session(c, "s1", 1100)).await.unwrap(), None);
        // Ended (sign out): that one only, once.
        assert!(s.write(|c| end_session(c, "s1", 200)).await.unwrap());
        assert!(!s.write(|c| end_session(c, "s1", 201)).await.unwrap());
        assert_eq!(s.read(|c| live_session(c, "s1", 300)).await.unwrap(), None);
        assert!(s
            .read(|c| live_session(c, "s2", 300))
            .await
            .unwrap()
            .is_some());
        // Revoking the token ends the rest.
        let (_, ended) = s
            .write(|c| revoke_api_token(c, "alice", 400))
            .await
            .unwrap();
        assert_eq!(ended, 1);
        assert_eq!(s.read(|c| live_session(c, "s2", 500)).await.unwrap(), None);
        // A session of the admin token file (no token row).
        s.write(|c| {
            add_session(
                c,
                &NewSession {
                    hash: "s3",
                    token_id: None,
                    token_hash: "admin-hash",
                    name: "admin",
                    role: "admin",
                    csrf: "c3",
                    now: 2000,
                    expires_at: 10_000,
                },
            )
        })
        .await
        .unwrap();
        let a = s
            .read(|c| live_session(c, "s3", 2100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.token_id, a.token_hash.as_str(), a.role.as_str()),
            (None, "admin-hash", "admin")
        );
        // Opening a session drops the expired ones.
        let n: i64 = s
            .read(|c| Ok(c.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 1, "s1 and s2 had expired when s3 was opened");
    }
}
