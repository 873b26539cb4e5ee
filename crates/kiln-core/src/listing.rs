//! The listing file a job uploads beside its artifacts: one entry per file,
//! with kind, size, sha256 and (for packages) NEVRA.

use serde::{Deserialize, Serialize};

pub const LISTING_NAME: &str = "listing.json";

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
