//! `kiln notify …`: the master's notification sinks: list them with their
//! outboxes, send a test event, queue dead notifications again.

use std::fmt::Write as _;

use clap::Subcommand;
use kiln_api::notify::{RetryAnswer, SinkView, TestAnswer};
use kiln_api::EmptyBody;

use crate::client::Client;
use crate::commands::{emit, emit_value, term_safe};

#[derive(Subcommand)]
pub enum NotifyCmd {
    /// List the sinks: kind, state, queued, delivered, dead, last error.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Send a test event to a sink now and print what it answered (exit 1
    /// if it failed).
    Test {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Queue a sink's dead notifications again.
    Retry {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// A sink's name as the master takes it (checked before it goes in a URL).
fn check_name(n: &str) -> anyhow::Result<()> {
    if n.is_empty()
        || n.len() > 64
        || n.starts_with(['-', '.'])
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        anyhow::bail!("{:?} is not a sink name", term_safe(n));
    }
    Ok(())
}

/// The sinks as a table.
pub fn table(v: &[SinkView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<9} {:>7} {:>10} {:>6}  LAST ERROR",
        "NAME", "KIND", "STATE", "QUEUED", "DELIVERED", "DEAD"
    );
    for s in v {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<9} {:>7} {:>10} {:>6}  {}",
            term_safe(&s.name),
            term_safe(&s.kind),
            term_safe(&s.state),
            s.queued,
            s.delivered,
            s.dead,
            term_safe(s.last_error.as_deref().unwrap_or("-"))
        );
    }
    out
}

pub async fn run(cmd: NotifyCmd) -> anyhow::Result<i32> {
    let c = Client::from_env()?;
    match cmd {
        NotifyCmd::Ls { json } => {
            let v: Vec<SinkView> = c.get("/api/v1/notify").await?;
            if json {
                emit_value(&v)?;
            } else {
                emit(&table(&v))?;
            }
            Ok(0)
        }
        NotifyCmd::Test { name, json } => {
            check_name(&name)?;
            let a: TestAnswer = c
                .post(&format!("/api/v1/notify/{name}/test"), &EmptyBody {})
                .await?;
            if json {
                emit_value(&a)?;
            } else if a.ok {
                emit(&format!(
                    "{}: delivered test event {}: {}\n",
                    term_safe(&a.name),
                    term_safe(&a.id),
                    term_safe(&a.answer)
                ))?;
            } else {
                emit(&format!(
                    "{}: test event {} failed: {}\n",
                    term_safe(&a.name),
                    term_safe(&a.id),
                    term_safe(&a.answer)
                ))?;
            }
            Ok(if a.ok { 0 } else { 1 })
        }
        NotifyCmd::Retry { name, json } => {
            check_name(&name)?;
            let a: RetryAnswer = c
                .post(&format!("/api/v1/notify/{name}/retry"), &EmptyBody {})
                .await?;
            if json {
                emit_value(&a)?;
            } else {
                emit(&format!(
                    "{}: {} dead notifications queued again\n",
                    term_safe(&a.name),
                    a.requeued
                ))?;
            }
            Ok(0)
        }
    }
}
