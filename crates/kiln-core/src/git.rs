//! What Kiln takes from outside about git sources (issue 9: builds from
//! git): repository URLs, refs and paths inside a repository. Each is
//! checked before it reaches a `git` argument vector, so none can be read
//! by git as an option (`--upload-pack=…`, `-oProxyCommand=…`), leave the
//! repository (`..`), or carry control characters into a log.

use crate::names::shown;

/// Why a git URL, ref or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {}: {why}", shown(.value))]
pub struct GitNameError {
    pub what: &'static str,
    pub value: String,
    pub why: String,
}

fn refuse(what: &'static str, value: &str, why: impl Into<String>) -> GitNameError {
    GitNameError {
        what,
        value: value.to_string(),
        why: why.into(),
    }
}

/// The kinds of repository URL Kiln fetches from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    /// With a key given as a file.
    Ssh,
    Git,
    /// Tests and local mirrors.
    File,
}

/// A checked repository URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    pub scheme: Scheme,
    pub url: String,
}

const MAX_URL: usize = 2048;
const MAX_REF: usize = 255;

/// Check a repository URL: `https://`, `ssh://`, `git://` or `file:///`,
/// printable without spaces, a host that is not an option, no `..` in its
/// path.
pub fn check_repo_url(url: &str) -> Result<RepoUrl, GitNameError> {
    const WHAT: &str = "repository URL";
    if url.is_empty() {
        return Err(refuse(WHAT, url, "is empty"));
    }
    if url.len() > MAX_URL {
        return Err(refuse(WHAT, url, format!("is longer than {MAX_URL} bytes")));
    }
    if let Some(c) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse(
            WHAT,
            url,
            format!("contains {}", shown(&c.to_string())),
        ));
    }
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("ssh://") {
        (Scheme::Ssh, r)
    } else if let Some(r) = url.strip_prefix("git://") {
        (Scheme::Git, r)
    } else if let Some(r) = url.strip_prefix("file://") {
        (Scheme::File, r)
    } else {
        return Err(refuse(
            WHAT,
            url,
            "is not an https://, ssh://, git:// or file:// URL",
        ));
    };
    let (authority, path) = match scheme {
        Scheme::File => ("", rest),
        _ => rest.split_at(rest.find('/').unwrap_or(rest.len())),
    };
    if scheme == Scheme::File && !path.starts_with('/') {
        return Err(refuse(WHAT, url, "must name an absolute path (file:///…)"));
    }
    if scheme != Scheme::File {
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() {
            return Err(refuse(WHAT, url, "has no host"));
        }
        if authority.starts_with('-') || host.starts_with('-') {
            return Err(refuse(
                WHAT,
                url,
                "has a host that git or ssh would read as an option",
            ));
        }
    }
    if path.split('/').any(|c| c == "..") {
        return Err(refuse(WHAT, url, "has `..` in its path"));
    }
    Ok(RepoUrl {
        scheme,
        url: url.to_string(),
    })
}

/// Check a ref (a branch, a tag, or a commit id) by git's own rules
/// (`git check-ref-format`), and that git cannot read it as an option.
pub fn check_ref(r: &str) -> Result<(), GitNameError> {
    const WHAT: &str = "git ref";
    if r.is_empty() {
        return Err(refuse(WHAT, r, "is empty"));
    }
    if r.len() > MAX_REF {
        return Err(refuse(WHAT, r, format!("is longer than {MAX_REF} bytes")));
    }
    if r.starts_with('-') {
        return Err(refuse(
            WHAT,
            r,
            "starts with `-` (git would read it as an option)",
        ));
    }
    if let Some(c) = r
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(*c))
    {
        return Err(refuse(
            WHAT,
            r,
            format!("contains {}", shown(&c.to_string())),
        ));
    }
    if r.contains("..") || r.contains("@{") || r == "@" || r.contains("//") {
        return Err(refuse(WHAT, r, "contains `..`, `@{`, `//` or is `@`"));
    }
    if r.starts_with('/') || r.ends_with('/') || r.ends_with('.') || r.ends_with(".lock") {
        return Err(refuse(
            WHAT,
            r,
            "starts or ends with `/`, or ends with `.` or `.lock`",
        ));
    }
    if r.split('/').any(|c| c.starts_with('.')) {
        return Err(refuse(WHAT, r, "has a part starting with `.`"));
    }
    Ok(())
}

/// Check a path inside a repository (a spec file): relative, normal parts
/// only, printable.
pub fn check_repo_path(p: &str) -> Result<(), GitNameError> {
    const WHAT: &str = "path in the repository";
    if p.is_empty() || p.len() > 1024 {
        return Err(refuse(WHAT, p, "is empty or longer than 1024 bytes"));
    }
    if p.starts_with('/') || p.starts_with('-') {
        return Err(refuse(WHAT, p, "must be relative and not start with `-`"));
    }
    if let Some(c) = p.chars().find(|c| c.is_control()) {
        return Err(refuse(
            WHAT,
            p,
            format!("contains {}", shown(&c.to_string())),
        ));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(refuse(WHAT, p, "has an empty, `.` or `..` part"));
    }
    Ok(())
}

/// `URL#REF` as the CLI takes a source: the URL and the ref, each checked.
pub fn split_source(s: &str) -> Result<(RepoUrl, Option<String>), GitNameError> {
    match s.rsplit_once('#') {
        Some((url, r)) => {
            check_ref(r)?;
            Ok((check_repo_url(url)?, Some(r.to_string())))
        }
        None => Ok((check_repo_url(s)?, None)),
    }
}

/// How a build from git picks its version and gates it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GitMode {
    /// A snapshot version of a commit (`VERSION^YYYYMMDD.HHMMSS.N.gSHA7`);
    /// built when `>=` the newest in the target.
    #[default]
    Ci,
    /// A tag is the version; built only when `>` the newest.
    Release,
}

impl GitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GitMode::Ci => "ci",
            GitMode::Release => "release",
        }
    }
}

impl std::str::FromStr for GitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ci" => Ok(GitMode::Ci),
            "release" => Ok(GitMode::Release),
            _ => Err(format!("unknown mode {s:?} (ci or release)")),
        }
    }
}

/// What started a build from git.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    #[default]
    Cli,
    Web,
    Webhook,
    Mqtt,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Cli => "cli",
            TriggerKind::Web => "web",
            TriggerKind::Webhook => "webhook",
            TriggerKind::Mqtt => "mqtt",
        }
    }
}

/// Where a build from git takes its sources, and what it found there: its
/// request (project, URLs, ref, mode, trigger) when queued, completed with
/// the commit ids and the version once its srpm job has made the SRPM.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct BuildSource {
    pub project: String,
    pub mode: GitMode,
    /// The upstream repository's URL.
    pub upstream: String,
    /// The upstream ref built (a branch, a tag or a commit id).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The upstream commit (full id): asked for (a webhook's), or the one
    /// the srpm job found at the ref.
    #[serde(default)]
    pub upstream_commit: Option<String>,
    /// The packaging repository (none: the spec is in upstream).
    #[serde(default)]
    pub packaging: Option<String>,
    #[serde(default)]
    pub packaging_ref: Option<String>,
    #[serde(default)]
    pub packaging_commit: Option<String>,
    /// The spec's path in its repository (none: the one `*.spec` at the top).
    #[serde(default)]
    pub spec: Option<String>,
    #[serde(default)]
    pub submodules: bool,
    #[serde(default)]
    pub tag_wins: bool,
    /// The version (and, for an rpm without `^`, release) the srpm job gave
    /// the spec.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub release: Option<String>,
    /// cli, web, webhook or mqtt.
    pub trigger: TriggerKind,
    /// The webhook's or MQTT message's delivery id.
    #[serde(default)]
    pub delivery: Option<String>,
    /// Who sent it (the token's user, the pusher).
    #[serde(default)]
    pub sender: Option<String>,
}

/// A project: sources tied to targets. One build per target when it is
/// built, each with its own version gate.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub name: String,
    pub targets: Vec<String>,
    /// The upstream repository (the software).
    pub upstream: String,
    /// The ref built when a trigger names none (none: the remote's HEAD).
    #[serde(default)]
    pub upstream_ref: Option<String>,
    /// The packaging repository (the spec and patches); none: the spec is
    /// in upstream (Packit style).
    #[serde(default)]
    pub packaging: Option<String>,
    #[serde(default)]
    pub packaging_ref: Option<String>,
    /// The spec's path in the packaging repository (or upstream); none:
    /// the one `*.spec` at its top.
    #[serde(default)]
    pub spec: Option<String>,
    #[serde(default)]
    pub mode: GitMode,
    /// Include upstream's submodules in the tarball.
    #[serde(default)]
    pub submodules: bool,
    /// Release mode: the tag's version wins over the spec's.
    #[serde(default)]
    pub tag_wins: bool,
    /// A new push cancels a running build of the same branch too (queued
    /// ones are always replaced).
    #[serde(default)]
    pub cancel_superseded: bool,
    /// Signs webhooks and MQTT triggers; none: the project takes neither.
    #[serde(default)]
    pub secret: Option<String>,
    /// The secret from a file (the master's `[[project]]` tables): read at
    /// start, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub secret_file: Option<std::path::PathBuf>,
}

impl Project {
    /// Check every name and URL of the project (not whether its targets
    /// exist: the master knows those).
    pub fn validate(&self) -> Result<(), GitNameError> {
        crate::names::check_ident("project", &self.name).map_err(|e| GitNameError {
            what: "project name",
            value: self.name.clone(),
            why: e.to_string(),
        })?;
        if self.targets.is_empty() {
            return Err(refuse("project", &self.name, "has no target"));
        }
        check_repo_url(&self.upstream)?;
        if let Some(r) = &self.upstream_ref {
            check_ref(r)?;
        }
        if let Some(u) = &self.packaging {
            check_repo_url(u)?;
        }
        if let Some(r) = &self.packaging_ref {
            check_ref(r)?;
        }
        if let Some(p) = &self.spec {
            check_repo_path(p)?;
        }
        if self.secret_file.is_some() {
            return Err(refuse(
                "project",
                &self.name,
                "secret_file is read by the master at start; send the secret itself",
            ));
        }
        if let Some(s) = &self.secret {
            if s.len() < 8 || s.len() > 1024 || s.chars().any(|c| c.is_control()) {
                return Err(refuse(
                    "project secret",
                    "(hidden)",
                    "must be 8 to 1024 printable characters",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a full commit id (40 or, for SHA-256 repositories, 64
/// lower-case hex digits).
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---------------------------------------------------------------------------
// Versions of builds from git, and what the srpm job reads from a spec.
// Pure functions: the worker's srpm job (`kiln_worker::srpm`) runs git,
// rpmspec and rpmbuild around them.

/// Whether `v` can be an rpm version: `[A-Za-z0-9._+~^]` only, starting
/// with a letter or a digit, at most 255 bytes (`^` is rpm's snapshot
/// separator, 4.15 and later).
pub fn is_rpm_version(v: &str) -> bool {
    v.len() <= 255
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~^".contains(c))
}

/// The version a release tag names: the tag (`refs/tags/` removed) without
/// a leading `v` or `V`. It must start with a digit and hold only
/// `[A-Za-z0-9._+~]` (`v1.3`, `2.0.1`, `1.0~rc1`); else "tag X is not a
/// version".
pub fn tag_version(tag: &str) -> Result<String, String> {
    let name = tag.strip_prefix("refs/tags/").unwrap_or(tag);
    let v = name
        .strip_prefix(['v', 'V'])
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(name);
    if v.starts_with(|c: char| c.is_ascii_digit()) && is_rpm_version(v) && !v.contains('^') {
        Ok(v.to_string())
    } else {
        Err(format!(
            "tag {} is not a version (a version starts with a digit and holds only \
             letters, digits and `._+~`, after an optional leading `v`)",
            crate::names::printable(name)
        ))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (for logs).
pub fn utc_iso(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::time::utc(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The first 7 hex digits of a commit id.
pub fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// A CI build's snapshot version: `VERSION^YYYYMMDD.HHMMSS.N.gSHA7`, the
/// date and time being the upstream commit's committer date (`unix`, in
/// UTC) and `n` the commits since the last tag. rpm sorts it above
/// `VERSION`, below the next version, and in commit-date order between
/// snapshots of one version; the same commit gives the same string.
pub fn snapshot_version(version: &str, unix: i64, n: u64, commit: &str) -> String {
    let (y, mo, d, h, mi, s) = crate::time::utc(unix);
    format!(
        "{version}^{y:04}{mo:02}{d:02}.{h:02}{mi:02}{s:02}.{n}.g{}",
        short_commit(commit)
    )
}

/// The same snapshot for an rpm without `^` (older than 4.15): the version
/// stays, the release becomes `0.N.YYYYMMDDgitSHA7` (the spec adds
/// `%{?dist}`).
pub fn snapshot_release(unix: i64, n: u64, commit: &str) -> String {
    let (y, mo, d, ..) = crate::time::utc(unix);
    format!("0.{n}.{y:04}{mo:02}{d:02}git{}", short_commit(commit))
}

/// Whether the rpm that printed `rpm --version` (`RPM version 4.18.0`)
/// knows `^` (4.15 and later); `None` when the text is not understood.
pub fn rpm_supports_caret(version_output: &str) -> Option<bool> {
    let rest = version_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("RPM version "))?;
    let mut parts = rest.trim().split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor) >= (4, 15))
}

/// Where the tag `tag` starts a line of a spec (leading blanks allowed,
/// the name in any case, blanks, then `:`): the byte offset of the value
/// (after the colon) in `line`.
fn tag_value_at(line: &str, tag: &str) -> Option<usize> {
    let lead = line.len() - line.trim_start_matches([' ', '\t']).len();
    let rest = &line[lead..];
    let head = rest.get(..tag.len())?;
    if !head.eq_ignore_ascii_case(tag) {
        return None;
    }
    let after = &rest[tag.len()..];
    let blanks = after.len() - after.trim_start_matches([' ', '\t']).len();
    after[blanks..]
        .starts_with(':')
        .then_some(lead + tag.len() + blanks + 1)
}

/// The spec `text` with the value of its first `tag:` line (at the start
/// of a line, the tag's name in any case) replaced by `value`; the rest of
/// the file as it was. `None` when no line sets `tag`.
pub fn set_spec_tag(text: &str, tag: &str, value: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + value.len());
    let mut done = false;
    for line in text.split_inclusive('\n') {
        match tag_value_at(line, tag).filter(|_| !done) {
            Some(at) => {
                let eol = if line.ends_with("\r\n") {
                    "\r\n"
                } else if line.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                out.push_str(&line[..at]);
                out.push(' ');
                out.push_str(value);
                out.push_str(eol);
                done = true;
            }
            None => out.push_str(line),
        }
    }
    done.then_some(out)
}

/// The value of the first line of `text` that sets one of `tags` (as
/// [`set_spec_tag`] finds it), trimmed.
pub fn spec_tag_value<'a>(text: &'a str, tags: &[&str]) -> Option<&'a str> {
    text.lines().find_map(|line| {
        tags.iter()
            .find_map(|t| tag_value_at(line, t))
            .map(|at| line[at..].trim())
    })
}

/// The file name rpm gives a `Source` value: what follows its last `/`
/// (`https://h/archive/v1.tar.gz#/p-1.tar.gz` → `p-1.tar.gz`).
pub fn source_file_name(value: &str) -> &str {
    value.rsplit('/').next().unwrap_or(value)
}

/// How an upstream tarball is made, by the name the spec's `Source0`
/// gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `.tar`
    Tar,
    /// `.tar.gz`, `.tgz`: `gzip -n` (no name, no time: the same bytes for
    /// the same commit).
    TarGz,
    /// `.tar.xz`
    TarXz,
    /// `.tar.bz2`
    TarBz2,
    /// `.tar.zst`
    TarZst,
    /// `.zip`, made by `git archive --format=zip`.
    Zip,
}

impl ArchiveFormat {
    /// The compressor run on the tar (`None`: plain tar, or zip) and the
    /// suffix it adds to the file's name.
    pub fn compressor(self) -> Option<(&'static [&'static str], &'static str)> {
        match self {
            ArchiveFormat::Tar | ArchiveFormat::Zip => None,
            ArchiveFormat::TarGz => Some((&["gzip", "-n", "-q"], ".gz")),
            ArchiveFormat::TarXz => Some((&["xz", "-T1", "-q"], ".xz")),
            ArchiveFormat::TarBz2 => Some((&["bzip2", "-q"], ".bz2")),
            ArchiveFormat::TarZst => Some((&["zstd", "-q", "--rm", "--no-progress"], ".zst")),
        }
    }
}

/// The archive format a `Source0` file name asks for, if Kiln can make it.
pub fn archive_format(name: &str) -> Option<ArchiveFormat> {
    let n = name.to_ascii_lowercase();
    [
        (".tar.gz", ArchiveFormat::TarGz),
        (".tgz", ArchiveFormat::TarGz),
        (".tar.xz", ArchiveFormat::TarXz),
        (".tar.bz2", ArchiveFormat::TarBz2),
        (".tar.zst", ArchiveFormat::TarZst),
        (".tar", ArchiveFormat::Tar),
        (".zip", ArchiveFormat::Zip),
    ]
    .into_iter()
    .find(|(suffix, _)| n.len() > suffix.len() && n.ends_with(suffix))
    .map(|(_, f)| f)
}

/// A repository URL as logs and messages show it: the credentials of an
/// https or git URL (`https://TOKEN@host`, `https://user:pw@host`) and the
/// password of an ssh one replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let shown = match (scheme, userinfo.split_once(':')) {
        ("ssh", Some((user, _))) => format!("{user}:***"),
        ("ssh", None) => userinfo.to_string(),
        _ => "***".to_string(),
    };
    format!("{scheme}://{shown}@{host}{path}")
}

/// The name of the bare mirror a worker keeps for repository `url`: the
/// first 20 hex digits of its sha256, `.git`.
pub fn mirror_name(url: &str) -> String {
    format!("{}.git", &crate::fsutil::sha256_bytes(url.as_bytes())[..20])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_schemes_are_taken() {
        for (u, s) in [
            ("https://git.example.org/pkgs/bash.git", Scheme::Https),
            ("ssh://git@git.example.org:2222/pkgs/bash.git", Scheme::Ssh),
            ("git://git.example.org/bash", Scheme::Git),
            ("file:///srv/mirrors/bash.git", Scheme::File),
        ] {
            assert_eq!(check_repo_url(u).unwrap().scheme, s, "{u}");
        }
    }

    #[test]
    fn what_git_or_ssh_would_misread_is_refused() {
        for u in [
            "http://git.example.org/x",
            "ext::sh -c touch% /tmp/pwned",
            "--upload-pack=touch /tmp/pwned",
            "ssh://-oProxyCommand=touch%20/tmp/pwned/x",
            "ssh://git@-oProxyCommand=x/y",
            "https://",
            "file://relative/path",
            "file:///srv/../etc/shadow",
            "https://h/a\nb",
            "https://h/a b",
            "git@github.com:owner/repo.git",
            "",
        ] {
            let e = check_repo_url(u).unwrap_err();
            assert!(e.to_string().starts_with("repository URL "), "{e}");
        }
    }

    #[test]
    fn refs_follow_git_check_ref_format() {
        for r in ["main", "v1.2.3", "release/9.4", "0123abcd", "feature-x_y"] {
            check_ref(r).unwrap();
        }
        for r in [
            "--upload-pack=x",
            "-x",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "@",
            "a@{1}",
            "/a",
            "a/",
            "a.",
            "a.lock",
            ".hidden",
            "a/.b",
            "a//b",
            "a\u{7}",
            "",
        ] {
            let e = check_ref(r).unwrap_err();
            assert!(e.to_string().starts_with("git ref "), "{e}");
        }
        // The message never carries the control character itself.
        let e = check_ref("a\u{1b}[31m").unwrap_err().to_string();
        assert!(!e.contains('\u{1b}') && e.contains("\\u{1b}"), "{e}");
    }

    #[test]
    fn paths_stay_inside_the_repository() {
        check_repo_path("bash.spec").unwrap();
        check_repo_path("rpm/bash.spec").unwrap();
        for p in [
            "",
            "/etc/passwd",
            "../x.spec",
            "a/../../x",
            "a//b",
            "./a",
            "-x",
            "a\nb",
        ] {
            assert!(check_repo_path(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn a_source_is_a_url_and_an_optional_ref() {
        let (u, r) = split_source("https://h/up.git#v2.0").unwrap();
        assert_eq!(
            (u.url.as_str(), r.as_deref()),
            ("https://h/up.git", Some("v2.0"))
        );
        let (u, r) = split_source("file:///srv/pk.git").unwrap();
        assert_eq!((u.url.as_str(), r), ("file:///srv/pk.git", None));
        assert!(split_source("https://h/up.git#--upload-pack=x").is_err());
    }
    #[test]
    fn tags_name_versions() {
        for (t, v) in [
            ("v1.3", "1.3"),
            ("V2.0.1", "2.0.1"),
            ("refs/tags/v1.0~rc1", "1.0~rc1"),
            ("1.2.3", "1.2.3"),
            ("2024.01+git", "2024.01+git"),
        ] {
            assert_eq!(tag_version(t).unwrap(), v, "{t}");
        }
        for t in [
            "foo",
            "v",
            "vfoo",
            "release-1.0",
            "v1.0-1",
            "1.0^1",
            "v1 2",
            "v1\u{1b}",
        ] {
            let e = tag_version(t).unwrap_err();
            assert!(
                e.starts_with("tag ") && e.contains(" is not a version"),
                "{e}"
            );
            assert!(!e.contains('\u{1b}'), "{e}");
        }
        assert!(tag_version("foo")
            .unwrap_err()
            .starts_with("tag foo is not a version"));
        assert!(is_rpm_version("1.0^20260101.000000.1.gabc1234"));
        assert!(is_rpm_version("abc"));
        for v in ["", "-1", ".1", "1-2", "1 2", "1/2", "1%{x}"] {
            assert!(!is_rpm_version(v), "{v:?}");
        }
    }

    #[test]
    fn snapshots_are_made_from_the_commit_date_in_utc() {
        // 2026-01-02T03:04:05Z
        let t = 1_767_323_045;
        assert_eq!(utc_iso(t), "2026-01-02T03:04:05Z");
        assert_eq!(utc_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_iso(951_782_400), "2000-02-29T00:00:00Z");
        let sha = "abc1234def567890abc1234def567890abc12345";
        assert_eq!(
            snapshot_version("1.0", t, 3, sha),
            "1.0^20260102.030405.3.gabc1234"
        );
        assert_eq!(snapshot_release(t, 3, sha), "0.3.20260102gitabc1234");
        assert!(is_rpm_version(&snapshot_version("1.0", t, 3, sha)));
    }

    /// The scheme's promise, in rpm's own order: above the release it
    /// follows, in date order between snapshots, below the next release.
    #[test]
    fn snapshots_sort_between_releases() {
        use crate::srpm::compare_evr;
        use std::cmp::Ordering::Less;
        let day = |d: i64| 1_767_225_600 + (d - 1) * 86_400; // 2026-01-d
        let s1 = snapshot_version("1.0", day(1), 1, "abc1234000");
        let s2 = snapshot_version("1.0", day(2), 2, "def5678000");
        assert_eq!(s1, "1.0^20260101.000000.1.gabc1234");
        assert_eq!(s2, "1.0^20260102.000000.2.gdef5678");
        let chain = ["1.0", &s1, &s2, "1.0.1"];
        for w in chain.windows(2) {
            assert_eq!(compare_evr(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
        }
        // Later the same day sorts later; a release of the next version
        // sorts after every snapshot of this one.
        let s3 = snapshot_version("1.0", day(2) + 3600, 2, "0000000000");
        assert_eq!(compare_evr(&s2, &s3), Less);
        for s in [
            &s1,
            &s2,
            &s3,
            &snapshot_version("1.0", day(3000), 999, "fff"),
        ] {
            assert_eq!(compare_evr(s, "1.1"), Less, "{s} < 1.1");
        }
        // The fallback release for an rpm without `^`.
        let r1 = format!("1.0-{}", snapshot_release(day(1), 1, "abc1234"));
        let r2 = format!("1.0-{}", snapshot_release(day(2), 2, "def5678"));
        assert_eq!(compare_evr(&r1, &r2), Less);
        assert_eq!(compare_evr(&r2, "1.0-1"), Less);
    }

    #[test]
    fn rpm_versions_tell_the_caret() {
        assert_eq!(rpm_supports_caret("RPM version 4.18.0\n"), Some(true));
        assert_eq!(rpm_supports_caret("RPM version 4.15.0"), Some(true));
        assert_eq!(rpm_supports_caret("RPM version 4.14.3"), Some(false));
        assert_eq!(rpm_supports_caret("RPM version 5.0-alpha"), Some(true));
        assert_eq!(rpm_supports_caret("rpm: not found"), None);
    }

    #[test]
    fn a_spec_tag_is_rewritten_in_place() {
        let spec = "%global x 1\nName: p\n  version :  %{x}.0\nRelease: 1%{?dist}\n\
                    %package y\nVersion: 9\n%description\nVersionX: no\n";
        let out = set_spec_tag(spec, "Version", "2.0^1").unwrap();
        assert_eq!(
            out,
            "%global x 1\nName: p\n  version : 2.0^1\nRelease: 1%{?dist}\n\
             %package y\nVersion: 9\n%description\nVersionX: no\n"
        );
        let out = set_spec_tag("Release:1\r\nx", "release", "0.1%{?dist}").unwrap();
        assert_eq!(out, "Release: 0.1%{?dist}\r\nx");
        assert_eq!(set_spec_tag("Name: p\nVersionX: 1\n", "Version", "1"), None);
        assert_eq!(
            spec_tag_value(
                "Name: p\nSource1: b.tgz\nsource0: https://h/x/p-1.tar.gz\n",
                &["Source0", "Source"]
            ),
            Some("https://h/x/p-1.tar.gz")
        );
        assert_eq!(
            spec_tag_value("Source: a.tar\n", &["Source0", "Source"]),
            Some("a.tar")
        );
        assert_eq!(
            spec_tag_value("SourceLicense: MIT\n", &["Source0", "Source"]),
            None
        );
        assert_eq!(
            source_file_name("https://h/a/v1.tar.gz#/p-1.tar.gz"),
            "p-1.tar.gz"
        );
        assert_eq!(source_file_name("p-1.zip"), "p-1.zip");
    }

    #[test]
    fn archive_formats_by_name() {
        use ArchiveFormat::*;
        for (n, f) in [
            ("p-1.tar.gz", Some(TarGz)),
            ("p-1.TGZ", Some(TarGz)),
            ("p-1.tar.xz", Some(TarXz)),
            ("p-1.tar.bz2", Some(TarBz2)),
            ("p-1.tar.zst", Some(TarZst)),
            ("p-1.tar", Some(Tar)),
            ("p-1.zip", Some(Zip)),
            ("p-1.tar.lz", None),
            ("p-1.gem", None),
            (".tar", None),
        ] {
            assert_eq!(archive_format(n), f, "{n}");
        }
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redact_url("https://user:s3cret@h.example/a.git"),
            "https://***@h.example/a.git"
        );
        assert_eq!(redact_url("https://ghp_token@h/a"), "https://***@h/a");
        assert_eq!(redact_url("ssh://git@h:22/a"), "ssh://git@h:22/a");
        assert_eq!(redact_url("ssh://git:pw@h/a"), "ssh://git:***@h/a");
        assert_eq!(redact_url("file:///srv/a@b"), "file:///srv/a@b");
        assert_eq!(mirror_name("file:///x").len(), 24);
        assert_ne!(mirror_name("file:///x"), mirror_name("file:///y"));
    }
}
