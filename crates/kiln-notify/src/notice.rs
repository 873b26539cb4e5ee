//! The event as every sink sees it (its JSON is the webhook body and the
//! MQTT payload; the documented shape).

use serde::{Deserialize, Serialize};

/// One event, with everything a reader needs without asking the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Unique per event (the idempotency key of every delivery).
    pub id: String,
    /// `build.queued`, `build.started`, `build.succeeded`, `build.failed`,
    /// `build.canceled`, `build.skipped`, `build.published`, `job.failed`,
    /// `worker.lost`, `worker.enrolled`, `worker.revoked`,
    /// `release.promoted`, `release.rolled_back`, `test`.
    pub event: String,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Package name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// `name-[epoch:]version-release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nevr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// The state the event reports: the part of `event` after its dot
    /// (`build.started` → `started`, `build.failed` → `failed`,
    /// `worker.lost` → `lost`), as the MQTT topic says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The token name that submitted the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// A build from git: project, ref, commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Seconds from start to end, when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `build.published`: the repository URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `job.failed`: the last lines of the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// The build's page (from the master's `public_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `release.*`: the release's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// `release.*`: its channel (`stable`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// `release.*`: the version `latest` points at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Notice {
    /// One line for chat: `[target] nevr: state (arch) duration url`.
    /// May hold anything a package put in its name; transports that need
    /// a clean line (IRC) clean it themselves.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.target {
            s.push_str(&format!("[{t}] "));
        }
        match (&self.nevr, &self.worker) {
            (Some(n), _) => s.push_str(n),
            (None, Some(w)) => s.push_str(&format!("worker {w}")),
            (None, None) => s.push_str("kiln"),
        }
        s.push_str(": ");
        s.push_str(&self.event);
        if let Some(a) = &self.arch {
            s.push_str(&format!(" ({a})"));
        }
        if let Some(d) = self.duration_secs {
            s.push_str(&format!(" in {}m{:02}s", d / 60, d % 60));
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(" - {r}"));
        }
        if let Some(u) = &self.url {
            s.push_str(&format!(" {u}"));
        }
        s
    }
}
