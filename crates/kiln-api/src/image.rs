//! Images (issue 12): the recipes the master knows (`GET /api/v1/images`),
//! a build of one (`POST /api/v1/images/{name}/build`) and an image build
//! as `kiln image show` prints it (`GET /api/v1/image-builds/{id}`).

use serde::{Deserialize, Serialize};

use crate::BuildView;
pub use kiln_core::image::{BootTest, ImageFormat, ImageRecipe};
use kiln_core::state::BuildState;

/// A recipe and its newest builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageView {
    /// The recipe's name (the package of its builds).
    pub name: String,
    /// The target whose published repositories it installs from.
    pub target: String,
    /// The arches it is built for (one job each).
    pub arches: Vec<String>,
    /// The files made, in this order: `tar.zst`, `ext4`, `squashfs`,
    /// `qcow2`, `cpio`, `erofs`.
    pub formats: Vec<String>,
    /// The recipe as configured (`[[image]]`).
    #[schema(value_type = Object)]
    pub recipe: ImageRecipe,
    /// Its newest builds, newest first (at most 5).
    pub builds: Vec<ImageBuildRef>,
    /// Where the recipe comes from: `config` (`[[image]]`) or `database`
    /// (`kiln image add`).
    #[serde(default)]
    pub origin: String,
}

/// The answer to `DELETE /api/v1/images/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageRemoved {
    /// The recipe removed (its builds stay).
    pub name: String,
}

/// A build of an image, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageBuildRef {
    /// The build id.
    pub build: i64,
    /// The image's version, `<name>-YYYYMMDD.n`.
    pub version: String,
    /// Where the build is.
    pub state: BuildState,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// Unix time in ms.
    pub created_at: i64,
    /// Unix time in ms, once final.
    pub finished_at: Option<i64>,
}

/// The body of `POST /api/v1/images/{name}/build` (may be `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageBuildRequest {
    /// Higher first (default 0).
    #[serde(default)]
    pub priority: Option<i64>,
}

/// An image build: the build (its jobs and artifacts, one job per arch)
/// with the recipe it was made from and where its files are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageBuildView {
    /// The recipe's name.
    pub image: String,
    /// The image's version (the build's `evr`).
    pub version: String,
    /// The recipe as it was when the build was made.
    #[schema(value_type = Object)]
    pub recipe: ImageRecipe,
    /// Relative to the master's data directory:
    /// `images/<name>/<build>/` (one directory per arch beneath).
    pub dir: String,
    /// The build itself.
    pub build: BuildView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_request_may_be_empty() {
        let r: ImageBuildRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, ImageBuildRequest::default());
    }
}
