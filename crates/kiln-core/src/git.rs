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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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

/// Whether `s` is a full commit id (40 or, for SHA-256 repositories, 64
/// lower-case hex digits).
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
}
