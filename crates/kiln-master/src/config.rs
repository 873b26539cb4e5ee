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
    /// Builds run in a root made from these repositories (without it, on
    /// the worker's own system).
    #[serde(default)]
    pub buildroot: Option<Buildroot>,
    /// Made by Kiln because no target was configured: it takes a build for
    /// any arch asked (a configured target takes only its `arches`).
    #[serde(skip)]
    pub implicit: bool,
}

/// `[target.buildroot]`: the root a target's builds run in, made by the
/// worker with `dnf --installroot` from `repos` (and Kiln's own
/// repositories), then the SRPM's BuildRequires, then `rpmbuild` inside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Buildroot {
    /// Base repositories (`http://`, `https://` or `file://`; `$basearch`
    /// and `$releasever` are expanded by the worker).
    pub repos: Vec<String>,
    /// Installed in the base root, made once per configuration.
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub releasever: String,
    /// Check package signatures (with `gpgkeys`).
    #[serde(default = "yes")]
    pub gpgcheck: bool,
    #[serde(default)]
    pub gpgkeys: Vec<String>,
    /// Add the target's own published repository (read fresh for every
    /// job, so a build published a second ago is seen).
    #[serde(default = "yes")]
    pub own_repo: bool,
    /// Other targets whose published repositories are added too.
    #[serde(default)]
    pub extra_repos_of: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Buildroot {
    fn check(&self, targets: &[Target]) -> Result<(), String> {
        if self.repos.is_empty() {
            return Err("buildroot: no repos".into());
        }
        for r in self.repos.iter().chain(&self.gpgkeys) {
            check_url(r)?;
        }
        if self.packages.is_empty() {
            return Err("buildroot: no packages".into());
        }
        for p in &self.packages {
            // What dnf takes as a package spec, never as an option.
            if p.is_empty()
                || p.starts_with('-')
                || p.len() > 256
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-/:*()<>=@ ".contains(c))
            {
                return Err(format!("buildroot: package {p:?} is not a package name"));
            }
        }
        if !self
            .releasever
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || self.releasever.starts_with('-')
        {
            return Err(format!("buildroot: bad releasever {:?}", self.releasever));
        }
        for t in &self.extra_repos_of {
            if !targets.iter().any(|x| &x.name == t) {
                return Err(format!("buildroot: extra_repos_of names no target {t:?}"));
            }
        }
        Ok(())
    }
}

/// A repository or key URL dnf may be given: `http(s)://` or `file://`,
/// printable, no spaces or commas.
fn check_url(u: &str) -> Result<(), String> {
    let ok_scheme = ["http://", "https://", "file:///"]
        .iter()
        .any(|s| u.starts_with(s));
    if !ok_scheme
        || u.len() > 2048
        || u.chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == ',')
    {
        return Err(format!(
            "buildroot: {u:?} is not an http://, https:// or file:/// URL"
        ));
    }
    Ok(())
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
    /// How workers (and people) reach this master's API, e.g.
    /// `https://kiln.example.org:8080`: buildroots read the published
    /// repositories from `<public_url>/repos/`. Default: from `api_listen`.
    pub public_url: Option<String>,
    /// Projects (builds from git), stored at start: `[[project]]` tables.
    #[serde(rename = "project")]
    pub projects: Vec<kiln_core::git::Project>,
    /// The MQTT remote trigger (`[mqtt]`): subscribe to `PREFIX/trigger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    /// The largest webhook body taken, in bytes.
    pub hook_max_bytes: u64,
    /// Anyone may read the web pages and the API (false: reading needs a
    /// token or a web session too; writes always need one).
    pub web_public: bool,
    /// Notification sinks: `[[notify]]` tables (see `notify::config`).
    #[serde(rename = "notify", skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::notify::SinkConfig>,
    /// Delivered and dead notifications are pruned after this many days.
    pub notify_retention_days: u64,
    /// Image recipes: `[[image]]` tables (see `crate::image`).
    #[serde(rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<kiln_core::image::ImageRecipe>,
    /// Old versions kept per channel of a release besides the one `latest`
    /// points at (older ones are removed after a promotion).
    pub keep_releases: u64,
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
            public_url: None,
            projects: Vec::new(),
            mqtt: None,
            hook_max_bytes: 2 << 20,
            web_public: true,
            notify: Vec::new(),
            notify_retention_days: 30,
            images: Vec::new(),
            keep_releases: 5,
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
                buildroot: None,
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
            if let Some(b) = &t.buildroot {
                b.check(&self.targets).map_err(bad)?;
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
        if let Some(u) = &self.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || u.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(ConfigError::Bad(format!(
                    "public_url {u:?} is not an http:// or https:// URL"
                )));
            }
        }
        if let Some(m) = &self.mqtt {
            m.validate()
                .map_err(|e| ConfigError::Bad(format!("[mqtt]: {e}")))?;
        }
        let mut names = std::collections::HashSet::new();
        for p in &mut self.projects {
            if let Some(f) = p.secret_file.take() {
                if p.secret.is_some() {
                    return Err(ConfigError::Bad(format!(
                        "[[project]] {}: secret and secret_file are both set",
                        p.name
                    )));
                }
                let s = std::fs::read_to_string(&f).map_err(|e| {
                    ConfigError::Bad(format!(
                        "[[project]] {}: reading secret_file {}: {e}",
                        p.name,
                        f.display()
                    ))
                })?;
                p.secret = Some(s.trim().to_string());
            }
        }
        for p in &self.projects {
            p.validate()
                .map_err(|e| ConfigError::Bad(format!("[[project]] {}: {e}", p.name)))?;
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::Bad(format!(
                    "[[project]] {} is declared twice",
                    p.name
                )));
            }
            if let Some(t) = p.targets.iter().find(|t| self.target(t).is_none()) {
                return Err(ConfigError::Bad(format!(
                    "[[project]] {}: target {t:?} is not declared",
                    p.name
                )));
            }
        }
        let mut sinks = std::collections::HashSet::new();
        for n in &mut self.notify {
            n.prepare(&|k| std::env::var(k).ok())
                .map_err(|e| ConfigError::Bad(format!("[[notify]] {}: {e}", n.name)))?;
            if !sinks.insert(n.name.clone()) {
                return Err(ConfigError::Bad(format!(
                    "[[notify]] {} is declared twice",
                    n.name
                )));
            }
        }
        crate::image::prepare_recipes(self)?;
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

    /// The declared targets' names, for messages: `a, b, c`.
    pub fn target_names(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Where the API is reached (`public_url`, or the address it listens
    /// on, `bound`; an unspecified address is reached on loopback), without
    /// a trailing slash.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        if let Some(u) = &self.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let mut a = bound;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if self.api_tls { "https" } else { "http" };
        format!("{scheme}://{a}")
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
                serde_json::Value::Array(a) => {
                    k == "target" || k == "project" || a.iter().all(|x| x.is_string())
                }
                serde_json::Value::Object(_) => false,
                _ => true,
            };
            assert!(ok, "{k} = {v} cannot be given as KILN_{}", k.to_uppercase());
        }
    }
}
