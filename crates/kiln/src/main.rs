//! `kiln`: the one binary. Master, worker and CLI.

mod bench;
mod bench_batch;
mod bench_hook;
mod bench_notify;
mod bench_release;
mod bench_repo;
mod bench_web;
mod bench_ws;
mod client;
mod commands;
mod image_cmds;
mod images;
mod notify;
mod projects;
mod release_cmds;
mod settings;
mod systemd;
mod up;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: a build farm for Linux distributions"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the master (scheduler, worker endpoint, HTTP API).
    Master(settings::MasterArgs),
    /// Run a worker, or enroll / revoke one.
    Worker(WorkerCmd),
    /// Master and one worker in one process; builds the shipped examples.
    Up(up::UpArgs),
    /// Submit a source RPM.
    Submit(commands::SubmitCmd),
    /// List builds.
    Builds(commands::ListArgs),
    /// One build.
    Build {
        #[command(subcommand)]
        cmd: BuildCmd,
    },
    /// One batch (`kiln submit … --batch`).
    Batch {
        #[command(subcommand)]
        cmd: BatchCmd,
    },
    /// List jobs.
    Jobs(commands::ListArgs),
    /// Print a job's build log.
    Logs(commands::LogsArgs),
    /// Cancel a queued or running build.
    Cancel { id: i64 },
    /// List workers.
    Workers(commands::JsonArg),
    /// Published repositories.
    Repo {
        #[command(subcommand)]
        cmd: RepoCmd,
    },
    /// Compare two [epoch:]version-release strings as rpm does
    /// (exit 0: equal, 11: A newer, 12: B newer).
    Vercmp { a: String, b: String },
    /// Copy a master's data directory (database snapshot, then the files)
    /// into DEST, which must be new or empty; safe while the master runs.
    Backup {
        /// The master's data directory.
        #[arg(long, env = "KILN_DATA", default_value = "/var/lib/kiln")]
        data: std::path::PathBuf,
        dest: std::path::PathBuf,
    },
    /// Measure the scheduling spine (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Measure the repository builder (see BENCHMARKS.md).
    BenchRepo(bench_repo::BenchRepoArgs),
    /// Measure the promotion of a 1 GiB image to a release (see BENCHMARKS.md).
    BenchRelease(bench_release::BenchReleaseArgs),
    /// Measure a batch of SRPMs in a dependency chain (see BENCHMARKS.md).
    BenchBatch(bench_batch::BenchBatchArgs),
    /// Measure webhook → srpm job latency (see BENCHMARKS.md).
    BenchHook(bench_hook::BenchHookArgs),
    /// Measure notifications: commit -> webhook, a down sink's queue, a hanging sink (see BENCHMARKS.md).
    BenchNotify(bench_notify::BenchNotifyArgs),
    /// Measure the web UI's pages over a big database (see BENCHMARKS.md).
    BenchWeb(bench_web::BenchWebArgs),
    /// Measure the websocket fan-out: N clients following a log (see BENCHMARKS.md).
    BenchWs(bench_ws::BenchWsArgs),
    /// Images: `kiln image build NAME` on the farm, `ls`, `show BUILD`;
    /// `kiln image build-local` builds a recipe on this machine.
    Image {
        #[command(subcommand)]
        cmd: images::ImageCmd,
    },
    /// Releases: `kiln release promote BUILD --release NAME`, `ls NAME`,
    /// `rollback NAME --channel C`.
    Release {
        #[command(subcommand)]
        cmd: release_cmds::ReleaseCmd,
    },
    /// Projects: builds from git (an upstream and a packaging repository).
    Project {
        #[command(subcommand)]
        cmd: projects::ProjectCmd,
    },
    /// Notification sinks: list them, send a test event, retry dead ones.
    Notify {
        #[command(subcommand)]
        cmd: notify::NotifyCmd,
    },
    /// API tokens with names and roles, and worker enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand)]
enum BuildCmd {
    /// Show a build, its jobs (and why they wait) and its artifacts.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BatchCmd {
    /// Show a batch: its builds and what each waits for.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RepoCmd {
    /// Print a .repo file for a target.
    File { target: String },
    /// List the packages published in a target.
    Ls {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Regenerate a target's repositories now.
    Regen { target: String },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create an API token with a name and a role (`--name N --role R`;
    /// prints the token alone, shown this once), or a one-time enrollment
    /// token for a worker (`--worker NAME`).
    Create {
        /// The worker a one-time enrollment token is for.
        #[arg(long, conflicts_with_all = ["name", "role"], required_unless_present = "name")]
        worker: Option<String>,
        /// The API token's name.
        #[arg(long, requires = "role")]
        name: Option<String>,
        /// What the API token may do: admin (everything), submitter (submit,
        /// cancel and rebuild its own builds) or reader (read).
        #[arg(long, requires = "name", value_parser = ["admin", "submitter", "reader"])]
        role: Option<String>,
        /// The token owner's e-mail address (notifications to the submitter).
        #[arg(long, requires = "name", value_name = "ADDR")]
        email: Option<String>,
    },
    /// List the API tokens (name, role, created, last used, revoked).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token: refused from now on, its web sessions end.
    Revoke { name: String },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct WorkerCmd {
    #[command(subcommand)]
    sub: Option<WorkerSub>,
    #[command(flatten)]
    run: settings::WorkerArgs,
}

#[derive(Subcommand)]
enum WorkerSub {
    /// Make this worker's key and have the master sign its certificate.
    Enroll {
        #[arg(long, env = "KILN_MASTER")]
        master: String,
        #[arg(long, env = "KILN_ENROLL_TOKEN")]
        token: String,
        #[arg(long, env = "KILN_WORKER_DIR", default_value = "/var/lib/kiln-worker")]
        dir: PathBuf,
    },
    /// Cut a worker off, at once and for good.
    Revoke { name: String },
    /// The base roots this worker keeps for buildroot targets.
    Roots {
        /// The worker's work directory (default: `<dir>/work`).
        #[arg(long, env = "KILN_WORKER_WORK")]
        work: Option<PathBuf>,
        #[arg(long, env = "KILN_WORKER_DIR", default_value = "/var/lib/kiln-worker")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match dispatch(cli).await {
            Ok(code) => code,
            // The reader of our output went away (`kiln builds | head`):
            // nothing to say, and nobody to say it to.
            Err(e) if e.is::<commands::StdoutClosed>() => commands::EXIT_STDOUT_CLOSED,
            Err(e) => {
                // The master's messages can quote package data.
                commands::say(&format!(
                    "error: {}",
                    commands::term_safe_lines(&format!("{e:#}"))
                ));
                1
            }
        }
    });
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::Master(a) => {
            init_tracing();
            settings::run_master(a).await
        }
        Cmd::Worker(w) => match w.sub {
            Some(WorkerSub::Enroll { master, token, dir }) => {
                let name = kiln_worker::enroll::enroll(&master, &token, &dir).await?;
                commands::emit(&format!("enrolled worker {name} in {}\n", dir.display()))?;
                Ok(0)
            }
            Some(WorkerSub::Revoke { name }) => commands::revoke(&name).await,
            Some(WorkerSub::Roots { work, dir, json }) => {
                let work = work.unwrap_or_else(|| dir.join("work"));
                let roots = kiln_worker::buildroot::list_roots(&work.join("roots"));
                if json {
                    commands::emit(&(serde_json::to_string_pretty(&roots)? + "\n"))?;
                } else {
                    commands::emit(&roots_table(&roots))?;
                }
                Ok(0)
            }
            None => {
                init_tracing();
                settings::run_worker(w.run).await
            }
        },
        Cmd::Up(a) => {
            init_tracing();
            up::up(a).await
        }
        Cmd::Submit(a) => commands::submit(a).await,
        Cmd::Backup { data, dest } => {
            let (d, t) = (data.clone(), dest.clone());
            let r = tokio::task::spawn_blocking(move || kiln_master::backup::backup(&d, &t))
                .await?
                .with_context(|| {
                    format!("backing up {} into {}", data.display(), dest.display())
                })?;
            println!(
                "backed up {} into {}: {} files, {} bytes",
                data.display(),
                dest.display(),
                r.files,
                r.bytes
            );
            Ok(0)
        }
        Cmd::Bench(a) => bench::bench(a).await,
        Cmd::BenchRepo(a) => bench_repo::bench_repo(a).await,
        Cmd::BenchRelease(a) => bench_release::bench_release(a).await,
        Cmd::BenchBatch(a) => bench_batch::bench_batch(a).await,
        Cmd::BenchHook(a) => bench_hook::bench_hook(a).await,
        Cmd::BenchNotify(a) => bench_notify::bench_notify(a).await,
        Cmd::BenchWeb(a) => bench_web::bench_web(a).await,
        Cmd::BenchWs(a) => bench_ws::bench_ws(a).await,
        Cmd::Vercmp { a, b } => commands::vercmp(&a, &b),
        Cmd::Repo { cmd } => match cmd {
            RepoCmd::File { target } => commands::repo_file(&target).await,
            RepoCmd::Ls { target, json } => commands::repo_ls(&target, json).await,
            RepoCmd::Regen { target } => commands::repo_regen(&target).await,
        },
        Cmd::Builds(a) => commands::builds(a).await,
        Cmd::Build {
            cmd: BuildCmd::Show { id, json },
        } => commands::build_show(id, json).await,
        Cmd::Batch {
            cmd: BatchCmd::Show { id, json },
        } => commands::batch_show(id, json).await,
        Cmd::Jobs(a) => commands::jobs(a).await,
        Cmd::Project { cmd } => projects::run(cmd).await,
        Cmd::Notify { cmd } => notify::run(cmd).await,
        Cmd::Image { cmd } => images::run(cmd).await,
        Cmd::Release { cmd } => release_cmds::run(cmd).await,
        Cmd::Logs(a) => commands::logs(a).await,
        Cmd::Cancel { id } => commands::cancel(id).await,
        Cmd::Workers(a) => commands::workers(a.json).await,
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Create {
                worker: Some(worker),
                ..
            } => commands::token_create(&worker).await,
            TokenCmd::Create {
                name: Some(name),
                role: Some(role),
                email,
                ..
            } => commands::api_token_create(&name, &role, email.as_deref()).await,
            TokenCmd::Create { .. } => {
                anyhow::bail!("give --worker NAME, or --name NAME --role ROLE")
            }
            TokenCmd::Ls { json } => commands::api_token_ls(json).await,
            TokenCmd::Revoke { name } => commands::api_token_revoke(&name).await,
        },
    }
}

/// `kiln worker roots`: one line per base root.
fn roots_table(roots: &[kiln_worker::buildroot::RootMeta]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut s = format!(
        "{:<48} {:<12} {:<8} {:>8} {:>9} {:>6} {:>8}\n",
        "ROOT", "TARGET", "ARCH", "SIZE", "AGE", "USES", "PACKAGES"
    );
    for r in roots {
        s += &format!(
            "{:<48} {:<12} {:<8} {:>6}MB {:>8}s {:>6} {:>8}\n",
            r.id,
            r.target,
            r.arch,
            r.size >> 20,
            now.saturating_sub(r.created_ms) / 1000,
            r.uses,
            r.installed.len()
        );
    }
    s
}
