//! The batch use case: several SRPMs submitted as one batch, ordered by
//! what each needs (its SRPM's BuildRequires) and what each makes (its
//! packages' Provides, read from its spec on a worker, in the sandbox:
//! `crate::query`), or by explicit groups (a chain, as Koji's
//! chain-build). A build that needs another build of the batch waits
//! (`waiting`) until that build is published in the target; the scheduler
//! releases it then, or fails it when what it needs fails.

pub mod order;

use std::sync::Arc;
use std::time::Duration;

use kiln_api::BatchRequest;
use kiln_core::state::BuildState;
use kiln_store::{BuildRow, JobRow};

use crate::submit::{prepare, record_skipped, Prepared, SubmitError};
use crate::Core;
use order::{chain_edges, describe_cycle, edges, find_cycle, Edge, Member};

/// The most SRPMs one batch takes.
pub const MAX_BATCH: usize = 500;
/// How long a worker may take to say what one SRPM makes.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// A batch as committed: its id and its builds' rows, in the order asked.
#[derive(Debug)]
pub struct BatchSubmitted {
    pub batch: i64,
    pub builds: Vec<(BuildRow, Vec<JobRow>)>,
}

/// Submit a batch without a submitter (tools and tests; a batch from the
/// API records its token's name: [`submit_batch_as`]).
pub async fn submit_batch(
    core: &Arc<Core>,
    req: &BatchRequest,
) -> Result<BatchSubmitted, SubmitError> {
    submit_batch_as(core, req, None).await
}

/// Submit a batch whose builds record `submitter` (the name of the
/// caller's token).
pub async fn submit_batch_as(
    core: &Arc<Core>,
    req: &BatchRequest,
    submitter: Option<String>,
) -> Result<BatchSubmitted, SubmitError> {
    let bad = |m: String| SubmitError::Bad(m);
    if req.builds.is_empty() {
        return Err(bad("a batch needs at least one SRPM".into()));
    }
    if req.builds.len() > MAX_BATCH {
        return Err(bad(format!(
            "a batch takes at most {MAX_BATCH} SRPMs ({} given)",
            req.builds.len()
        )));
    }
    let mut prepared: Vec<Prepared> = Vec::new();
    for b in &req.builds {
        let mut r = b.clone();
        r.target = req.target.clone();
        let mut p = prepare(core, &r).await?;
        p.nb.submitter = submitter.clone();
        if let Some(other) = prepared.iter().find(|o| o.info.name == p.info.name) {
            return Err(bad(format!(
                "{} is in the batch twice ({} and {})",
                p.info.name, other.nb.srpm_name, p.nb.srpm_name
            )));
        }
        prepared.push(p);
    }
    let n = prepared.len();
    let members = match &req.chain {
        Some(groups) => {
            check_groups(groups, n)?;
            prepared
                .iter()
                .map(|p| Member {
                    package: p.info.name.clone(),
                    requires: Vec::new(),
                    provides: Vec::new(),
                })
                .collect::<Vec<_>>()
        }
        None => what_they_make(core, &prepared).await?,
    };
    let mut edges: Vec<Edge> = match &req.chain {
        Some(groups) => chain_edges(groups),
        None => edges(&members),
    };
    // A skipped build is not built: what it would make is in the target
    // already (an equal or newer version), so nothing waits for it.
    edges.retain(|e| prepared[e.to].skip.is_none() && prepared[e.from].skip.is_none());
    if let Some(cycle) = find_cycle(n, &edges) {
        return Err(bad(format!(
            "the batch has a cycle: {}",
            describe_cycle(&cycle, &members, &edges)
        )));
    }
    let target = prepared[0].nb.target.clone();
    let now = now_ms();
    let batch = core
        .store
        .write(move |t| kiln_store::insert_batch(t, &target, now))
        .await?;
    // The skipped ones are final at once; the others are committed
    // together, each waiting for what it needs.
    let mut out: Vec<Option<(BuildRow, Vec<JobRow>)>> = (0..n).map(|_| None).collect();
    for (i, p) in prepared.iter().enumerate() {
        if let Some(reason) = &p.skip {
            let mut p = p.clone();
            p.nb.batch = Some(batch);
            let s = record_skipped(core, p, reason.clone()).await?;
            out[i] = Some((s.build, s.jobs));
        }
    }
    let (rows, fx) = core.decide(|s, fx| {
        let ids: Vec<Option<(i64, Vec<i64>)>> = prepared
            .iter()
            .map(|p| p.skip.is_none().then(|| s.allocate_ids(p.nb.arches.len())))
            .collect();
        let mut rows = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            let Some((id, job_ids)) = &ids[i] else {
                continue;
            };
            let mut nb = p.nb.clone();
            nb.batch = Some(batch);
            nb.waits_for = edges
                .iter()
                .filter(|e| e.from == i)
                .filter_map(|e| ids[e.to].as_ref().map(|(to, _)| *to))
                .collect();
            nb.waits_for.sort_unstable();
            nb.waits_for.dedup();
            let (mut build, jobs) = kiln_store::new_rows(&nb, *id, job_ids);
            if !build.waits_for.is_empty() {
                build.state = BuildState::Waiting;
            }
            s.submit(fx, build.clone(), jobs.clone());
            for e in edges.iter().filter(|e| e.from == i) {
                if let Some((to, _)) = &ids[e.to] {
                    s.note_waits_what(*id, *to, &e.what);
                }
            }
            rows.push((i, build, jobs));
        }
        rows
    });
    if let Err(e) = core.try_apply(fx).await {
        // Nothing was sent; the builds never existed.
        let ids: Vec<i64> = rows.iter().map(|(_, b, _)| b.id).collect();
        let ((), undo) = core.decide(|s, fx| {
            for id in ids {
                s.forget_build(fx, id);
            }
        });
        core.apply(undo).await;
        return Err(e.into());
    }
    for (i, b, jobs) in rows {
        out[i] = Some((b, jobs));
    }
    tracing::info!("batch {batch}: {n} builds, {} waits", edges.len());
    Ok(BatchSubmitted {
        batch,
        builds: out.into_iter().flatten().collect(),
    })
}

/// Every index once, and no group empty.
fn check_groups(groups: &[Vec<usize>], n: usize) -> Result<(), SubmitError> {
    let mut seen = vec![false; n];
    for g in groups {
        if g.is_empty() {
            return Err(SubmitError::Bad("a chain has an empty group".into()));
        }
        for &i in g {
            if i >= n || std::mem::replace(&mut seen[i], true) {
                return Err(SubmitError::Bad(format!(
                    "chain: {i} is not a build of the batch, or is named twice"
                )));
            }
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(SubmitError::Bad(format!(
            "chain: build {i} of the batch is in no group"
        )));
    }
    Ok(())
}

/// Ask workers what each build makes (in parallel). A skipped build is not
/// asked.
async fn what_they_make(
    core: &Arc<Core>,
    prepared: &[Prepared],
) -> Result<Vec<Member>, SubmitError> {
    let asks = prepared.iter().map(|p| {
        let core = core.clone();
        let req = crate::query::QueryRequest {
            srpm_sha256: p.nb.srpm_sha256.clone(),
            srpm_size: p.nb.srpm_size,
            srpm_name: p.nb.srpm_name.clone(),
            channel: p.nb.channel.clone(),
            arch: p.nb.arches.first().cloned().unwrap_or_default(),
            disttag: p.nb.disttag.clone(),
            target: p.nb.target.clone(),
        };
        let skipped = p.skip.is_some();
        async move {
            if skipped {
                return Ok(Vec::new());
            }
            crate::query::provides(&core, req, QUERY_TIMEOUT)
                .await
                .map(|p| p.provides)
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    prepared
        .iter()
        .zip(answers)
        .map(|(p, a)| {
            let provides = a.map_err(|e| {
                let m = format!("cannot learn what {} makes: {e}", p.nb.srpm_name);
                match e {
                    crate::query::QueryError::Failed(_) => SubmitError::Bad(m),
                    _ => SubmitError::Unavailable(m),
                }
            })?;
            Ok(Member {
                package: p.info.name.clone(),
                requires: p.info.build_requires.clone(),
                provides,
            })
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
