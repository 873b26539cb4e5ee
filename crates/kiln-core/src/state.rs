//! Build and job states (DESIGN.md) and the artifact kinds.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

// `waiting`: a build that waits for other builds (of its batch) to be
// published before its jobs are queued.
string_enum!(BuildState {
    Waiting => "waiting",
    Queued => "queued",
    Building => "building",
    Succeeded => "succeeded",
    Failed => "failed",
    Canceled => "canceled",
    Skipped => "skipped",
});

string_enum!(JobState {
    Pending => "pending",
    Assigned => "assigned",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Canceled => "canceled",
});

string_enum!(PublishState {
    Pending => "pending",
    Published => "published",
    Failed => "failed",
});

string_enum!(ArtifactKind {
    Rpm => "rpm",
    Srpm => "srpm",
    Log => "log",
    Listing => "listing",
    Other => "other",
    Image => "image",
});

impl BuildState {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Waiting | Self::Queued | Self::Building)
    }

    /// What a build entering this state means for its publication: a
    /// succeeded build that is not a scratch build is queued for it (a
    /// waiting build never is).
    pub fn publication(self, scratch: bool) -> Option<PublishState> {
        (self == Self::Succeeded && !scratch).then_some(PublishState::Pending)
    }
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// The state of a build derived from the states of its jobs. (A build
/// waiting for others is never derived: its state is set explicitly.)
pub fn build_state_from_jobs(jobs: &[JobState]) -> BuildState {
    if jobs.is_empty() {
        return BuildState::Failed;
    }
    if jobs.iter().all(|j| j.is_final()) {
        if jobs.contains(&JobState::Canceled) {
            BuildState::Canceled
        } else if jobs.contains(&JobState::Failed) {
            BuildState::Failed
        } else {
            BuildState::Succeeded
        }
    } else if jobs.iter().all(|j| *j == JobState::Pending) {
        BuildState::Queued
    } else {
        BuildState::Building
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_derive() {
        assert_eq!("running".parse::<JobState>(), Ok(JobState::Running));
        assert!("nope".parse::<BuildState>().is_err());
        assert_eq!("waiting".parse::<BuildState>(), Ok(BuildState::Waiting));
        assert_eq!(BuildState::Waiting.to_string(), "waiting");
        assert!(!BuildState::Waiting.is_final());
        assert_eq!(BuildState::Waiting.publication(false), None);
        use JobState::*;
        assert_eq!(
            build_state_from_jobs(&[Pending, Pending]),
            BuildState::Queued
        );
        assert_eq!(
            build_state_from_jobs(&[Running, Pending]),
            BuildState::Building
        );
        assert_eq!(
            build_state_from_jobs(&[Succeeded, Failed]),
            BuildState::Failed
        );
        assert_eq!(
            build_state_from_jobs(&[Succeeded, Succeeded]),
            BuildState::Succeeded
        );
        assert_eq!(
            build_state_from_jobs(&[Canceled, Succeeded]),
            BuildState::Canceled
        );
    }
}
