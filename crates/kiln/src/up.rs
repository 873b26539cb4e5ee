//! `kiln up`: the whole farm on this machine. A master and one worker in one
//! process, a data directory with SQLite and a self-made CA, and the example
//! packages shipped with Kiln built and shown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use kiln_api::{ArtifactKind, BuildState, TokenRequest, TokenResponse};

use crate::client::Client;
use crate::commands::{emit, format_build, submit_build, wait_for_build, SubmitArgs};
use crate::settings::{self, MasterArgs, WorkerArgs};

#[derive(Args)]
pub struct UpArgs {
    /// Data directory.
    #[arg(long, env = "KILN_DATA", default_value = "/var/lib/kiln")]
    pub data: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub worker_listen: SocketAddr,
    /// Jobs the local worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
    /// Exit after the examples are built instead of serving on.
    #[arg(long)]
    pub once: bool,
    /// TOML config file for the master.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The example packages, shipped inside the binary.
const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "hello-kiln",
        &[(
            "hello-kiln.spec",
            include_str!("../../../examples/hello-kiln/hello-kiln.spec"),
        )],
    ),
    (
        "hello-c",
        &[
            (
                "hello-c.spec",
                include_str!("../../../examples/hello-c/hello-c.spec"),
            ),
            ("hello.c", include_str!("../../../examples/hello-c/hello.c")),
        ],
    ),
];

pub fn make_srpms(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let top = dir.join("rpmbuild");
    let mut out = Vec::new();
    for (name, files) in EXAMPLES {
        let src = dir.join(name);
        std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
        for (f, text) in *files {
            std::fs::write(src.join(f), text)
                .with_context(|| format!("writing {}", src.join(f).display()))?;
        }
        let spec = src.join(format!("{name}.spec"));
        out.push(rpmbuild_bs(
            &spec,
            &[
                "--define".into(),
                format!("_topdir {}", top.display()).into(),
                "--define".into(),
                format!("_sourcedir {}", src.display()).into(),
            ],
        )?);
    }
    Ok(out)
}

/// `rpmbuild -bs SPEC` with `extra` arguments before the spec: the SRPM it
/// wrote.
pub(crate) fn rpmbuild_bs(
    spec: &std::path::Path,
    extra: &[std::ffi::OsString],
) -> anyhow::Result<PathBuf> {
    let o = std::process::Command::new("rpmbuild")
        .arg("-bs")
        .args(extra)
        .arg(spec)
        .output()
        .context("running rpmbuild -bs (is rpm installed?)")?;
    if !o.status.success() {
        bail!(
            "rpmbuild -bs {} failed: {}",
            spec.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let wrote = text
        .lines()
        .find_map(|l| l.strip_prefix("Wrote:"))
        .context("rpmbuild -bs did not say what it wrote")?;
    Ok(PathBuf::from(wrote.trim()))
}

pub async fn up(a: UpArgs) -> anyhow::Result<i32> {
    // The master's and the worker's settings are layered as for `kiln
    // master` and `kiln worker` (file, `KILN_*`), with `kiln up`'s own
    // values over them as flags would be.
    let mut margs = MasterArgs {
        config: a.config.clone(),
        ..Default::default()
    };
    margs
        .keys
        .set("data", a.data.to_string_lossy())
        .set("api_listen", a.api_listen.to_string())
        .set("worker_listen", a.worker_listen.to_string());
    let cfg = margs.into_config()?;
    let host_arch = kiln_core::names::host_arch().to_string();
    let m = settings::start_master(cfg).await?;
    let api = format!("http://{}", m.api_addr);
    let worker_url = format!("https://{}", m.worker_addr);
    println!(
        "master: api {api}, workers {worker_url}, data {}",
        a.data.display()
    );
    let c = Client::new(&api, Some(m.core.admin_token.clone()))?;

    let wdir = a.data.join("local-worker");
    if !wdir.join(kiln_worker::files::CERT).exists() {
        let req = TokenRequest {
            worker: "local".into(),
        };
        let t: TokenResponse = c.post("/api/v1/tokens", &req).await?;
        kiln_worker::enroll::enroll(&worker_url, &t.token, &wdir).await?;
        println!("worker: enrolled `local` in {}", wdir.display());
    }
    let mut wargs = WorkerArgs::default();
    wargs
        .keys
        .set("dir", wdir.to_string_lossy())
        .set("master", worker_url)
        .set("arches", host_arch.clone())
        .set("channels", "default")
        .set("capacity", a.capacity.to_string());
    let mut wcfg = settings::worker_config(wargs)?;
    wcfg.announce = false;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(kiln_worker::run(wcfg, stop_rx));

    let srpms = make_srpms(&a.data.join("examples"))?;
    let mut ids = Vec::new();
    for srpm in &srpms {
        let args = SubmitArgs {
            file: srpm.clone(),
            more: Vec::new(),
            batch: false,
            chain: false,
            target: None,
            arch: vec![host_arch.clone()],
            channel: None,
            now: false,
            priority: None,
            scratch: false,
            ci: false,
            wait: false,
            json: false,
        };
        let (b, _) = submit_build(&c, &args).await?;
        println!("submitted {} as build {}", srpm.display(), b.id);
        ids.push(b.id);
    }
    let mut ok = true;
    for id in ids {
        let b = wait_for_build(&c, id).await?;
        // A closed stdout does not stop the farm.
        let _ = emit(&format_build(&b));
        ok &= b.state == BuildState::Succeeded;
        for art in b.artifacts.iter().filter(|a| a.kind == ArtifactKind::Rpm) {
            println!(
                "  RPM: {}",
                m.core
                    .paths
                    .incoming(id, &art.arch)
                    .join(&art.name)
                    .display()
            );
        }
    }
    if !a.once {
        println!(
            "kiln is up. Try: KILN_URL={api} KILN_TOKEN=$(cat {}) kiln builds   (Ctrl-C stops)",
            m.core.paths.admin_token().display()
        );
        settings::wait_for_signal().await?;
    }
    let _ = stop_tx.send(true);
    let _ = worker.await;
    settings::stop_store(&m.core.store).await;
    Ok(if ok { 0 } else { 1 })
}
