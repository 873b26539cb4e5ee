//! Schema migrations, embedded in the binary; `PRAGMA user_version` records
//! how far a database has been migrated.

use rusqlite::Connection;

use crate::Result;

const MIGRATIONS: &[&str] = &[
    // 1: the spine
    r#"
    CREATE TABLE blobs (
        sha256     TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE builds (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        target      TEXT NOT NULL,
        package     TEXT NOT NULL,
        evr         TEXT NOT NULL,
        srpm_name   TEXT NOT NULL,
        srpm_sha256 TEXT NOT NULL,
        srpm_size   INTEGER NOT NULL,
        channel     TEXT NOT NULL,
        disttag     TEXT NOT NULL,
        priority    INTEGER NOT NULL,
        scratch     INTEGER NOT NULL,
        ci          INTEGER NOT NULL,
        state       TEXT NOT NULL,
        reason      TEXT,
        excluded    TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX builds_state ON builds(state);
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        build_id    INTEGER NOT NULL REFERENCES builds(id),
        arch        TEXT NOT NULL,
        state       TEXT NOT NULL,
        worker      TEXT,
        attempt     INTEGER NOT NULL,
        message     TEXT,
        created_at  INTEGER NOT NULL,
        started_at  INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX jobs_build ON jobs(build_id);
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE artifacts (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        build_id INTEGER NOT NULL REFERENCES builds(id),
        job_id   INTEGER NOT NULL REFERENCES jobs(id),
        arch     TEXT NOT NULL,
        name     TEXT NOT NULL,
        kind     TEXT NOT NULL,
        size     INTEGER NOT NULL,
        sha256   TEXT NOT NULL,
        nevra    TEXT,
        UNIQUE (build_id, arch, name)
    );
    CREATE TABLE workers (
        name        TEXT PRIMARY KEY,
        serial      INTEGER,
        revoked     INTEGER NOT NULL DEFAULT 0,
        arches      TEXT NOT NULL DEFAULT '',
        channels    TEXT NOT NULL DEFAULT '',
        capacity    INTEGER NOT NULL DEFAULT 0,
        enrolled_at INTEGER,
        last_seen   INTEGER
    );
    CREATE TABLE revoked_serials (
        serial INTEGER PRIMARY KEY
    );
    CREATE TABLE tokens (
        hash       TEXT PRIMARY KEY,
        worker     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: the repository builder
    r#"
    ALTER TABLE builds ADD COLUMN publish TEXT;
    ALTER TABLE builds ADD COLUMN publish_error TEXT;
    CREATE INDEX builds_publish ON builds(publish);
    CREATE TABLE newest (
        target  TEXT NOT NULL,
        package TEXT NOT NULL,
        evr     TEXT NOT NULL,
        PRIMARY KEY (target, package)
    );
    CREATE TABLE repo_packages (
        target      TEXT NOT NULL,
        repo        TEXT NOT NULL,
        file        TEXT NOT NULL,
        name        TEXT NOT NULL,
        epoch       INTEGER NOT NULL,
        version     TEXT NOT NULL,
        release     TEXT NOT NULL,
        arch        TEXT NOT NULL,
        build_id    INTEGER NOT NULL,
        retired_gen INTEGER,
        PRIMARY KEY (target, repo, file)
    );
    CREATE TABLE repo_gens (
        target TEXT NOT NULL,
        repo   TEXT NOT NULL,
        gen    INTEGER NOT NULL,
        PRIMARY KEY (target, repo)
    );
    "#,
    // 3: build logs of ended jobs, zstd frames (a log too big to keep in
    // memory while it runs stays in its file under logs/)
    r#"
    CREATE TABLE job_logs (
        job_id INTEGER PRIMARY KEY,
        zdata  BLOB NOT NULL
    );
    "#,
    // 4: small files intake wrote without an fsync of their own, with what
    // they hold, until one syncfs has made them durable
    r#"
    CREATE TABLE unsynced_files (
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        data BLOB,
        cas  TEXT
    );
    "#,
    // 5: batches; a build of a batch may wait for others (a JSON array of
    // build ids) to be published before its jobs are queued
    r#"
    CREATE TABLE batches (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        target     TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    ALTER TABLE builds ADD COLUMN batch INTEGER NULL REFERENCES batches(id);
    ALTER TABLE builds ADD COLUMN waits_for TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX builds_batch ON builds(batch);
    "#,
    // 6: builds from git: a build's source (JSON `BuildSource`, NULL for an
    // uploaded SRPM), projects (JSON `Project`), and the webhook and MQTT
    // deliveries seen (a redelivery starts nothing new)
    r#"
    ALTER TABLE builds ADD COLUMN source TEXT;
    CREATE TABLE projects (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE deliveries (
        id          TEXT PRIMARY KEY,
        received_at INTEGER NOT NULL,
        builds      TEXT NOT NULL
    );
    "#,
    // 7: named API tokens with roles, web sessions, a build's submitter
    // (issue 10, auth). Only hashes are kept (sha256 of a token, of a
    // session's cookie); a name is unique among the live tokens, so a
    // revoked name can be given again. A session without `token_id` was
    // opened with the master's admin token file.
    r#"
    CREATE TABLE api_tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT NOT NULL,
        role         TEXT NOT NULL CHECK (role IN ('admin', 'submitter', 'reader')),
        hash         TEXT NOT NULL UNIQUE,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at   INTEGER
    );
    CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens(name) WHERE revoked_at IS NULL;
    CREATE TABLE sessions (
        hash       TEXT PRIMARY KEY,
        token_id   INTEGER REFERENCES api_tokens(id),
        token_hash TEXT NOT NULL,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'submitter', 'reader')),
        csrf       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX sessions_token ON sessions(token_id);
    CREATE INDEX sessions_expires ON sessions(expires_at);
    ALTER TABLE builds ADD COLUMN submitter TEXT;
    "#,
    // 8: indexes for the web UI's listings (issue 10, web): the build list
    // by target or package (an index on one column holds the rowid after
    // it, so `col = ? AND id < ? ORDER BY id DESC` reads it in order), by
    // date (and builds per hour, covering), builds from git (partial),
    // what a build published, a target's packages by name, and jobs by
    // when they ended
    r#"
    CREATE INDEX web_builds_target ON builds(target);
    CREATE INDEX web_builds_package ON builds(package);
    CREATE INDEX web_builds_created ON builds(created_at, state);
    CREATE INDEX web_repo_packages_build ON repo_packages(build_id);
    CREATE INDEX web_repo_packages_name ON repo_packages(target, name);
    CREATE INDEX web_jobs_finished ON jobs(finished_at, worker, state);
    CREATE INDEX web_builds_git ON builds(id) WHERE source IS NOT NULL;
    "#,
    // 9: what the statistics need (issue 10, stats): when a build was
    // published, and the time windows they read
    r#"
    ALTER TABLE builds ADD COLUMN published_at INTEGER;
    CREATE INDEX IF NOT EXISTS builds_finished ON builds(finished_at);
    CREATE INDEX IF NOT EXISTS jobs_started ON jobs(started_at);
    "#,
    // 10: the build listing's submitter filter (issue 10, web)
    r#"
    CREATE INDEX IF NOT EXISTS web_builds_submitter ON builds(submitter);
    "#,
    // 11: the notification outbox (issue 11): one row per event and sink,
    // written in the commit of the state change that causes it. A row of
    // sink '' is an event still to be fanned out to the sinks (the
    // triggers below write one in the commit that marks a build published,
    // which the repository builder makes, and in the commit that marks a
    // build skipped, at submit or once its SRPM was made). The e-mail
    // address of a token's owner (`to_submitter`).
    r#"
    CREATE TABLE notify_outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        sink         TEXT NOT NULL,
        event_id     TEXT NOT NULL,
        event        TEXT NOT NULL,
        build_id     INTEGER,
        notice       TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'dead')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        last_error   TEXT,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
    );
    CREATE INDEX notify_outbox_queued ON notify_outbox(sink, id) WHERE state = 'queued';
    CREATE INDEX notify_outbox_sink_state ON notify_outbox(sink, state);
    CREATE INDEX notify_outbox_ended ON notify_outbox(created_at) WHERE state <> 'queued';
    CREATE TRIGGER notify_build_published AFTER UPDATE OF publish ON builds
        WHEN NEW.publish = 'published' AND OLD.publish IS NOT 'published'
    BEGIN
        INSERT INTO notify_outbox (sink, event_id, event, build_id, notice, state, next_at, created_at)
        VALUES ('', lower(hex(randomblob(12))), 'build.published', NEW.id, '{}', 'queued', 0,
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    CREATE TRIGGER notify_build_skipped AFTER UPDATE OF state ON builds
        WHEN NEW.state = 'skipped' AND OLD.state IS NOT 'skipped'
    BEGIN
        INSERT INTO notify_outbox (sink, event_id, event, build_id, notice, state, next_at, created_at)
        VALUES ('', lower(hex(randomblob(12))), 'build.skipped', NEW.id, '{}', 'queued', 0,
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    ALTER TABLE api_tokens ADD COLUMN email TEXT;
    "#,
    // Image builds (issue 12): the recipe (JSON) a build of an image was
    // made from; NULL for a package build. Its package is the recipe's
    // name and its evr the image's version.
    r#"
    ALTER TABLE builds ADD COLUMN image TEXT;
    CREATE INDEX builds_image ON builds(package, id) WHERE image IS NOT NULL;
    "#,
    // Releases (issue 12): every promotion of an image build to a channel
    // of a release, and every rollback; `current` marks the row the
    // channel's `latest` points at (one per channel).
    r#"
    CREATE TABLE release_promotions (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        release    TEXT NOT NULL,
        channel    TEXT NOT NULL,
        version    TEXT NOT NULL,
        build_id   INTEGER NOT NULL REFERENCES builds(id),
        action     TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
        who        TEXT,
        created_at INTEGER NOT NULL,
        current    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX release_promotions_channel ON release_promotions(release, channel, id);
    CREATE UNIQUE INDEX release_promotions_current
        ON release_promotions(release, channel) WHERE current = 1;
    "#,
    // Image recipes added with `kiln image add` (issue 12): the recipe as
    // JSON, by name; the configuration's `[[image]]` are not stored.
    r#"
    CREATE TABLE image_recipes (
        name       TEXT PRIMARY KEY,
        recipe     TEXT NOT NULL,
        who        TEXT,
        created_at INTEGER NOT NULL
    );
    "#,
    // The outbox's rows are written in the commits that dispatch jobs
    // (issue 11): each B-tree page they touch is one more WAL frame in
    // that commit. Rows are numbered by rowid alone (a new row's id is
    // still above every row kept, which is all the order needs; no
    // `sqlite_sequence` write), and the per-sink index of ended rows is
    // partial (a queued row touches only the table and the queued index;
    // the ended indexes are written when it is delivered, off the
    // dispatch's path). The triggers are made again around the copy.
    r#"
    DROP TRIGGER notify_build_published;
    DROP TRIGGER notify_build_skipped;
    CREATE TABLE notify_outbox_v2 (
        id           INTEGER PRIMARY KEY,
        sink         TEXT NOT NULL,
        event_id     TEXT NOT NULL,
        event        TEXT NOT NULL,
        build_id     INTEGER,
        notice       TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'dead')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        last_error   TEXT,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
    );
    INSERT INTO notify_outbox_v2 (id, sink, event_id, event, build_id, notice, state, attempts,
                                  next_at, last_error, created_at, delivered_at)
        SELECT id, sink, event_id, event, build_id, notice, state, attempts,
               next_at, last_error, created_at, delivered_at FROM notify_outbox;
    DROP TABLE notify_outbox;
    ALTER TABLE notify_outbox_v2 RENAME TO notify_outbox;
    CREATE INDEX notify_outbox_queued ON notify_outbox(sink, id) WHERE state = 'queued';
    CREATE INDEX notify_outbox_sink_ended ON notify_outbox(sink, state) WHERE state <> 'queued';
    CREATE INDEX notify_outbox_ended ON notify_outbox(created_at) WHERE state <> 'queued';
    CREATE TRIGGER notify_build_published AFTER UPDATE OF publish ON builds
        WHEN NEW.publish = 'published' AND OLD.publish IS NOT 'published'
    BEGIN
        INSERT INTO notify_outbox (sink, event_id, event, build_id, notice, state, next_at, created_at)
        VALUES ('', lower(hex(randomblob(12))), 'build.published', NEW.id, '{}', 'queued', 0,
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    CREATE TRIGGER notify_build_skipped AFTER UPDATE OF state ON builds
        WHEN NEW.state = 'skipped' AND OLD.state IS NOT 'skipped'
    BEGIN
        INSERT INTO notify_outbox (sink, event_id, event, build_id, notice, state, next_at, created_at)
        VALUES ('', lower(hex(randomblob(12))), 'build.skipped', NEW.id, '{}', 'queued', 0,
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    "#,
    // The outbox's CHECK on `state` was an `IN` list of three: SQLite
    // builds an ephemeral B-tree of the list for every row inserted or
    // updated (a temporary database opened and closed per row, in the
    // dispatch's commit). The same CHECK written with `=` and `OR` is
    // three comparisons. The table is made again the same way as in 15.
    r#"
    DROP TRIGGER notify_build_published;
    DROP TRIGGER notify_build_skipped;
    CREATE TABLE notify_outbox_v3 (
        id           INTEGER PRIMARY KEY,
        sink         TEXT NOT NULL,
        event_id     TEXT NOT NULL,
        event        TEXT NOT NULL,
        build_id     INTEGER,
        notice       TEXT NOT NULL,
        state        TEXT NOT NULL
                     CHECK (state = 'queued' OR state = 'delivered' OR state = 'dead'),
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        last_error   TEXT,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
    );
    INSERT INTO notify_outbox_v3 (id, sink, event_id, event, build_id, notice, state, attempts,
                                  next_at, last_error, created_at, delivered_at)
        SELECT id, sink, event_id, event, build_id, notice, state, attempts,
               next_at, last_error, created_at, delivered_at FROM notify_outbox;
    DROP TABLE notify_outbox;
    ALTER TABLE notify_outbox_v3 RENAME TO notify_outbox;
    CREATE INDEX notify_outbox_queued ON notify_outbox(sink, id) WHERE state = 'queued';
    CREATE INDEX notify_outbox_sink_ended ON notify_outbox(sink, state) WHERE state <> 'queued';
    CREATE INDEX notify_outbox_ended ON notify_outbox(created_at) WHERE state <> 'queued';
    CREATE TRIGGER notify_build_published AFTER UPDATE OF publish ON builds
        WHEN NEW.publish = 'published' AND OLD.publish IS NOT 'published'
    BEGIN
        INSERT INTO notify_outbox (sink, event_id, event, build_id, notice, state, next_at, created_at)
        VALUES ('', lower(hex(randomblob(12))), 'build.published', NEW.id, '{}', 'queued', 0,
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    CREATE TRIGGER notify_build_skipped AFTER UPDATE OF state ON builds
        WHEN NEW.state = 'skipped' AND OLD.state IS NOT 'skipped'
    BEGIN
        INSERT INTO notify_outbox (sink, event_id, event, build_id, notice, state, next_at, created_at)
        VALUES ('', lower(hex(randomblob(12))), 'build.skipped', NEW.id, '{}', 'queued', 0,
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    "#,
];

/// Bring the schema up to date.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made by an older master (schema 4, one build) is
    /// migrated in place: the build is still there, in no batch and
    /// waiting for nothing.
    #[test]
    fn an_existing_database_gains_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let mut conn = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS.iter().take(4).enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO builds (id, target, package, evr, srpm_name, srpm_sha256, srpm_size, \
             channel, disttag, priority, scratch, ci, state, excluded, created_at) \
             VALUES (3, 't', 'old', '1-1', 'old-1-1.src.rpm', 'ab', 1, 'default', '', 0, 0, 0, \
             'succeeded', '[]', 5)",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        let b = crate::get_build(&conn, 3).unwrap().unwrap();
        assert_eq!((b.package.as_str(), b.batch), ("old", None));
        assert_eq!(b.submitter, None, "a build from before tokens had names");
        assert!(b.waits_for.is_empty());
        // And the new table takes batches.
        let id = crate::insert_batch(&conn, "t", 9).unwrap();
        assert_eq!(
            crate::get_batch(&conn, id).unwrap(),
            Some(crate::BatchRow {
                id,
                target: "t".into(),
                created_at: 9
            })
        );
        // Migrating again changes nothing.
        migrate(&mut conn).unwrap();
    }
}
