//! What a master publishes: `kiln repo ls`, the files under
//! `DATA/repos/<target>/<repo>/`, and the repository metadata createrepo_c
//! wrote for them (repomd.xml, primary.xml), checked against the disk.

use super::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------
// `kiln repo ls` and the published files
// ---------------------------------------------------------------------------

/// One entry of `kiln repo ls T --json`.
#[derive(Clone, Debug)]
pub struct Pub {
    pub name: String,
    pub epoch: String,
    pub version: String,
    pub release: String,
    pub arch: String,
    pub repo: String,
    pub file: String,
}

impl Pub {
    pub fn evr(&self) -> String {
        format!("{}-{}", self.version, self.release)
    }

    /// The file name alone.
    pub fn basename(&self) -> String {
        Path::new(&self.file)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None if key == "epoch" => "0".to_string(),
        other => panic!("`kiln repo ls --json`: `{key}` is missing or odd ({other:?}) in {v}"),
    }
}

/// `kiln repo ls T --json`.
pub fn repo_ls(m: &Master, target: &str) -> Vec<Pub> {
    let v = m.cli_json(&["repo", "ls", target, "--json"]);
    let Value::Array(a) = v else {
        panic!("`kiln repo ls {target} --json` is not an array: {v}");
    };
    a.into_iter()
        .map(|e| {
            let mut epoch = field(&e, "epoch");
            if epoch.is_empty() {
                epoch = "0".to_string();
            }
            Pub {
                name: field(&e, "name"),
                epoch,
                version: field(&e, "version"),
                release: field(&e, "release"),
                arch: field(&e, "arch"),
                repo: field(&e, "repo"),
                file: field(&e, "file"),
            }
        })
        .collect()
}

/// The entries of one package (by name).
pub fn entries_of(ls: &[Pub], name: &str) -> Vec<Pub> {
    ls.iter().filter(|p| p.name == name).cloned().collect()
}

/// `DATA/repos/<target>/<repo>/`.
pub fn repo_dir(m: &Master, target: &str, repo: &str) -> PathBuf {
    m.data.join("repos").join(target).join(repo)
}

/// Where the file of a `repo ls` entry is on disk: `file` is taken as
/// relative to the repository directory (`DATA/repos/T/<repo>/`), or to
/// `DATA/repos/T/`, or as an absolute path.
pub fn published_path(m: &Master, target: &str, p: &Pub) -> PathBuf {
    let f = Path::new(&p.file);
    if f.is_absolute() {
        assert!(
            f.is_file(),
            "`repo ls` names {} which is not a file",
            p.file
        );
        return f.to_path_buf();
    }
    let candidates = [
        repo_dir(m, target, &p.repo).join(f),
        m.data.join("repos").join(target).join(f),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "`kiln repo ls {target}` lists {} in repo {} but no such file is on disk (looked at \
         {candidates:?}); files of the target: {:?}",
        p.file,
        p.repo,
        files_under(&m.data.join("repos").join(target))
    );
}

/// The path of a published file relative to its repository directory, as
/// it is served under `http://API/repos/T/<repo>/`.
pub fn served_rel(m: &Master, target: &str, p: &Pub) -> String {
    let path = published_path(m, target, p);
    let dir = repo_dir(m, target, &p.repo);
    path.strip_prefix(&dir)
        .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), dir.display()))
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------
// Repository metadata as createrepo_c wrote it
// ---------------------------------------------------------------------------

/// One `<package>` of primary.xml.
#[derive(Clone, Debug)]
pub struct PrimaryPkg {
    pub name: String,
    pub arch: String,
    pub ver: String,
    pub rel: String,
    pub href: String,
    pub checksum_type: String,
    pub checksum: String,
    pub size: Option<u64>,
}

impl PrimaryPkg {
    pub fn evr(&self) -> String {
        format!("{}-{}", self.ver, self.rel)
    }
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the text of one tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    for q in ['"', '\''] {
        let pat = format!(" {name}={q}");
        if let Some(i) = tag.find(&pat) {
            let rest = &tag[i + pat.len()..];
            if let Some(j) = rest.find(q) {
                return Some(xml_unescape(&rest[..j]));
            }
        }
    }
    None
}

/// The text of the first `<tag …>` (up to its `>`) in `s`.
fn first_tag<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let mut from = 0;
    while let Some(i) = s[from..].find(&open) {
        let start = from + i;
        let after = s[start + open.len()..].chars().next();
        if matches!(
            after,
            Some(' ') | Some('>') | Some('/') | Some('\n') | Some('\t')
        ) {
            let end = s[start..].find('>').map(|j| start + j + 1)?;
            return Some(&s[start..end]);
        }
        from = start + open.len();
    }
    None
}

/// The text between `<tag…>` and `</tag>` (first occurrence).
fn element_text(s: &str, tag: &str) -> Option<String> {
    let t = first_tag(s, tag)?;
    let start = s.find(t)? + t.len();
    let end = s[start..].find(&format!("</{tag}>"))? + start;
    Some(xml_unescape(s[start..end].trim()))
}

/// Reads a file, decompressing it by its extension with the host's tool.
pub fn read_maybe_compressed(path: &Path) -> String {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".gz") {
        Some("gzip")
    } else if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".bz2") {
        Some("bzip2")
    } else {
        None
    };
    match tool {
        None => fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
        Some(t) => {
            require_tool(t);
            let mut cmd = Command::new(t);
            cmd.arg("-dc").arg(path);
            run_timeout(cmd, CLI_TIMEOUT, &format!("{t} -dc {}", path.display()))
                .assert_ok()
                .stdout
        }
    }
}

/// `(type, href)` of every `<data>` of `repodata/repomd.xml` in `repo`.
pub fn repomd_entries(repo: &Path) -> Vec<(String, String)> {
    let path = repo.join("repodata").join("repomd.xml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no {} ({e}); the repository has: {:?}",
            path.display(),
            files_under(repo)
        )
    });
    let mut out = Vec::new();
    for block in text.split("<data ").skip(1) {
        let head = block.split('>').next().unwrap_or("");
        let ty = attr(&format!(" {head}"), "type").unwrap_or_default();
        let href = first_tag(block, "location")
            .and_then(|t| attr(t, "href"))
            .unwrap_or_else(|| panic!("a <data> without <location href> in {}", path.display()));
        out.push((ty, href));
    }
    out
}

/// The packages of a repository's primary metadata.
pub fn primary_pkgs(repo: &Path) -> Vec<PrimaryPkg> {
    let entries = repomd_entries(repo);
    let (_, href) = entries
        .iter()
        .find(|(t, _)| t == "primary")
        .unwrap_or_else(|| panic!("no primary in {}/repodata/repomd.xml", repo.display()));
    let xml = read_maybe_compressed(&repo.join(href));
    let mut pkgs = Vec::new();
    for block in xml.split("<package ").skip(1) {
        let block = block.split("</package>").next().unwrap_or(block);
        let version = first_tag(block, "version").unwrap_or("");
        let checksum = first_tag(block, "checksum").unwrap_or("");
        let location = first_tag(block, "location").unwrap_or_else(|| {
            panic!(
                "a package without <location> in primary of {}",
                repo.display()
            )
        });
        if attr(location, "xml:base").is_some() {
            eprintln!(
                "note: primary of {} uses xml:base: {location}",
                repo.display()
            );
        }
        pkgs.push(PrimaryPkg {
            name: element_text(block, "name").unwrap_or_default(),
            arch: element_text(block, "arch").unwrap_or_default(),
            ver: attr(version, "ver").unwrap_or_default(),
            rel: attr(version, "rel").unwrap_or_default(),
            href: attr(location, "href").unwrap_or_default(),
            checksum_type: attr(checksum, "type").unwrap_or_default(),
            checksum: element_text(block, "checksum").unwrap_or_default(),
            size: first_tag(block, "size")
                .and_then(|t| attr(t, "package"))
                .and_then(|s| s.parse().ok()),
        });
    }
    pkgs
}

/// Checks that a repository is whole: repomd.xml is there, every metadata
/// file it names is on disk, every package primary.xml names is on disk
/// once, with the size and sha256 the metadata gives. Returns the packages.
pub fn check_repo_consistent(repo: &Path) -> Vec<PrimaryPkg> {
    for (ty, href) in repomd_entries(repo) {
        assert!(
            repo.join(&href).is_file(),
            "{}/repodata/repomd.xml names {href} ({ty}) which is not on disk",
            repo.display()
        );
    }
    let pkgs = primary_pkgs(repo);
    let mut seen = std::collections::BTreeSet::new();
    for p in &pkgs {
        assert!(
            seen.insert(p.href.clone()),
            "primary of {} names {} twice",
            repo.display(),
            p.href
        );
        let path = repo.join(&p.href);
        let md = fs::metadata(&path).unwrap_or_else(|e| {
            panic!(
                "primary of {} names {} ({}-{}) which is not on disk ({e}); files: {:?}",
                repo.display(),
                p.href,
                p.name,
                p.evr(),
                files_under(repo)
            )
        });
        if let Some(size) = p.size {
            assert_eq!(
                md.len(),
                size,
                "{}: size on disk differs from the metadata",
                path.display()
            );
        }
        if p.checksum_type == "sha256" {
            assert_eq!(
                sha256_file(&path),
                p.checksum.to_lowercase(),
                "{}: sha256 on disk differs from the metadata",
                path.display()
            );
        }
    }
    pkgs
}

/// The primary entries of one package (by name).
pub fn primary_of<'a>(pkgs: &'a [PrimaryPkg], name: &str) -> Vec<&'a PrimaryPkg> {
    pkgs.iter().filter(|p| p.name == name).collect()
}
