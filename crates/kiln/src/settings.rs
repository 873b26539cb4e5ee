//! Settings for `kiln master` and `kiln worker`: a TOML file (unknown keys
//! are errors), then `KILN_*` environment variables, then flags (clap gives
//! flags precedence over the environment; both override the file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use kiln_master::{Master, MasterConfig};
use kiln_worker::backend::{Backend, Noop, Rpmbuild, Sandbox};
use serde::Deserialize;

fn load_toml<T: serde::de::DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    match path {
        None => Ok(T::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            toml::from_str(&text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                    .unwrap_or(0);
                anyhow::anyhow!(
                    "config file {}, line {line}: {}",
                    p.display(),
                    e.message().trim()
                )
            })
        }
    }
}

#[derive(Args, Default)]
pub struct MasterArgs {
    /// TOML config file.
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (database, CA, files).
    #[arg(long, env = "KILN_DATA")]
    pub data: Option<PathBuf>,
    /// HTTP API address.
    #[arg(long, env = "KILN_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Serve the HTTP API over TLS (certificate from the master's CA).
    #[arg(long, env = "KILN_API_TLS")]
    pub api_tls: bool,
    /// Worker endpoint address (gRPC over mutual TLS).
    #[arg(long, env = "KILN_WORKER_LISTEN")]
    pub worker_listen: Option<SocketAddr>,
    /// Extra names for the worker endpoint certificate (comma separated).
    #[arg(long, env = "KILN_SERVER_NAMES", value_delimiter = ',')]
    pub server_name: Vec<String>,
    /// Lease of a running job, renewed by heartbeats.
    #[arg(long, env = "KILN_LEASE_SECS")]
    pub lease_secs: Option<u64>,
    /// Attempts before a job fails for good.
    #[arg(long, env = "KILN_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Largest SRPM upload, in bytes.
    #[arg(long, env = "KILN_MAX_UPLOAD")]
    pub max_upload: Option<u64>,
    /// Largest artifact, in bytes.
    #[arg(long, env = "KILN_MAX_ARTIFACT")]
    pub max_artifact: Option<u64>,
    /// What one job attempt may stage in all, in bytes.
    #[arg(long, env = "KILN_MAX_JOB_UPLOAD")]
    pub max_job_upload: Option<u64>,
    /// How many files one job attempt may stage.
    #[arg(long, env = "KILN_MAX_JOB_FILES")]
    pub max_job_files: Option<u64>,
    /// The target of a submit that names none.
    #[arg(long, env = "KILN_DEFAULT_TARGET")]
    pub default_target: Option<String>,
    /// Build log cap per job, in bytes.
    #[arg(long, env = "KILN_LOG_CAP")]
    pub log_cap: Option<u64>,
    /// Per-job timeout, in seconds.
    #[arg(long, env = "KILN_JOB_TIMEOUT_SECS")]
    pub job_timeout_secs: Option<u64>,
    /// `full` (fsync every commit) or `normal` (survives a process crash).
    #[arg(long, env = "KILN_DURABILITY")]
    pub durability: Option<String>,
}

impl MasterArgs {
    pub fn into_config(self) -> anyhow::Result<MasterConfig> {
        let mut c: MasterConfig = load_toml(self.config.as_deref())?;
        if let Some(v) = self.data {
            c.data = v;
        }
        if let Some(v) = self.api_listen {
            c.api_listen = v;
        }
        if let Some(v) = self.worker_listen {
            c.worker_listen = v;
        }
        if self.api_tls {
            c.api_tls = true;
        }
        c.server_names.extend(self.server_name);
        if let Some(v) = self.lease_secs {
            c.lease_secs = v;
        }
        if let Some(v) = self.max_attempts {
            c.max_attempts = v;
        }
        if let Some(v) = self.max_upload {
            c.max_upload = v;
        }
        if let Some(v) = self.max_artifact {
            c.max_artifact = v;
        }
        if let Some(v) = self.max_job_upload {
            c.max_job_upload = v;
        }
        if let Some(v) = self.max_job_files {
            c.max_job_files = v;
        }
        if let Some(v) = self.default_target {
            c.default_target = Some(v);
        }
        if let Some(v) = self.log_cap {
            c.log_cap = v;
        }
        if let Some(v) = self.job_timeout_secs {
            c.job_timeout_secs = v;
        }
        if let Some(v) = self.durability {
            c.durability = match v.as_str() {
                "full" => kiln_store::Durability::Full,
                "normal" => kiln_store::Durability::Normal,
                o => bail!("durability must be full or normal, not {o:?}"),
            };
        }
        c.validate()?;
        Ok(c)
    }
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

pub async fn start_master(cfg: MasterConfig) -> anyhow::Result<Master> {
    let data = cfg.data.clone();
    let m = Master::start(cfg)
        .await
        .with_context(|| format!("starting the master in {}", data.display()))?;
    Ok(m)
}

pub async fn run_master(a: MasterArgs) -> anyhow::Result<i32> {
    let cfg = a.into_config()?;
    let m = start_master(cfg).await?;
    println!(
        "listening api={}://{} worker=https://{}",
        if m.core.cfg.api_tls { "https" } else { "http" },
        m.api_addr,
        m.worker_addr
    );
    tracing::info!("admin token in {}", m.core.paths.admin_token().display());
    wait_for_signal().await?;
    tracing::info!("stopping");
    m.core.store.close();
    Ok(0)
}

/// The worker's config file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerFile {
    dir: Option<PathBuf>,
    name: Option<String>,
    master: Option<String>,
    arches: Option<Vec<String>>,
    channels: Option<Vec<String>>,
    capacity: Option<u32>,
    work: Option<PathBuf>,
    backend: Option<String>,
    nodeps: Option<String>,
    sandbox: Option<String>,
}

#[derive(Args, Default)]
pub struct WorkerArgs {
    /// TOML config file.
    #[arg(long, env = "KILN_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory written by `kiln worker enroll`.
    #[arg(long, env = "KILN_WORKER_DIR")]
    pub dir: Option<PathBuf>,
    /// Worker name (must match the enrolled certificate).
    #[arg(long, env = "KILN_WORKER_NAME")]
    pub name: Option<String>,
    /// Master URL (default: the one enrolled with).
    #[arg(long, env = "KILN_MASTER")]
    pub master: Option<String>,
    /// Arches built here (comma separated); compatible ones are added.
    #[arg(long, env = "KILN_ARCH", value_delimiter = ',')]
    pub arch: Vec<String>,
    /// Channels served (comma separated).
    #[arg(long, env = "KILN_CHANNEL", value_delimiter = ',')]
    pub channel: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "KILN_CAPACITY")]
    pub capacity: Option<u32>,
    /// Job directories and input cache (default: DIR/work).
    #[arg(long, env = "KILN_WORK")]
    pub work: Option<PathBuf>,
    /// `rpmbuild` or `noop` (benchmarks).
    #[arg(long, env = "KILN_BACKEND")]
    pub backend: Option<String>,
    /// `auto` (when the host rpm database cannot resolve /bin/sh), `yes`, `no`.
    #[arg(long, env = "KILN_NODEPS")]
    pub nodeps: Option<String>,
    /// Bubblewrap sandbox without network: `auto`, `on`, `off`.
    #[arg(long, env = "KILN_SANDBOX")]
    pub sandbox: Option<String>,
}

fn host_rpmdb_usable() -> bool {
    std::process::Command::new("rpm")
        .args(["-q", "--whatprovides", "/bin/sh"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn make_backend(
    backend: &str,
    nodeps: &str,
    sandbox: &str,
) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match backend {
        "rpmbuild" => {
            let nodeps = match nodeps {
                "auto" => !host_rpmdb_usable(),
                "yes" | "true" | "on" => true,
                "no" | "false" | "off" => false,
                o => bail!("nodeps must be auto, yes or no, not {o:?}"),
            };
            let sandbox: Sandbox = sandbox.parse().map_err(anyhow::Error::msg)?;
            Arc::new(Rpmbuild { nodeps, sandbox })
        }
        "noop" => Arc::new(Noop),
        o => bail!("unknown backend {o:?} (rpmbuild, noop)"),
    })
}

pub fn worker_config(a: WorkerArgs) -> anyhow::Result<kiln_worker::WorkerConfig> {
    let f: WorkerFile = load_toml(a.config.as_deref())?;
    let dir = a
        .dir
        .or(f.dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kiln-worker"));
    let arches = if !a.arch.is_empty() {
        a.arch
    } else {
        f.arches
            .unwrap_or_else(|| vec![kiln_core::names::host_arch().to_string()])
    };
    for arch in &arches {
        kiln_core::names::check_arch(arch)?;
    }
    let channels = if !a.channel.is_empty() {
        a.channel
    } else {
        f.channels.unwrap_or_else(|| vec!["default".into()])
    };
    for c in &channels {
        kiln_core::names::check_ident("channel", c)?;
    }
    let capacity = a.capacity.or(f.capacity).unwrap_or(1);
    if capacity == 0 {
        bail!("capacity must be at least 1");
    }
    let backend = make_backend(
        a.backend.or(f.backend).as_deref().unwrap_or("rpmbuild"),
        a.nodeps.or(f.nodeps).as_deref().unwrap_or("auto"),
        a.sandbox.or(f.sandbox).as_deref().unwrap_or("auto"),
    )?;
    Ok(kiln_worker::WorkerConfig {
        work: a.work.or(f.work).unwrap_or_else(|| dir.join("work")),
        name: a.name.or(f.name),
        master: a.master.or(f.master),
        dir,
        arches,
        channels,
        capacity,
        backend,
        announce: true,
    })
}

pub async fn run_worker(a: WorkerArgs) -> anyhow::Result<i32> {
    let cfg = worker_config(a)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if wait_for_signal().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    kiln_worker::run(cfg, stop_rx).await?;
    Ok(0)
}
