//! Questions put to workers over their sessions. One so far: what an SRPM
//! makes (every binary package its spec builds and their Provides), which
//! the SRPM's header does not say. Learning it means evaluating the spec,
//! whose macros can run shell: never here, on a worker, in its sandbox,
//! without network (`kiln_worker::query`).
//!
//! A query goes to one connected, non-draining worker serving the
//! channel and arch (the one with the most free slots; a query takes
//! none), is answered on the same session, and is forgotten when answered,
//! when the time is up, or when that session ends.

use std::sync::Arc;
use std::time::Duration;

use kiln_proto as pb;
use tokio::sync::oneshot;

use crate::Core;

/// What to ask about: an SRPM of the content-addressed store, and where
/// its builds would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    /// The SRPM's sha256 (it must be in `cas/`: the worker fetches it).
    pub srpm_sha256: String,
    pub srpm_size: u64,
    /// Its file name, for messages only.
    pub srpm_name: String,
    /// A worker serving this channel and arch answers.
    pub channel: String,
    /// The arch the spec is evaluated for (`%{_isa}`, `%ifarch`).
    pub arch: String,
    /// The target's `%{dist}` (empty: none).
    pub disttag: String,
    /// The target (its buildroot, if it has one, is where the spec is read).
    pub target: String,
}

/// What an SRPM makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provides {
    /// The binary packages its spec builds, in the spec's order.
    pub packages: Vec<String>,
    /// Their Provides as rpm prints them (each once): `name`, or `name OP
    /// [epoch:]version[-release]`; every package's own `name =
    /// [epoch:]version-release` included.
    pub provides: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No connected, non-draining worker serves the channel and arch.
    #[error("no connected worker serves channel {channel} and arch {arch}")]
    NoWorker { channel: String, arch: String },
    /// The worker did not answer in time.
    #[error("the worker did not answer in time")]
    Timeout,
    /// The worker could not evaluate the spec (its reason).
    #[error("{0}")]
    Failed(String),
    /// The worker's session ended before it answered.
    #[error("the worker went away before it answered")]
    WorkerGone,
}

/// Forgets the query when the asker stops waiting (answered, timed out, or
/// the asker's future dropped).
struct Registered<'a> {
    core: &'a Core,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.core.queries.forget(self.id);
    }
}

/// Ask a worker serving `(req.channel, req.arch)` what the SRPM makes;
/// wait at most `timeout` for the answer.
pub async fn provides(
    core: &Arc<Core>,
    req: QueryRequest,
    timeout: Duration,
) -> Result<Provides, QueryError> {
    if !kiln_core::names::is_sha256(&req.srpm_sha256) {
        return Err(QueryError::Failed(format!(
            "malformed sha256 {}",
            kiln_core::names::shown(&req.srpm_sha256)
        )));
    }
    let id = core.queries.next_id();
    let (tx, rx) = oneshot::channel();
    let worker = {
        // Under the scheduler lock: the session found is current, and its
        // end (which drops its queries under the same lock) comes after
        // the registration.
        let s = core.sched();
        let Some((name, conn, wtx)) = s.query_target(&req.channel, &req.arch) else {
            return Err(QueryError::NoWorker {
                channel: req.channel,
                arch: req.arch,
            });
        };
        core.queries.register(id, &name, conn, tx);
        let q = pb::Query {
            id,
            srpm_sha256: req.srpm_sha256.clone(),
            srpm_size: req.srpm_size,
            srpm_name: req.srpm_name.clone(),
            arch: req.arch.clone(),
            disttag: req.disttag.clone(),
            target: req.target.clone(),
            buildroot: s.buildroot_of(&req.target),
        };
        if wtx
            .send(pb::MasterMsg {
                msg: Some(pb::master_msg::Msg::Query(q)),
            })
            .is_err()
        {
            core.queries.forget(id);
            return Err(QueryError::WorkerGone);
        }
        name
    };
    let _registered = Registered { core, id };
    tracing::debug!(
        "query {id}: what {} makes, asked of worker {worker}",
        kiln_core::names::shown(&req.srpm_name)
    );
    let r = match tokio::time::timeout(timeout, rx).await {
        Err(_) => return Err(QueryError::Timeout),
        Ok(Err(_)) => return Err(QueryError::WorkerGone),
        Ok(Ok(r)) => r,
    };
    if !r.ok {
        let error = if r.error.is_empty() {
            format!("worker {worker} could not evaluate the spec")
        } else {
            r.error
        };
        return Err(QueryError::Failed(error));
    }
    check_answer(&worker, &r)?;
    Ok(Provides {
        packages: r.packages,
        provides: r.provides,
    })
}

/// Most Provides (and packages) taken from one answer.
const MAX_ENTRIES: usize = 10_000;
/// Longest package name or Provides taken.
const MAX_ENTRY: usize = 4096;

/// An answer's names as the worker promises them: bounded, none empty,
/// none with a control character.
fn check_answer(worker: &str, r: &pb::QueryResult) -> Result<(), QueryError> {
    if r.packages.len() > MAX_ENTRIES || r.provides.len() > MAX_ENTRIES {
        return Err(QueryError::Failed(format!(
            "worker {worker} answered with more than {MAX_ENTRIES} entries"
        )));
    }
    let bad = r.packages.iter().chain(&r.provides).find(|e| {
        e.trim().is_empty()
            || e.len() > MAX_ENTRY
            || e.chars()
                .any(|c| c.is_control() || kiln_core::names::is_bidi_control(c))
    });
    match bad {
        Some(e) => Err(QueryError::Failed(format!(
            "worker {worker} answered with a malformed entry {}",
            kiln_core::names::shown(e)
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(packages: &[&str], provides: &[&str]) -> pb::QueryResult {
        pb::QueryResult {
            id: 1,
            ok: true,
            error: String::new(),
            packages: packages.iter().map(|s| s.to_string()).collect(),
            provides: provides.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A worker as a test connects it: name, arches, channels, capacity,
    /// draining.
    type TestWorker<'a> = (&'a str, &'a [&'a str], &'a [&'a str], u32, bool);

    /// A scheduler with these workers, and their sessions' receiving ends.
    fn sched_with(
        workers: &[TestWorker<'_>],
    ) -> (
        crate::sched::Sched,
        Vec<tokio::sync::mpsc::UnboundedReceiver<pb::MasterMsg>>,
    ) {
        let mut s = crate::sched::Sched::new(
            crate::sched::SchedConfig {
                lease: Duration::from_secs(60),
                max_attempts: 3,
                job_timeout_secs: 0,
                log_cap: 0,
                buildroots: Default::default(),
            },
            Arc::new(crate::sched::SystemClock),
        );
        let mut rxs = Vec::new();
        for (name, arches, channels, capacity, draining) in workers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let mut fx = crate::sched::Effects::default();
            let hello = crate::sched::Hello {
                name: name.to_string(),
                serial: 1,
                arches: arches.iter().map(|s| s.to_string()).collect(),
                channels: channels.iter().map(|s| s.to_string()).collect(),
                capacity: *capacity,
                draining: *draining,
                host_builds: true,
            };
            s.connect(&mut fx, hello, &[], tx);
            rxs.push(rx);
        }
        (s, rxs)
    }

    #[test]
    fn a_query_goes_to_the_least_loaded_worker_serving_it() {
        let (s, mut rxs) = sched_with(&[
            ("small", &["x86_64"], &["default"], 1, false),
            ("big", &["x86_64"], &["default"], 4, false),
            ("draining", &["x86_64"], &["default"], 8, true),
            ("other-channel", &["x86_64"], &["ci"], 8, false),
            ("arm", &["aarch64"], &["default"], 8, false),
        ]);
        let name = |t: Option<(String, u64, _)>| t.map(|(n, _, _)| n);
        assert_eq!(
            name(s.query_target("default", "x86_64")).as_deref(),
            Some("big")
        );
        // noarch and i686 are served by x86_64 workers too.
        assert_eq!(
            name(s.query_target("default", "noarch")).as_deref(),
            Some("arm")
        );
        assert_eq!(
            name(s.query_target("default", "i686")).as_deref(),
            Some("big")
        );
        assert_eq!(
            name(s.query_target("ci", "x86_64")).as_deref(),
            Some("other-channel")
        );
        assert_eq!(name(s.query_target("ci", "aarch64")), None);
        assert_eq!(name(s.query_target("default", "s390x")), None);
        // A session whose stream is gone is passed over.
        rxs.remove(1);
        assert_eq!(
            name(s.query_target("default", "x86_64")).as_deref(),
            Some("small")
        );
    }

    #[test]
    fn answers_with_odd_names_are_refused() {
        assert!(check_answer("w", &answer(&["p"], &["p = 1-1", "greet-api = 2"])).is_ok());
        for bad in ["", " ", "a\nb", "x\u{1b}[2J", "rtl\u{202e}"] {
            let e = check_answer("w", &answer(&["p"], &[bad])).unwrap_err();
            assert!(matches!(e, QueryError::Failed(_)), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("p{i}")).collect();
        let mut r = answer(&["p"], &[]);
        r.provides = many;
        assert!(check_answer("w", &r).is_err());
    }
}
