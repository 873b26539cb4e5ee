//! The HTTP API's JSON bodies (`/api/v1/...`): every request, query and
//! response the master's `api/` serves and the CLI sends and reads. Only
//! this crate defines their shapes; the master builds them from its rows and
//! the CLI deserializes them, so a renamed field is a compile error on both
//! sides. Plain data: serde and the state enums of `kiln_core::state`.
//!
//! The JSON is the contract: field names, field order and `null` for an
//! absent optional value are what clients see (the tests at the end pin the
//! bytes of the less obvious ones).

#![warn(missing_docs)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod auth;
pub mod image;
pub mod live;
pub mod notify;
pub mod release;
pub mod stats;

pub use kiln_core::git::{BuildSource, GitMode, Project, TriggerKind};
pub use kiln_core::state::{ArtifactKind, BuildState, JobState, PublishState};

/// Priority given by `now: true` (`kiln submit --now`): ahead of everything
/// submitted normally.
pub const NOW_PRIORITY: i64 = 100;

// ---------------------------------------------------------------- errors

/// The body of every error answer: `{"code": "not_found", "error": "no build 7"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What kind of failure, for programs.
    #[serde(default)]
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub error: String,
}

/// The machine-readable kind of an error answer (its HTTP status goes with it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is wrong; the message names the field and why.
    BadRequest,
    /// 401: no token, or not the right one.
    Unauthorized,
    /// 403: the token (or session) is known but its role does not allow
    /// this (a reader submitting, a submitter canceling another's build), or
    /// a request signed in by the session cookie lacks its CSRF token.
    Forbidden,
    /// 404: no such build, job, blob, target or file.
    NotFound,
    /// 404 on submit: the master lacks the SRPM; upload it, then submit again.
    BlobMissing,
    /// 409 on cancel: the build has already ended.
    NotActive,
    /// 409 on `POST /api/v1/projects`: a project of that name exists.
    Exists,
    /// 413: past a size limit (`max_upload`).
    TooLarge,
    /// 503: the database could not commit; nothing was kept, retry later.
    Unavailable,
    /// 507: the master's disk is full; nothing was kept.
    NoSpace,
    /// 500: the master's own fault.
    Internal,
    /// A code this program does not know (a newer master); never sent.
    #[default]
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::BlobMissing => "blob_missing",
            Self::NotActive => "not_active",
            Self::Exists => "exists",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::NoSpace => "no_space",
            Self::Internal => "internal",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------- builds and jobs

/// Query of `GET /api/v1/builds` and `GET /api/v1/jobs`: how many, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many (the master's default 100, its cap 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `POST /api/v1/builds`: build an SRPM the master holds (by sha256);
/// answered with the [`BuildView`] (201), or [`ErrorCode::BlobMissing`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The SRPM's content, uploaded to `PUT /api/v1/blobs/<sha256>`.
    pub srpm_sha256: String,
    /// Its file name (`*.src.rpm`).
    pub srpm_name: String,
    /// Default: the master's `default_target`, or its only target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Default: the target's arches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arches: Option<Vec<String>>,
    /// Default: the target's channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Higher first; default 0, or [`NOW_PRIORITY`] with `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Jump the queue.
    #[serde(default)]
    pub now: bool,
    /// Never published.
    #[serde(default)]
    pub scratch: bool,
    /// A CI build: an equal version is rebuilt, not skipped.
    #[serde(default)]
    pub ci: bool,
}

/// `POST /api/v1/batches`: several SRPMs the master holds, built as one
/// batch in one target. Without `chain`, they are ordered by what each
/// needs (BuildRequires) and makes (its packages' Provides, read on a
/// worker); with it, group by group (indexes into `builds`). A build waits
/// until the builds it needs are published. Answered with
/// [`BatchSubmitted`] (201); a cycle is refused (400).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Default: the master's `default_target`, or its only target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// One request per SRPM (their `target` is the batch's).
    pub builds: Vec<SubmitRequest>,
    /// Explicit order: groups of indexes into `builds`, each group starting
    /// once the previous one is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Vec<Vec<usize>>>,
}

/// The answer of a batch submit: its id and its builds, in the order asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchSubmitted {
    /// The batch id.
    pub batch: i64,
    /// Its builds.
    pub builds: Vec<BuildView>,
}

/// `GET /api/v1/batches/<id>`: a batch and the graph of its builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchView {
    /// The batch id.
    pub id: i64,
    /// The target its builds build for.
    pub target: String,
    /// Unix time in ms.
    pub created_at: i64,
    /// Its builds, in the order submitted.
    pub builds: Vec<BatchMember>,
}

/// One build of a batch, and what it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchMember {
    /// The build id.
    pub id: i64,
    /// The package name.
    pub package: String,
    /// `[epoch:]version-release`.
    pub evr: String,
    /// Where the build is (`waiting` until what it needs is published).
    pub state: BuildState,
    /// Why it was skipped or failed, when it was.
    pub reason: Option<String>,
    /// The builds of the batch it needs published before it starts.
    pub waits_for: Vec<i64>,
    /// Publication to the target's repositories.
    pub publish: Option<PublishState>,
}

/// A build with its jobs and artifacts: the answer of submit (also when the
/// version gate skipped it: `state` `skipped`, `reason` why), show, wait,
/// cancel and the build list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildView {
    /// The build id.
    pub id: i64,
    /// The target it builds for.
    pub target: String,
    /// The package name from the SRPM header.
    pub package: String,
    /// `[epoch:]version-release` from the SRPM header.
    pub evr: String,
    /// The SRPM's file name.
    pub srpm_name: String,
    /// The SRPM's sha256.
    pub srpm_sha256: String,
    /// The SRPM's size in bytes.
    pub srpm_size: u64,
    /// The worker channel its jobs go to.
    pub channel: String,
    /// The target's `%dist` tag.
    pub disttag: String,
    /// Higher first.
    pub priority: i64,
    /// Never published.
    pub scratch: bool,
    /// A CI build.
    pub ci: bool,
    /// Where the build is.
    pub state: BuildState,
    /// Why it was skipped or failed, when it was.
    pub reason: Option<String>,
    /// Arches the package does not build for, and why.
    pub excluded_arches: Vec<ExcludedArch>,
    /// Unix time in ms.
    pub created_at: i64,
    /// Unix time in ms, once final.
    pub finished_at: Option<i64>,
    /// Publication to the target's repositories (a succeeded non-scratch build).
    pub publish: Option<PublishState>,
    /// Why the last publication failed.
    pub publish_error: Option<String>,
    /// Its jobs build in the target's buildroot (false: on the worker's
    /// own system), as the target is configured now.
    #[serde(default)]
    pub buildroot: bool,
    /// The batch it belongs to.
    #[serde(default)]
    pub batch: Option<i64>,
    /// The builds of its batch it waits for (to be published).
    #[serde(default)]
    pub waits_for: Vec<i64>,
    /// A build from git: its project, ref, commits, version and trigger
    /// (`null` for an uploaded SRPM).
    #[serde(default)]
    pub source: Option<BuildSource>,
    /// The name of the API token that submitted it (`null` for a build
    /// started by a webhook or MQTT: its `source.sender` says who).
    #[serde(default)]
    pub submitter: Option<String>,
    /// An image build: the recipe's name (its files are image artifacts;
    /// it is never published to the repositories); `null` for a package.
    #[serde(default)]
    pub image: Option<String>,
    /// One job per arch (a build from git: its srpm job, arch `src`, first).
    pub jobs: Vec<JobView>,
    /// The files its jobs produced.
    pub artifacts: Vec<ArtifactView>,
}

/// An arch a build was not planned for (`BuildArch`, `ExclusiveArch`, `ExcludeArch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExcludedArch {
    /// The arch asked for.
    pub arch: String,
    /// Why the package does not build there.
    pub reason: String,
}

/// One job (a build on one arch), in a [`BuildView`] and in `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    /// The job id.
    pub id: i64,
    /// Its build's id.
    pub build: i64,
    /// The arch it builds.
    pub arch: String,
    /// Where the job is.
    pub state: JobState,
    /// The worker holding or last holding it.
    pub worker: Option<String>,
    /// Attempts so far (a lapsed lease starts another).
    pub attempt: u32,
    /// The worker's or master's last word on it (why it failed).
    pub message: Option<String>,
    /// Unix time in ms.
    pub created_at: i64,
    /// Unix time in ms, when a worker started it.
    pub started_at: Option<i64>,
    /// Unix time in ms, once final.
    pub finished_at: Option<i64>,
    /// Why a pending job is not running yet (no worker for its arch or
    /// channel, all busy); `null` otherwise.
    pub waiting: Option<String>,
}

/// A file a job produced, kept in `incoming/<build>/<arch>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// The job that produced it.
    pub job: i64,
    /// Its job's arch.
    pub arch: String,
    /// The file name.
    pub name: String,
    /// Package, source package, log, listing or other.
    pub kind: ArtifactKind,
    /// Bytes.
    pub size: u64,
    /// Its sha256.
    pub sha256: String,
    /// `name-[epoch:]version-release.arch` of a package.
    pub nevra: Option<String>,
}

/// Query of `GET /api/v1/jobs/<id>/log`: the log so far, or (`follow`) a
/// stream of it until the job ends. The log itself is `text/plain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Keep the answer open and stream new output until the job ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
}

/// The body of a POST that takes no arguments (cancel, revoke, regen): `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmptyBody {}

// ---------------------------------------------------------------- blobs

/// `PUT` (201 when new, 200 when already held) and `GET /api/v1/blobs/<sha256>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobInfo {
    /// The content's sha256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// The master already had it.
    pub existing: bool,
}

// ---------------------------------------------------------------- workers and tokens

/// One worker in `GET /api/v1/workers`: live data while it is connected,
/// what it last said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerView {
    /// The worker's name (its certificate's).
    pub name: String,
    /// The arches it builds.
    pub arches: Vec<String>,
    /// The channels it serves.
    pub channels: Vec<String>,
    /// Jobs it runs at once.
    pub capacity: u32,
    /// Jobs it runs now.
    pub running: usize,
    /// Their ids.
    pub running_jobs: Vec<i64>,
    /// It has a session now.
    pub connected: bool,
    /// It takes no new job.
    pub draining: bool,
    /// Its certificate is revoked.
    pub revoked: bool,
    /// Unix time in ms (now, while connected); `null` if never seen.
    pub last_seen: Option<i64>,
}

/// The answer of `POST /api/v1/workers/<name>/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevokeResponse {
    /// The worker.
    pub name: String,
    /// Always true.
    pub revoked: bool,
}

/// `POST /api/v1/tokens`: a one-time enrollment token for a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The name the worker will have.
    pub worker: String,
}

/// The answer of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// Unix time in ms after which the token is refused.
    pub expires_at: i64,
    /// The token (`kiln worker enroll --token`; it carries the CA fingerprint).
    pub token: String,
    /// The worker it enrolls.
    pub worker: String,
}

// ---------------------------------------------------------------- targets and repositories

/// One target in `GET /api/v1/targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetView {
    /// The target's name.
    pub name: String,
    /// Its `%dist` tag.
    pub disttag: String,
    /// The arches it builds.
    pub arches: Vec<String>,
    /// The default channel of its builds.
    pub channel: String,
    /// Versions of each package kept in its repositories.
    pub keep: u32,
    /// The signing key's file on the master, if it signs.
    #[schema(value_type = Option<String>)]
    pub sign_key: Option<PathBuf>,
    /// Where published packages are also copied for an outside signer.
    #[schema(value_type = Option<String>)]
    pub tosign_dir: Option<PathBuf>,
    /// The root its builds run in (none: on the workers' own systems).
    #[serde(default)]
    pub buildroot: Option<BuildrootView>,
}

/// A target's `[target.buildroot]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildrootView {
    /// Base repositories.
    pub repos: Vec<String>,
    /// Installed in the base root.
    pub packages: Vec<String>,
    /// dnf's `$releasever`.
    pub releasever: String,
    /// Package signatures are checked.
    pub gpgcheck: bool,
    /// The target's own published repository is added.
    pub own_repo: bool,
    /// Other targets whose repositories are added.
    pub extra_repos_of: Vec<String>,
}

/// One live package in `GET /api/v1/targets/<target>/packages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageView {
    /// The target.
    pub target: String,
    /// The repository: an arch, or `source`.
    pub repo: String,
    /// The file's path in the repository.
    pub file: String,
    /// The package name.
    pub name: String,
    /// Its epoch (0 when none).
    pub epoch: u32,
    /// Its version.
    pub version: String,
    /// Its release.
    pub release: String,
    /// Its arch.
    pub arch: String,
    /// The build that made it.
    pub build: i64,
    /// The generation whose metadata dropped it; always `null` in this list.
    pub retired_gen: Option<i64>,
}

/// The answer of `POST /api/v1/targets/<target>/regen` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegenResponse {
    /// Always `queued`.
    pub regen: String,
    /// The target.
    pub target: String,
}

// ---------------------------------------------------------------- events

/// One line of `GET /api/v1/events` (newline-delimited JSON, tagged by `kind`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// The first line: every event after it is complete.
    Subscribed,
    /// The reader fell behind and this many events were dropped.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// A job changed state.
    Job {
        /// Its build.
        build: i64,
        /// The job.
        job: i64,
        /// Its arch.
        arch: String,
        /// Its new state.
        state: JobState,
        /// The worker holding it.
        worker: Option<String>,
        /// Its attempt.
        attempt: u32,
    },
    /// A build changed state.
    Build {
        /// The build.
        build: i64,
        /// Its new state.
        state: BuildState,
    },
    /// A build's publication to its target's repositories changed state.
    Publish {
        /// The build.
        build: i64,
        /// The publication's new state.
        state: PublishState,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn error_bodies_and_small_answers_keep_their_bytes() {
        let e = ErrorBody {
            code: ErrorCode::BlobMissing,
            error: "upload it".into(),
        };
        assert_eq!(json(&e), r#"{"code":"blob_missing","error":"upload it"}"#);
        // A code this program does not know, or none, still parses.
        let e: ErrorBody = serde_json::from_str(r#"{"code":"teapot","error":"x"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Other);
        let e: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Other);
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::BlobMissing,
            ErrorCode::NotActive,
            ErrorCode::TooLarge,
            ErrorCode::Unavailable,
            ErrorCode::NoSpace,
            ErrorCode::Internal,
        ] {
            assert_eq!(json(&c), format!("\"{}\"", c.as_str()));
        }
        let t = TokenResponse {
            expires_at: 5,
            token: "tok".into(),
            worker: "w1".into(),
        };
        assert_eq!(json(&t), r#"{"expires_at":5,"token":"tok","worker":"w1"}"#);
        let r = RegenResponse {
            regen: "queued".into(),
            target: "t".into(),
        };
        assert_eq!(json(&r), r#"{"regen":"queued","target":"t"}"#);
        assert_eq!(json(&EmptyBody {}), "{}");
    }

    #[test]
    fn events_are_tagged_by_kind() {
        assert_eq!(json(&Event::Subscribed), r#"{"kind":"subscribed"}"#);
        assert_eq!(
            json(&Event::Lagged { missed: 3 }),
            r#"{"kind":"lagged","missed":3}"#
        );
        assert_eq!(
            json(&Event::Job {
                build: 1,
                job: 2,
                arch: "x86_64".into(),
                state: JobState::Running,
                worker: None,
                attempt: 1
            }),
            r#"{"kind":"job","build":1,"job":2,"arch":"x86_64","state":"running","worker":null,"attempt":1}"#
        );
    }

    #[test]
    fn requests_leave_out_what_is_not_given() {
        let r = SubmitRequest {
            srpm_sha256: "ab".into(),
            srpm_name: "p-1-1.src.rpm".into(),
            ..Default::default()
        };
        assert_eq!(
            json(&r),
            r#"{"srpm_sha256":"ab","srpm_name":"p-1-1.src.rpm","now":false,"scratch":false,"ci":false}"#
        );
        let back: SubmitRequest = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(back, r);
        assert!(serde_json::from_str::<SubmitRequest>(
            r#"{"srpm_sha256":"a","srpm_name":"b","x":1}"#
        )
        .is_err());
        assert_eq!(json(&ListQuery::default()), "{}");
        assert_eq!(json(&LogQuery::default()), "{}");
        assert_eq!(json(&LogQuery { follow: true }), r#"{"follow":true}"#);
    }

    #[test]
    fn a_build_view_is_flat_with_nulls_for_what_it_lacks() {
        let b = BuildView {
            id: 1,
            target: "t".into(),
            package: "p".into(),
            evr: "1-1".into(),
            srpm_name: "p-1-1.src.rpm".into(),
            srpm_sha256: "ab".into(),
            srpm_size: 10,
            channel: "default".into(),
            disttag: ".t".into(),
            priority: 0,
            scratch: false,
            ci: false,
            state: BuildState::Queued,
            reason: None,
            excluded_arches: vec![ExcludedArch {
                arch: "s390x".into(),
                reason: "ExcludeArch".into(),
            }],
            created_at: 7,
            finished_at: None,
            publish: None,
            publish_error: None,
            buildroot: true,
            batch: None,
            waits_for: vec![],
            source: None,
            submitter: Some("alice".into()),
            image: None,
            jobs: vec![],
            artifacts: vec![],
        };
        assert_eq!(
            json(&b),
            concat!(
                r#"{"id":1,"target":"t","package":"p","evr":"1-1","srpm_name":"p-1-1.src.rpm","#,
                r#""srpm_sha256":"ab","srpm_size":10,"channel":"default","disttag":".t","priority":0,"#,
                r#""scratch":false,"ci":false,"state":"queued","reason":null,"#,
                r#""excluded_arches":[{"arch":"s390x","reason":"ExcludeArch"}],"created_at":7,"#,
                r#""finished_at":null,"publish":null,"publish_error":null,"buildroot":true,"batch":null,"#,
                r#""waits_for":[],"source":null,"submitter":"alice","image":null,"jobs":[],"#,
                r#""artifacts":[]}"#
            )
        );
    }
}

// ---------------------------------------------------------------- projects

/// A project as `GET /api/v1/projects[/NAME]` shows it: its secret is
/// never shown (`has_secret` says whether it has one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectView {
    /// The project's name.
    pub name: String,
    /// One build per target.
    pub targets: Vec<String>,
    /// The upstream repository.
    pub upstream: String,
    /// The ref built when a trigger names none (`null`: the remote's HEAD).
    pub upstream_ref: Option<String>,
    /// The packaging repository (`null`: the spec is in upstream).
    pub packaging: Option<String>,
    /// Its ref (`null`: its HEAD).
    pub packaging_ref: Option<String>,
    /// The spec's path (`null`: the one `*.spec` at the top).
    pub spec: Option<String>,
    /// `ci` or `release`.
    pub mode: GitMode,
    /// Upstream's submodules go in the tarball.
    pub submodules: bool,
    /// Release mode: the tag's version wins over the spec's.
    pub tag_wins: bool,
    /// A new push cancels running builds of the same ref too.
    pub cancel_superseded: bool,
    /// It has a secret (it takes signed webhooks and MQTT triggers).
    pub has_secret: bool,
}

impl ProjectView {
    /// The view of a project (its secret left out).
    pub fn of(p: &Project) -> ProjectView {
        ProjectView {
            name: p.name.clone(),
            targets: p.targets.clone(),
            upstream: p.upstream.clone(),
            upstream_ref: p.upstream_ref.clone(),
            packaging: p.packaging.clone(),
            packaging_ref: p.packaging_ref.clone(),
            spec: p.spec.clone(),
            mode: p.mode,
            submodules: p.submodules,
            tag_wins: p.tag_wins,
            cancel_superseded: p.cancel_superseded,
            has_secret: p.secret.is_some(),
        }
    }

    /// The project this view shows, without its secret.
    pub fn project(&self) -> Project {
        Project {
            name: self.name.clone(),
            targets: self.targets.clone(),
            upstream: self.upstream.clone(),
            upstream_ref: self.upstream_ref.clone(),
            packaging: self.packaging.clone(),
            packaging_ref: self.packaging_ref.clone(),
            spec: self.spec.clone(),
            mode: self.mode,
            submodules: self.submodules,
            tag_wins: self.tag_wins,
            cancel_superseded: self.cancel_superseded,
            secret: None,
            secret_file: None,
        }
    }
}

/// Query of `PUT /api/v1/projects/NAME`: a body without a secret keeps the
/// stored one unless `clear_secret`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EditQuery {
    /// Remove the project's secret (it then takes no webhook or MQTT trigger).
    #[serde(default)]
    pub clear_secret: bool,
}

/// Body of `POST /api/v1/projects/NAME/build`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectBuildRequest {
    /// A branch, a tag (`refs/tags/v1.2` or, with mode release, `v1.2`) or
    /// a commit id; `null`: the project's ref.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// `null`: release for a `refs/tags/` ref, else the project's mode.
    #[serde(default)]
    pub mode: Option<GitMode>,
}

/// Answer of `POST /api/v1/projects/NAME/build` and of a webhook that
/// started builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectBuilt {
    /// One build per target, each starting with its srpm job.
    pub builds: Vec<BuildView>,
    /// Queued builds of the same ref these replaced (canceled).
    pub superseded: Vec<i64>,
}

/// Answer of `GET /api/v1/projects/NAME/hooks`: what to paste into a
/// forge's webhook settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HooksInfo {
    /// The project.
    pub project: String,
    /// `POST` URLs by forge (github, gitlab, gitea; Forgejo takes gitea's).
    pub urls: Vec<(String, String)>,
    /// The secret (`null`: none set; the project takes no webhook).
    pub secret: Option<String>,
    /// The content type to choose.
    pub content_type: String,
    /// The events to send.
    pub events: Vec<String>,
    /// The MQTT topic that takes signed triggers, when MQTT is configured.
    pub mqtt_topic: Option<String>,
}

/// What a webhook delivery did (`POST /hooks/FORGE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HookAnswer {
    /// `queued`, `duplicate`, `ignored` or `ping`.
    pub status: String,
    /// In words: what was started, or why nothing was.
    pub message: String,
    /// The builds started (for a duplicate: the first delivery's).
    pub builds: Vec<i64>,
    /// The delivery id, as received.
    pub delivery: Option<String>,
}
