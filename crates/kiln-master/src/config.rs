//! The master's settings. The binary (`kiln/src/settings.rs`) layers a TOML
//! file, then `KILN_<KEY>` environment variables, then `--<key>` flags over
//! these defaults, for every key at once: it reads the keys and their types
//! off `MasterConfig::default()` serialized. A new key needs only its field
//! here (and a line of help there); keep it a boolean, a number, a string
//! (or an `Option` of one) or a list of strings, or it can only be given in
//! the file, like the `[[target]]` tables.

use std::net::SocketAddr;
use std::path::PathBuf;

use kiln_core::names::{check_arch, check_ident};
use kiln_store::Durability;
use serde::{Deserialize, Serialize};

/// Where a build goes: disttag, default arches and channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    #[serde(default)]
    pub disttag: String,
    #[serde(default = "default_arches")]
    pub arches: Vec<String>,
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Versions of each package kept in the repositories.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Armored OpenPGP secret key (no passphrase, mode 0600): packages and
    /// repomd.xml are signed with it.
    #[serde(default)]
    pub sign_key: Option<PathBuf>,
    /// Every published package is also copied to `<tosign_dir>/<target>/`
    /// for an outside signer.
    #[serde(default)]
    pub tosign_dir: Option<PathBuf>,
    /// Made by Kiln because no target was configured: it takes a build for
    /// any arch asked (a configured target takes only its `arches`).
    #[serde(skip)]
    pub implicit: bool,
}

fn default_keep() -> u32 {
    1
}

fn default_arches() -> Vec<String> {
    vec![kiln_core::names::host_arch().to_string()]
}

fn default_channel() -> String {
    "default".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    pub data: PathBuf,
    pub api_listen: SocketAddr,
    /// Serve the HTTP API over TLS with the master's server certificate
    /// (clients trust `ca/ca.crt`: `KILN_CA` or `ca` in client.toml).
    pub api_tls: bool,
    pub worker_listen: SocketAddr,
    /// Names (DNS or IP) put in the worker endpoint's certificate, besides
    /// localhost, loopback and the host name.
    pub server_names: Vec<String>,
    #[serde(rename = "target")]
    pub targets: Vec<Target>,
    /// A running job's lease; heartbeats renew it, a lapse re-queues the job.
    pub lease_secs: u64,
    /// How many times a job is tried before it fails for good.
    pub max_attempts: u32,
    /// Largest SRPM accepted on upload, in bytes.
    pub max_upload: u64,
    /// Largest artifact a worker may upload, in bytes.
    pub max_artifact: u64,
    /// What one job attempt may stage in all (artifact bytes and files).
    pub max_job_upload: u64,
    pub max_job_files: u64,
    /// The target of a submit that names none (with one target, that one).
    pub default_target: Option<String>,
    /// How long an API client may take to send a request's headers (and
    /// how long an idle keep-alive connection stays open), in seconds.
    pub api_header_timeout_secs: u64,
    /// Connections the API serves at once; past that a new one is closed.
    pub api_max_connections: u64,
    /// Build log cap per job, in bytes; past it the log is cut with a marker.
    pub log_cap: u64,
    /// Per-job build timeout, in seconds.
    pub job_timeout_secs: u64,
    /// How long an enrollment token stays valid, in seconds.
    pub token_ttl_secs: u64,
    /// Validity of worker certificates, in days.
    pub cert_days: u32,
    pub durability: Durability,
    /// The createrepo_c program.
    pub createrepo: PathBuf,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            data: PathBuf::from("/var/lib/kiln"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_tls: false,
            worker_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            server_names: Vec::new(),
            targets: Vec::new(),
            lease_secs: 60,
            max_attempts: 3,
            max_upload: 2 << 30,
            max_artifact: 8 << 30,
            max_job_upload: 32 << 30,
            max_job_files: 10_000,
            default_target: None,
            api_header_timeout_secs: 30,
            api_max_connections: 4096,
            log_cap: 64 << 20,
            job_timeout_secs: 6 * 3600,
            token_ttl_secs: 24 * 3600,
            cert_days: 365,
            durability: Durability::Full,
            createrepo: PathBuf::from("createrepo_c"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("target {0:?} is declared twice")]
    DuplicateTarget(String),
    #[error("target {target:?}: {msg}")]
    BadTarget { target: String, msg: String },
    #[error("{0}")]
    Bad(String),
}

impl MasterConfig {
    /// Check every value; with no target declared there is one, `default`.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.targets.is_empty() {
            self.targets.push(Target {
                name: "default".into(),
                disttag: String::new(),
                arches: default_arches(),
                channel: default_channel(),
                keep: default_keep(),
                sign_key: None,
                tosign_dir: None,
                implicit: true,
            });
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.targets {
            let bad = |msg: String| ConfigError::BadTarget {
                target: t.name.clone(),
                msg,
            };
            check_ident("target", &t.name).map_err(|e| bad(e.to_string()))?;
            check_ident("channel", &t.channel).map_err(|e| bad(e.to_string()))?;
            if t.arches.is_empty() {
                return Err(bad("no arches".into()));
            }
            for a in &t.arches {
                check_arch(a).map_err(|e| bad(e.to_string()))?;
            }
            if !t.disttag.is_empty()
                && !t
                    .disttag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+'))
            {
                return Err(bad(format!("disttag {:?} has a bad character", t.disttag)));
            }
            if t.keep == 0 {
                return Err(bad("keep must be at least 1".into()));
            }
            if !seen.insert(t.name.clone()) {
                return Err(ConfigError::DuplicateTarget(t.name.clone()));
            }
        }
        if let Some(d) = &self.default_target {
            if self.target(d).is_none() {
                return Err(ConfigError::Bad(format!(
                    "default_target {d:?} is not a declared target"
                )));
            }
        }
        if self.lease_secs == 0 || self.max_attempts == 0 {
            return Err(ConfigError::Bad(
                "lease_secs and max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The target a submit without one goes to: `default_target`, or the
    /// only target there is.
    pub fn default_target(&self) -> Option<&Target> {
        match &self.default_target {
            Some(d) => self.target(d),
            None if self.targets.len() == 1 => self.targets.first(),
            None => None,
        }
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key but the targets is of a kind the environment and flags can
    /// spell (see the module's doc).
    #[test]
    fn every_key_can_be_given_as_text() {
        let serde_json::Value::Object(keys) =
            serde_json::to_value(MasterConfig::default()).expect("the defaults serialize")
        else {
            panic!("MasterConfig is not a table");
        };
        for (k, v) in keys {
            let ok = match &v {
                serde_json::Value::Array(a) => k == "target" || a.iter().all(|x| x.is_string()),
                serde_json::Value::Object(_) => false,
                _ => true,
            };
            assert!(ok, "{k} = {v} cannot be given as KILN_{}", k.to_uppercase());
        }
    }
}
