//! The scheduler's rules for builds from git: an srpm job first (any
//! worker takes it), the build going on once it made the SRPM, then its
//! arch jobs added, or its end skipped or failed; queued builds of the
//! same ref superseded; a restart finds the builds left to expand.

use super::tests::{assigns, fx, T};
use super::*;
use kiln_core::git::BuildSource;

fn git_build(t: &mut T, f: &mut Effects, git_ref: &str) -> (i64, i64) {
    let mut nb = t.new_build("default", &[SRC_ARCH], 0);
    nb.package = "proj".into();
    nb.evr = String::new();
    nb.srpm_name = String::new();
    nb.srpm_sha256 = String::new();
    nb.srpm_size = 0;
    nb.source = Some(BuildSource {
        project: "proj".into(),
        upstream: "file:///srv/up".into(),
        git_ref: git_ref.into(),
        ..Default::default()
    });
    let (id, jobs) = t.submit_nb(f, nb);
    (id, jobs[0])
}

fn made(t: &mut T, f: &mut Effects, worker: &str, job: i64) {
    let attempt = t.attempt(job);
    t.s.finish(
        f,
        worker,
        JobResult {
            job,
            attempt,
            success: true,
            message: String::new(),
            artifacts: vec![],
            made: Some(Made {
                upstream_commit: "a".repeat(40),
                packaging_commit: None,
                version: "1.0^20260101.000000.1.gaaaaaaa".into(),
                release: None,
            }),
        },
    )
    .unwrap();
}

fn facts() -> SrpmFacts {
    SrpmFacts {
        package: "hello".into(),
        evr: "1.0^20260101.000000.1.gaaaaaaa-1".into(),
        name: "hello-1.0^20260101.000000.1.gaaaaaaa-1.src.rpm".into(),
        sha256: "b".repeat(64),
        size: 10,
    }
}

#[test]
fn an_srpm_job_goes_to_any_worker_and_its_srpm_brings_the_arch_jobs() {
    let mut t = T::new();
    let mut f = fx();
    // An aarch64-only worker takes srpm jobs too.
    t.connect(&mut f, "arm", &["aarch64"], &["default"], 2, &[]);
    let mut f = fx();
    let (id, src) = git_build(&mut t, &mut f, "main");
    assert_eq!(assigns(&f), vec![("arm".to_string(), src)]);
    let a = f
        .sends
        .iter()
        .find_map(|o| match &o.msg.msg {
            Some(pb::master_msg::Msg::Assign(a)) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    let source = a.source.expect("an srpm job's Assign names its source");
    assert_eq!(
        (source.upstream_ref.as_str(), source.mode.as_str()),
        ("main", "ci")
    );

    // The SRPM is made: the build goes on (building), and the effects ask
    // for its expansion; the commit and version are recorded with it.
    let mut f = fx();
    made(&mut t, &mut f, "arm", src);
    assert_eq!(f.srpms_made, vec![id]);
    assert!(t.s.is_active_build(id));
    assert!(f
        .writes
        .iter()
        .any(|w| matches!(w, Write::SetSource { build, source }
        if *build == id && source.upstream_commit.as_deref() == Some(&"a".repeat(40)[..]))));
    assert_eq!(t.s.unexpanded(), vec![id]);

    let mut f = fx();
    t.s.expand(
        &mut f,
        id,
        Expansion::Build {
            srpm: facts(),
            excluded: vec![],
            arches: vec!["aarch64".into(), "noarch".into()],
        },
    );
    let got: Vec<i64> = assigns(&f).into_iter().map(|(_, j)| j).collect();
    assert_eq!(got.len(), 2, "both arch jobs dispatched: {got:?}");
    assert!(
        matches!(f.writes.first(), Some(Write::Expand { build, jobs }) if build.srpm_sha256 == "b".repeat(64) && jobs.len() == 2)
    );
    assert!(t.s.unexpanded().is_empty());
    // Expanding again changes nothing.
    let mut f = fx();
    t.s.expand(
        &mut f,
        id,
        Expansion::Fail {
            reason: "late".into(),
        },
    );
    assert!(f.writes.is_empty());
}

#[test]
fn a_skipped_or_unusable_srpm_ends_the_build() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 2, &[]);
    let (skip, s1) = git_build(&mut t, &mut f, "main");
    let (fail, s2) = git_build(&mut t, &mut f, "other");
    let mut f = fx();
    made(&mut t, &mut f, "w", s1);
    made(&mut t, &mut f, "w", s2);
    let mut f = fx();
    t.s.expand(
        &mut f,
        skip,
        Expansion::Skip {
            srpm: facts(),
            reason: "hello 1.0-1 equals the newest".into(),
        },
    );
    t.s.expand(
        &mut f,
        fail,
        Expansion::Fail {
            reason: "no SRPM".into(),
        },
    );
    let states: Vec<(i64, BuildState)> = f
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::SetBuildState { build, state, .. } => Some((*build, *state)),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![(skip, BuildState::Skipped), (fail, BuildState::Failed)]
    );
    assert_eq!(f.done_builds, vec![skip, fail]);
    assert!(!t.s.is_active_build(skip) && !t.s.is_active_build(fail));
    assert!(assigns(&f).is_empty());
}

#[test]
fn a_new_push_supersedes_queued_builds_of_its_ref_only() {
    let mut t = T::new();
    let mut f = fx();
    // No worker: everything stays queued.
    let (a, _) = git_build(&mut t, &mut f, "main");
    let (b, _) = git_build(&mut t, &mut f, "feature");
    assert_eq!(t.s.superseded("proj", "t", "main", false), vec![a]);
    assert!(t
        .s
        .superseded("proj", "other-target", "main", false)
        .is_empty());
    let mut f = fx();
    t.s.cancel_with(&mut f, a, "superseded by build 9 (main)")
        .unwrap();
    assert!(f.writes.iter().any(|w| matches!(w, Write::SetBuildState { build, state: BuildState::Canceled, reason: Some(r), .. } if *build == a && r.contains("superseded"))));
    // A running one is superseded only when the project says so.
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    assert_eq!(t.state(t.s.job_current_of(b)), JobState::Assigned);
    assert!(t.s.superseded("proj", "t", "feature", false).is_empty());
    assert_eq!(t.s.superseded("proj", "t", "feature", true), vec![b]);
}

#[test]
fn a_restart_finds_the_builds_whose_srpm_was_made_but_not_expanded() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    let (id, src) = git_build(&mut t, &mut f, "main");
    let mut f = fx();
    made(&mut t, &mut f, "w", src);
    // What the database holds then: the build `building`, its srpm job
    // succeeded.
    let row = f
        .writes
        .iter()
        .find_map(|w| match w {
            Write::FinishJob { job, .. } => Some(job.clone()),
            _ => None,
        })
        .unwrap();
    let mut t2 = T::new();
    let nb = t.new_build("default", &[SRC_ARCH], 0);
    let (mut b, _) = kiln_store::new_rows(&nb, id, &[src]);
    b.srpm_sha256 = String::new();
    b.state = BuildState::Building;
    b.source = Some(BuildSource::default());
    t2.s.restore(vec![(b, vec![row])]);
    assert_eq!(t2.s.unexpanded(), vec![id]);
}
