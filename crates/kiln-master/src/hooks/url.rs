//! Repository URLs reduced to a comparable key, so a project configured
//! with any form of its URL matches the forms a webhook body gives.

/// The longest URL looked at.
const MAX_URL: usize = 2048;

/// A repository URL reduced to a key: `host/owner/repo`, host and path in
/// lower case (forges treat owner and repository names without regard to
/// case), without scheme, user info, port, query, fragment, empty path
/// parts, trailing `/` or `.git`:
///
/// `https://github.com/Owner/Repo.git`, `http://github.com/owner/repo`,
/// `git@github.com:owner/repo.git`, `ssh://git@github.com/owner/repo.git`,
/// `git://github.com/owner/repo.git`, `https://user:pw@github.com/owner/repo/`
/// all give `github.com/owner/repo`; `ssh://git@host:2222/owner/repo` gives
/// `host/owner/repo`. A local repository keeps its case:
/// `file:///srv/x.git` (or `file://localhost/srv/x`, `/srv/x`) gives
/// `file:/srv/x`.
///
/// None for what is not a repository URL: empty, spaces or control
/// characters, another scheme (`ftp://`), no host, no path.
pub fn repo_key(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty()
        || url.len() > MAX_URL
        || url.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return None;
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        return match scheme.to_ascii_lowercase().as_str() {
            "file" => file_key(rest),
            "http" | "https" | "ssh" | "git" | "git+ssh" | "ssh+git" => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                net_key(host_of(authority, true)?, path)
            }
            _ => None,
        };
    }
    if let Some(path) = strip_prefix_ci(url, "file:") {
        return file_key(path);
    }
    if url.starts_with('/') {
        return file_key(url);
    }
    // scp-like: [user@]host:path (no port in this form).
    let (authority, path) = url.split_once(':')?;
    if authority.contains('/') {
        return None;
    }
    net_key(host_of(authority, false)?, path)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The host of an authority, without user info and (when `port`) port, in
/// lower case.
fn host_of(authority: &str, port: bool) -> Option<String> {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        // An IPv6 literal: [::1]:2222.
        &host[..=host.find(']')?]
    } else if port {
        host.split(':').next().unwrap_or("")
    } else {
        host
    };
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    ok.then(|| host.to_ascii_lowercase())
}

/// The path's non-empty parts, the last without `.git`.
fn parts(path: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if let Some(last) = parts.pop() {
        let last = last.strip_suffix(".git").unwrap_or(last);
        if !last.is_empty() {
            parts.push(last);
        }
    }
    parts
}

fn net_key(host: String, path: &str) -> Option<String> {
    let parts = parts(path);
    if parts.is_empty() {
        return None;
    }
    Some(format!("{host}/{}", parts.join("/").to_lowercase()))
}

/// `file:` + the absolute path (case kept).
fn file_key(rest: &str) -> Option<String> {
    let path = if rest.starts_with('/') {
        rest
    } else {
        strip_prefix_ci(rest, "localhost/").map(|p| &rest[rest.len() - p.len() - 1..])?
    };
    let parts = parts(path);
    if parts.is_empty() {
        return None;
    }
    Some(format!("file:/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::repo_key;

    #[test]
    fn every_form_of_a_repository_gives_one_key() {
        for url in [
            "https://github.com/Owner/Repo.git",
            "https://github.com/owner/repo",
            "https://github.com/owner/repo/",
            "https://github.com/owner/repo.git/",
            "HTTPS://GitHub.COM/owner/repo",
            "http://github.com/owner/repo",
            "https://github.com:443/owner/repo",
            "https://user:pw@github.com/owner/repo/",
            "https://x-access-token@github.com/owner/repo.git",
            "https://github.com//owner//repo",
            "https://github.com/owner/repo?tab=readme#top",
            "git@github.com:owner/repo.git",
            "git@github.com:owner/repo",
            "git@github.com:/owner/repo.git",
            "github.com:Owner/Repo",
            "ssh://git@github.com/owner/repo.git",
            "ssh://git@github.com:22/owner/repo",
            "git+ssh://git@github.com/owner/repo.git",
            "git://github.com/owner/repo.git",
            " https://github.com/owner/repo ",
        ] {
            assert_eq!(
                repo_key(url).as_deref(),
                Some("github.com/owner/repo"),
                "{url}"
            );
        }
    }

    #[test]
    fn other_hosts_ports_groups_and_local_paths() {
        for (url, key) in [
            ("ssh://git@host:2222/owner/repo", "host/owner/repo"),
            (
                "ssh://git@Git.Example.ORG:2222/Owner/Repo.git",
                "git.example.org/owner/repo",
            ),
            (
                "https://gitlab.example.com/group/sub/project.git",
                "gitlab.example.com/group/sub/project",
            ),
            (
                "git@gitlab.example.com:group/sub/project.git",
                "gitlab.example.com/group/sub/project",
            ),
            ("http://[::1]:3000/o/r.git", "[::1]/o/r"),
            ("ssh://git@[::1]:2222/o/r", "[::1]/o/r"),
            (
                "http://localhost:3000/gitea/webhooks",
                "localhost/gitea/webhooks",
            ),
            ("file:///srv/x.git", "file:/srv/x"),
            ("file:///srv/x", "file:/srv/x"),
            ("file:///srv/x/", "file:/srv/x"),
            ("file:///srv/Mirror/X.git", "file:/srv/Mirror/X"),
            ("file://localhost/srv/x.git", "file:/srv/x"),
            ("file:/srv/x.git", "file:/srv/x"),
            ("/srv/x.git", "file:/srv/x"),
        ] {
            assert_eq!(repo_key(url).as_deref(), Some(key), "{url}");
        }
    }

    #[test]
    fn different_repositories_differ() {
        let a = repo_key("https://github.com/owner/repo");
        for other in [
            "https://github.com/owner/repo2",
            "https://github.com/other/repo",
            "https://gitlab.com/owner/repo",
            "https://github.com/owner/repo/extra",
            "file:///owner/repo",
        ] {
            assert_ne!(repo_key(other), a, "{other}");
        }
    }

    #[test]
    fn what_is_not_a_repository_url_has_no_key() {
        for url in [
            "",
            "   ",
            "https://",
            "https://github.com",
            "https://github.com/",
            "https:///owner/repo",
            "https://user@/owner/repo",
            "ftp://github.com/owner/repo",
            "mailto:someone@example.com/x y",
            "https://github.com/owner/re po",
            "https://github.com/owner/\nrepo",
            "owner/repo",
            "file://otherhost/srv/x",
            "file:///",
            "https://-oProxyCommand=x/owner/repo",
            "https://[::1/o/r",
            "git@:owner/repo",
        ] {
            assert_eq!(repo_key(url), None, "{url:?}");
        }
        let long = format!("https://github.com/{}", "a".repeat(4096));
        assert_eq!(repo_key(&long), None);
    }
}
