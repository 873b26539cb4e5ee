//! The spec of an srpm job: found in the tree, read, evaluated by rpm in
//! the sandbox, and given its version (release: the tag's; CI: a snapshot).

use std::path::Path;

use kiln_core::git::{self as kgit};
use kiln_core::names::printable;

use super::{failed, first_line, Job, Stop, MAX_SPEC, SOURCES, SPECS};
use crate::query::QueryError;

/// What the spec says, as rpm evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SpecFacts {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) release: String,
}

/// How the spec's version is set.
pub(super) enum Versioned {
    /// `Version:` set to this.
    Version(String),
    /// `Release:` set to this (and `%{?dist}`); the version stays.
    Release(String),
}

impl Job<'_> {
    /// The spec in `SOURCES`: `path` (every part a real directory, the
    /// file a regular one), or the one `*.spec` at the top. Its name and
    /// text.
    pub(super) fn read_spec(
        &self,
        path: Option<&str>,
        commit: &str,
        where_: &str,
    ) -> Result<(String, String), Stop> {
        let sources = self.build.join(SOURCES);
        let at = kgit::short_commit(commit);
        let rel = match path {
            Some(p) => {
                let mut cur = sources.clone();
                let parts: Vec<&str> = p.split('/').collect();
                for (i, part) in parts.iter().enumerate() {
                    cur.push(part);
                    let last = i + 1 == parts.len();
                    match std::fs::symlink_metadata(&cur) {
                        Ok(m) if m.is_symlink() => {
                            return failed(format!(
                                "the spec {p} in the {where_} at {at} goes through a symbolic link (refused)"
                            ))
                        }
                        Ok(m) if last && m.is_file() => {}
                        Ok(m) if !last && m.is_dir() => {}
                        Ok(_) if last => {
                            return failed(format!(
                                "the spec {p} in the {where_} at {at} is not a regular file"
                            ))
                        }
                        _ => return failed(format!("no spec {p} in the {where_} at {at}")),
                    }
                }
                p.to_string()
            }
            None => {
                let found = crate::query::spec_files(&sources).map_err(|e| match e {
                    QueryError::Io(e) => Stop::Io(e),
                    e => Stop::Failed(format!("the spec in the {where_} at {at}: {e}")),
                })?;
                match found.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return failed(format!(
                            "no spec in {where_} at {at}: found no *.spec at its top (name one)"
                        ))
                    }
                    several => {
                        return failed(format!(
                            "no spec in {where_} at {at}: found {} (name one)",
                            crate::query::name_list(several)
                        ))
                    }
                }
            }
        };
        let name = rel.rsplit('/').next().unwrap_or(&rel).to_string();
        if kiln_core::names::check_file_name(&name).is_err() || !name.ends_with(".spec") {
            return failed(format!(
                "the spec's name {} is not a plain *.spec file name",
                printable(&name)
            ));
        }
        let mut bytes = Vec::new();
        use std::io::Read;
        crate::run::open_regular(&sources.join(&rel))
            .and_then(|f| f.take(MAX_SPEC + 1).read_to_end(&mut bytes))
            .map_err(kiln_core::error::io_err(format!("reading the spec {rel}")))?;
        if bytes.len() as u64 > MAX_SPEC {
            return failed(format!("the spec {rel} is larger than {MAX_SPEC} bytes"));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| Stop::Failed(format!("the spec {rel} is not UTF-8 text")))?;
        self.ctx
            .log(&format!("spec {rel} from the {where_} at {commit}"));
        Ok((name, text))
    }

    /// The job's copy of the spec (in `SPECS`), replaced whole.
    pub(super) fn write_spec(&self, path: &Path, text: &str) -> Result<(), Stop> {
        use std::io::Write;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Stop::Io(kiln_core::error::io_err("replacing the spec")(e)))
            }
            _ => {}
        }
        crate::run::create_new(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(kiln_core::error::io_err("writing the spec"))?;
        Ok(())
    }

    /// Whether the rpm that makes the SRPM knows `^` (4.15 and later).
    pub(super) async fn rpm_knows_caret(&self) -> Result<bool, Stop> {
        let ran = self.sandboxed(&["rpm", "--version"], true).await?;
        let text = String::from_utf8_lossy(&ran.text).into_owned();
        match (ran.end, kgit::rpm_supports_caret(&text)) {
            (Some(0), Some(caret)) => {
                self.ctx.log(&format!(
                    "{} ({})",
                    text.trim(),
                    if caret {
                        "snapshots use ^"
                    } else {
                        "older than 4.15: no ^, snapshots go in the release"
                    }
                ));
                Ok(caret)
            }
            _ => Err(self.ctx.failed("rpm --version", &ran, "rpm")),
        }
    }

    /// `--define`s of every rpm command on the spec: its directories under
    /// `/build`, no source fetched, the target's `%{dist}`.
    pub(super) fn defines(&self) -> Vec<String> {
        let dist = if self.req.disttag.is_empty() {
            "dist %{nil}".to_string()
        } else {
            format!("dist {}", self.req.disttag)
        };
        let mut out = Vec::new();
        for d in [
            "_topdir /build/topdir",
            "_sourcedir /build/SOURCES",
            "_specdir /build/SPECS",
            "_srcrpmdir /build/topdir/SRPMS",
            "_tmppath /build/tmp",
            "_dbpath /build/db",
            "_disable_source_fetch 1",
            &dist,
        ] {
            out.push("--define".to_string());
            out.push(d.to_string());
        }
        out
    }

    /// rpmspec on the spec copy named `spec`, with `args` before the spec:
    /// its output, or "the spec does not parse: …".
    pub(super) async fn rpmspec(&self, spec: &str, args: &[&str]) -> Result<String, Stop> {
        let path = format!("/build/{SPECS}/{spec}");
        let defines = self.defines();
        let mut argv: Vec<&str> = vec!["rpmspec"];
        argv.extend(defines.iter().map(String::as_str));
        argv.extend_from_slice(args);
        argv.push(&path);
        let ran = self.sandboxed(&argv, true).await?;
        if ran.end != Some(0) {
            return Err(self.ctx.failed("the spec does not parse", &ran, "rpmspec"));
        }
        Ok(String::from_utf8_lossy(&ran.text).into_owned())
    }

    /// The spec's name, version and release, as rpm evaluates it.
    pub(super) async fn evaluate(&self, spec: &str) -> Result<SpecFacts, Stop> {
        let mark = format!("@kiln:{:016x}:", rand::random::<u64>());
        let qf = format!("{mark}N %{{NAME}}\\n{mark}V %{{VERSION}}\\n{mark}R %{{RELEASE}}\\n");
        let out = self.rpmspec(spec, &["-q", "--srpm", "--qf", &qf]).await?;
        let field = |k: &str| {
            let key = format!("{mark}{k} ");
            out.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty() && !v.chars().any(char::is_control))
        };
        match (field("N"), field("V"), field("R")) {
            (Some(name), Some(version), Some(release)) => Ok(SpecFacts {
                name,
                version,
                release,
            }),
            _ => failed(format!(
                "the spec does not parse: rpmspec gave no name, version and release ({})",
                printable(&first_line(&out))
            )),
        }
    }

    /// The file name `Source0` (or `Source`) gives, as rpm evaluates the
    /// spec (`rpmspec -P`).
    pub(super) async fn source0(&self, spec: &str) -> Result<String, Stop> {
        let parsed = self.rpmspec(spec, &["-P"]).await?;
        let Some(value) = kgit::spec_tag_value(&parsed, &["Source0", "Source"]) else {
            return failed("the spec has no Source0 (or Source): nowhere to put upstream's tree");
        };
        let name = kgit::source_file_name(value);
        if kiln_core::names::check_file_name(name).is_err() || name.starts_with('-') {
            return failed(format!(
                "Source0 {} does not end in a plain file name",
                printable(value)
            ));
        }
        Ok(name.to_string())
    }

    /// Release mode: the tag's version, checked against the spec's.
    pub(super) fn release_version(&self, tag: &str, spec: &SpecFacts) -> Result<Versioned, Stop> {
        let v = kgit::tag_version(tag).map_err(Stop::Failed)?;
        if v != spec.version {
            let says = format!("tag {tag} says {v} but the spec says {}", spec.version);
            if !self.req.source.tag_wins {
                return failed(says);
            }
            self.ctx.log(&format!("{says}: the tag wins (tag_wins)"));
        }
        self.ctx.log(&format!("version {v} (release: tag {tag})"));
        Ok(Versioned::Version(v))
    }

    /// CI mode: the snapshot of upstream's `commit` (its committer date,
    /// the commits since the last tag).
    pub(super) async fn snapshot(
        &self,
        mirror: &Path,
        commit: &str,
        spec: &SpecFacts,
        caret: bool,
    ) -> Result<Versioned, Stop> {
        let git = self.git()?;
        let out = git
            .run(
                &self.ctx,
                mirror,
                &["show", "-s", "--format=%ct", commit],
                || format!("reading the date of {}", kgit::short_commit(commit)),
            )
            .await?;
        let Some(time) = out.lines().rev().find_map(|l| l.trim().parse::<i64>().ok()) else {
            return failed(format!(
                "git gave no commit date for {commit}: {}",
                printable(out.trim())
            ));
        };
        let described = git
            .raw(
                &self.ctx,
                mirror,
                &["describe", "--tags", "--long", "--abbrev=40", commit],
            )
            .await?;
        let (n, since) = match described.end {
            Some(0) => {
                let d = String::from_utf8_lossy(&described.text);
                let line = d
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                let mut parts = line.rsplitn(3, '-');
                let (_g, n, tag) = (parts.next(), parts.next(), parts.next());
                match (n.and_then(|n| n.parse::<u64>().ok()), tag) {
                    (Some(n), Some(tag)) => (n, format!("since tag {}", printable(tag))),
                    _ => return failed(format!("git describe gave {}", printable(line))),
                }
            }
            // No tag reaches the commit: every commit counts.
            _ => {
                let out = git
                    .run(&self.ctx, mirror, &["rev-list", "--count", commit], || {
                        format!("counting the commits of {}", kgit::short_commit(commit))
                    })
                    .await?;
                match out.lines().rev().find_map(|l| l.trim().parse::<u64>().ok()) {
                    Some(n) => (n, "in all (no tag)".to_string()),
                    None => return failed(format!("git rev-list gave {}", printable(out.trim()))),
                }
            }
        };
        let when = kgit::utc_iso(time);
        if caret {
            let v = kgit::snapshot_version(&spec.version, time, n, commit);
            self.ctx.log(&format!(
                "version {v} (ci: the spec's {} and a snapshot of upstream {} committed {when}, \
                 {n} commits {since})",
                spec.version,
                kgit::short_commit(commit)
            ));
            Ok(Versioned::Version(v))
        } else {
            let r = kgit::snapshot_release(time, n, commit);
            self.ctx.log(&format!(
                "version {}, release {r}%{{?dist}} (ci: rpm without ^; a snapshot of upstream {} \
                 committed {when}, {n} commits {since})",
                spec.version,
                kgit::short_commit(commit)
            ));
            Ok(Versioned::Release(r))
        }
    }
}
