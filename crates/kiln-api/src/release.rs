//! Releases (issue 12): a succeeded image build promoted to a channel of a
//! release (`POST /api/v1/releases/{name}/promote`), a channel rolled back
//! (`POST /api/v1/releases/{name}/rollback`), and a release's channels,
//! versions and history (`GET /api/v1/releases/{name}`). The files are
//! served at `/releases/<name>/<channel>/<version>/` and
//! `/releases/<name>/<channel>/latest/`.

use serde::{Deserialize, Serialize};

/// The channel a promotion goes to when the request names none.
pub const DEFAULT_CHANNEL: &str = "stable";

/// `POST /api/v1/releases/{name}/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromoteRequest {
    /// The image build to promote (it must have succeeded).
    pub build: i64,
    /// The channel (an identifier; default `stable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// `POST /api/v1/releases/{name}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackRequest {
    /// The channel whose `latest` goes back to the version before.
    pub channel: String,
}

/// One file of a released version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseFile {
    /// Its path in the version directory (`<arch>/<name>` when the image
    /// has several arches, else `<name>`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256 (lowercase hex).
    pub sha256: String,
}

/// What a promotion (or a rollback) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromoteAnswer {
    /// The release.
    pub release: String,
    /// The channel.
    pub channel: String,
    /// The version `latest` now points at.
    pub version: String,
    /// The image build it comes from.
    pub build: i64,
    /// False when nothing changed (that build was already the channel's
    /// `latest`).
    pub changed: bool,
    /// The version `latest` pointed at before, if any.
    pub previous: Option<String>,
    /// Where the files are served: `/releases/<name>/<channel>/<version>/`.
    pub url: String,
    /// The fingerprint of the key that signed `SHA256SUMS` (`SHA256SUMS.asc`);
    /// none: the target has no `sign_key` and the release is unsigned.
    pub signed_by: Option<String>,
    /// The files (besides `SHA256SUMS` and `SHA256SUMS.asc`).
    pub files: Vec<ReleaseFile>,
    /// What happened, in a sentence.
    pub message: String,
}

/// One version of a channel still on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseVersion {
    /// The version (the image build's version).
    pub version: String,
    /// The image build it comes from.
    pub build: i64,
    /// `latest` points at it.
    pub latest: bool,
}

/// A channel of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelView {
    /// Its name.
    pub name: String,
    /// The version `latest` points at.
    pub latest: Option<String>,
    /// The versions kept (newest promotion first).
    pub versions: Vec<ReleaseVersion>,
}

/// One entry of a release's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromotionView {
    /// The entry's id.
    pub id: i64,
    /// The channel.
    pub channel: String,
    /// The version (the image build's version).
    pub version: String,
    /// The image build the version comes from.
    pub build: i64,
    /// `promote` or `rollback`.
    pub action: String,
    /// The name of the token that did it.
    pub who: Option<String>,
    /// Unix ms.
    pub at: i64,
    /// It is what the channel's `latest` points at now.
    pub current: bool,
}

/// `GET /api/v1/releases/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseView {
    /// Its name.
    pub name: String,
    /// Its channels, by name.
    pub channels: Vec<ChannelView>,
    /// Every promotion and rollback, newest first.
    pub history: Vec<PromotionView>,
}
