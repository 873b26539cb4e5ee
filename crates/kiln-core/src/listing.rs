//! The listing file a job uploads beside its artifacts: one entry per file,
//! with kind, size, sha256 and (for packages) NEVRA.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{
    check_arch, check_arch_token, check_file_name, check_ident, check_version_field, is_sha256,
    printable, NameError,
};

pub const LISTING_NAME: &str = "listing.json";

/// Largest listing file [`Listing::parse`] reads.
pub const MAX_LISTING_BYTES: usize = 4 * 1024 * 1024;
/// Most artifacts one listing may name.
pub const MAX_LISTING_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingEntry {
    pub name: String,
    pub kind: crate::state::ArtifactKind,
    pub size: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nevra: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    pub job: u64,
    pub attempt: u32,
    pub arch: String,
    pub artifacts: Vec<ListingEntry>,
}

#[derive(Debug, Error)]
pub enum ListingError {
    #[error("the listing is {0} bytes (at most {MAX_LISTING_BYTES})")]
    TooBig(usize),
    #[error("malformed listing: {0}")]
    Json(String),
    #[error("the listing names {0} artifacts (at most {MAX_LISTING_ENTRIES})")]
    TooMany(usize),
    #[error("listing: {0}")]
    Name(#[from] NameError),
    #[error("listing entry {0}: malformed sha256 (64 lower-case hex digits expected)")]
    Sha256(String),
    #[error("listing entry {0} appears twice")]
    Duplicate(String),
    #[error("listing entry {name}: malformed NEVRA: {why}")]
    Nevra { name: String, why: String },
}

impl Listing {
    /// Parse and check a listing from outside: bounded size and entry
    /// count, the job's arch known, every file name, sha256 and NEVRA
    /// well-formed, no name twice.
    pub fn parse(text: &[u8]) -> Result<Listing, ListingError> {
        if text.len() > MAX_LISTING_BYTES {
            return Err(ListingError::TooBig(text.len()));
        }
        let l: Listing = serde_json::from_slice(text)
            .map_err(|e| ListingError::Json(clip(&printable(&e.to_string()))))?;
        // `src`: an srpm job's (a build from git makes its SRPM first).
        if l.arch != "src" {
            check_arch(&l.arch)?;
        }
        if l.artifacts.len() > MAX_LISTING_ENTRIES {
            return Err(ListingError::TooMany(l.artifacts.len()));
        }
        let mut seen = HashSet::new();
        for e in &l.artifacts {
            check_file_name(&e.name)?;
            if !is_sha256(&e.sha256) {
                return Err(ListingError::Sha256(e.name.clone()));
            }
            if !seen.insert(e.name.as_str()) {
                return Err(ListingError::Duplicate(e.name.clone()));
            }
            if let Some(n) = &e.nevra {
                check_nevra(n).map_err(|why| ListingError::Nevra {
                    name: e.name.clone(),
                    why,
                })?;
            }
        }
        Ok(l)
    }
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `name-epoch:version-release.arch`, each part as rpm accepts it.
pub fn check_nevra(nevra: &str) -> Result<(), String> {
    let (rest, arch) = nevra.rsplit_once('.').ok_or("no arch")?;
    let (rest, release) = rest.rsplit_once('-').ok_or("no release")?;
    let (name, ev) = rest.rsplit_once('-').ok_or("no version")?;
    let (epoch, version) = ev.split_once(':').ok_or("no epoch")?;
    if epoch.is_empty() || epoch.len() > 10 || epoch.parse::<u32>().is_err() {
        return Err("the epoch is not a number".into());
    }
    check_ident("package", name).map_err(|e| e.to_string())?;
    check_version_field("version", version).map_err(|e| e.to_string())?;
    check_version_field("release", release).map_err(|e| e.to_string())?;
    if arch != "src" {
        check_arch_token("arch", arch).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ArtifactKind;

    fn listing() -> Listing {
        Listing {
            job: 7,
            attempt: 1,
            arch: "x86_64".into(),
            artifacts: vec![ListingEntry {
                name: "p-1.0-1.x86_64.rpm".into(),
                kind: ArtifactKind::Rpm,
                size: 10,
                sha256: "a".repeat(64),
                nevra: Some("p-0:1.0-1.x86_64".into()),
            }],
        }
    }

    #[test]
    fn a_good_listing_parses() {
        let l = listing();
        let text = serde_json::to_vec(&l).unwrap();
        assert_eq!(Listing::parse(&text).unwrap(), l);
    }

    #[test]
    fn bad_listings_are_refused() {
        type Edit = Box<dyn Fn(&mut Listing)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|l| l.arch = "vax".into()), "unknown arch"),
            (
                Box::new(|l| l.artifacts[0].name = "../x".into()),
                "file name",
            ),
            (
                Box::new(|l| l.artifacts[0].sha256 = "A".repeat(64)),
                "sha256",
            ),
            (
                Box::new(|l| l.artifacts.push(l.artifacts[0].clone())),
                "twice",
            ),
            (
                Box::new(|l| l.artifacts[0].nevra = Some("p-0:1.0-1\u{1b}[2J.x86_64".into())),
                "NEVRA",
            ),
            (
                Box::new(|l| l.artifacts[0].nevra = Some("p-x:1.0-1.x86_64".into())),
                "epoch",
            ),
        ];
        for (edit, want) in cases {
            let mut l = listing();
            edit(&mut l);
            let e = Listing::parse(&serde_json::to_vec(&l).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "want {want:?}: {e}");
            assert!(!e.contains('\u{1b}'), "{e:?}");
        }
        let e = Listing::parse(b"{\"job\":1,\"\x1b[2J\":2}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("malformed listing") && !e.contains('\u{1b}'),
            "{e:?}"
        );
        let big = vec![b' '; MAX_LISTING_BYTES + 1];
        assert!(matches!(Listing::parse(&big), Err(ListingError::TooBig(_))));
    }
}
