//! The srpm job against real git repositories (made here, reached by
//! `file://`), the real rpmspec and rpmbuild, in the real bubblewrap.
//! A missing tool fails a test; nothing is skipped.

#[path = "../../tests/common/gitrepo.rs"]
pub(crate) mod gitrepo;

/// The buildroot tests' base repository, made from this machine's files
/// (shared with `kiln`'s integration tests and cached in `target/tmp`).
#[path = "../../../kiln/tests/it/common/hostbase.rs"]
#[allow(dead_code, unused_imports)]
mod hostbase;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use gitrepo::{spec, TestRepo};

use super::*;

pub(crate) struct Buf(Mutex<Vec<u8>>);

impl LogSink for Buf {
    fn write(&self, d: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(d);
    }
}

pub(crate) fn tools_present() {
    assert!(
        Bwrap::find().is_some(),
        "these tests need bubblewrap (apt-get install bubblewrap)"
    );
    for tool in ["git", "rpmbuild", "rpmspec", "tar", "gzip"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "these tests need {tool} (apt-get install git rpm tar gzip)"
        );
    }
}

const PATCH: &[u8] = b"--- a/README\n+++ b/README\n@@ -1 +1 @@\n-hello\n+hello, patched\n";

/// An upstream with a tag `v1.0` on its first commit and two more
/// commits; a packaging repository with `hello.spec` (1.0) and a patch.
pub(crate) struct Project {
    pub tmp: tempfile::TempDir,
    pub up: TestRepo,
    pub pk: TestRepo,
    pub env: SrpmEnv,
    jobs: Mutex<u32>,
}

impl Project {
    pub fn new() -> Project {
        tools_present();
        let tmp = tempfile::tempdir().unwrap();
        let mut up = TestRepo::new(&tmp.path().join("up"));
        up.commit(
            &[("README", b"hello\n"), ("hello.sh", b"echo hello\n")],
            "first",
        );
        up.annotated_tag("v1.0");
        up.commit(&[("hello.sh", b"echo hello again\n")], "second");
        up.commit(&[("NEWS", b"news\n")], "third");
        let mut pk = TestRepo::new(&tmp.path().join("pk"));
        pk.commit(
            &[
                (
                    "hello.spec",
                    spec(
                        "hello",
                        "1.0",
                        "v%{version}.tar.gz#/%{name}-%{version}.tar.gz",
                        "Patch0: fix.patch\n",
                    )
                    .as_bytes(),
                ),
                ("fix.patch", PATCH),
            ],
            "packaging",
        );
        let env = SrpmEnv::new(&tmp.path().join("work"));
        Project {
            tmp,
            up,
            pk,
            env,
            jobs: Mutex::new(0),
        }
    }

    pub fn ci(&self) -> pb::GitSource {
        pb::GitSource {
            project: "hello".into(),
            mode: "ci".into(),
            upstream_url: self.up.url(),
            upstream_ref: "main".into(),
            packaging_url: self.pk.url(),
            packaging_ref: "main".into(),
            ..Default::default()
        }
    }

    /// Run one srpm job in a new job directory: what it made, its log, the
    /// job directory.
    pub async fn run(&self, source: pb::GitSource) -> (Made, String, PathBuf) {
        self.run_in(source, None).await
    }

    /// The same, in `buildroot` when given.
    pub async fn run_in(
        &self,
        source: pb::GitSource,
        buildroot: Option<(RootSpec, Arc<Roots>)>,
    ) -> (Made, String, PathBuf) {
        let n = {
            let mut j = self.jobs.lock().unwrap();
            *j += 1;
            *j
        };
        let dir = self.tmp.path().join(format!("work/jobs/{n}-1"));
        let req = SrpmRequest {
            source,
            disttag: ".kt1".into(),
            timeout: Duration::from_secs(600),
            buildroot,
        };
        let log = Buf(Mutex::new(Vec::new()));
        let (_tx, rx) = watch::channel(false);
        let made = make_srpm(&self.env, &req, &dir, &log, rx).await;
        let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        (made, text, dir)
    }

    /// The CI source with the packaging repository `pk`.
    pub fn with_packaging(&self, pk: &TestRepo) -> pb::GitSource {
        pb::GitSource {
            packaging_url: pk.url(),
            ..self.ci()
        }
    }

    /// Run a job that must fail: its message, its log.
    pub async fn fails(&self, source: pb::GitSource) -> (String, String) {
        let (made, log, _) = self.run(source).await;
        (failure(&made, &log), log)
    }

    pub fn mirror(&self, url: &str) -> PathBuf {
        self.env
            .work
            .join("cache/git")
            .join(kiln_core::git::mirror_name(url))
    }
}

/// The SRPM a successful job made (with its log on failure).
fn srpm_of(made: &Made, log: &str) -> PathBuf {
    assert!(
        made.outcome.success,
        "{}\n--- log ---\n{log}",
        made.outcome.message
    );
    assert_eq!(made.outcome.packages.len(), 1);
    made.outcome.packages[0].clone()
}

/// The message of a job that failed (the log must say it too).
fn failure(made: &Made, log: &str) -> String {
    assert!(!made.outcome.success, "succeeded:\n{log}");
    assert!(!made.outcome.canceled);
    assert!(!made.outcome.message.contains('\n'));
    made.outcome.message.clone()
}

/// `m` starts with `want` (the log shown when not).
fn assert_starts(m: &str, want: &str, log: &str) {
    assert!(
        m.starts_with(want),
        "{m:?} does not start with {want:?}\n{log}"
    );
}

/// The lines a command that must succeed prints.
fn output_lines(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The files an SRPM holds.
fn srpm_files(srpm: &Path) -> Vec<String> {
    output_lines(
        Command::new("rpm")
            .args(["-qpl", "--nosignature", "--define", "_dbpath /nonexistent"])
            .arg(srpm),
    )
}

/// The entries of the tarball `name` in the job directory `dir`.
fn tar_list(dir: &Path, name: &str) -> Vec<String> {
    output_lines(Command::new("tar").arg("-tf").arg(sources(dir, name)))
}

/// The file `name` of the job directory `dir`'s `SOURCES`.
fn sources(dir: &Path, name: &str) -> PathBuf {
    dir.join("build/SOURCES").join(name)
}

fn sha(p: &Path) -> String {
    kiln_core::fsutil::sha256_file(p).unwrap().0
}

#[tokio::test]
async fn a_ci_build_from_two_repositories() {
    let p = Project::new();
    let head = p.up.head();
    let (made, log, dir) = p.run(p.ci()).await;
    let srpm = srpm_of(&made, &log);
    // The third commit, at 02:00, two commits after v1.0.
    let want = format!("1.0^20260101.020000.2.g{}", &head[..7]);
    assert_eq!(made.source.version, want);
    assert_eq!(made.source.release, "");
    assert_eq!(made.source.upstream_commit, head);
    assert_eq!(made.source.packaging_commit, p.pk.head());
    let info = kiln_core::srpm::inspect_srpm(&srpm).unwrap();
    assert_eq!(
        (
            info.name.as_str(),
            info.version.as_str(),
            info.release.as_str()
        ),
        ("hello", want.as_str(), "1.kt1")
    );
    assert_eq!(
        srpm.file_name().unwrap().to_string_lossy(),
        format!("hello-{want}-1.kt1.src.rpm")
    );
    // The tarball Source0 names (after its `#/`), the patch from the
    // packaging repository, the spec.
    let tarball = format!("hello-{want}.tar.gz");
    let mut files = srpm_files(&srpm);
    files.sort();
    assert_eq!(
        files,
        vec![
            "fix.patch".to_string(),
            tarball.clone(),
            "hello.spec".into()
        ]
    );
    let entries = tar_list(&dir, &tarball);
    assert!(
        entries
            .iter()
            .all(|e| e.starts_with(&format!("hello-{want}/"))),
        "{entries:?}"
    );
    for f in ["README", "hello.sh", "NEWS"] {
        assert!(
            entries.contains(&format!("hello-{want}/{f}")),
            "{f} in {entries:?}"
        );
    }
    // The log says what ran and what came of it.
    for line in [
        &format!("kiln: fetching {} main: mirror created, ", p.up.url()),
        &format!("kiln: fetching {} main: mirror created, ", p.pk.url()),
        &format!("kiln: upstream {}#main is at {head}", p.up.url()),
        &format!("kiln: version {want} (ci: the spec's 1.0 and a snapshot of upstream"),
        "kiln: $ git fetch --quiet --no-tags",
        "(in the sandbox)",
        "kiln: $ rpmbuild -bs --nodeps",
        "_disable_source_fetch 1",
    ] {
        assert!(log.contains(line), "{line:?} not in the log:\n{log}");
    }
    assert_eq!(made.fetches.len(), 2);
    assert!(made.fetches.iter().all(|f| f.created && f.bytes > 0));
}

#[tokio::test]
async fn the_same_commits_make_the_same_version_and_tarball_without_a_new_clone() {
    let mut p = Project::new();
    let (first, log1, dir1) = p.run(p.ci()).await;
    srpm_of(&first, &log1);
    // Something of the worker's own in the mirror: a clone would lose it.
    let mirror = p.mirror(&p.up.url());
    std::fs::write(mirror.join("kiln-test-marker"), b"x").unwrap();
    let (second, log2, dir2) = p.run(p.ci()).await;
    srpm_of(&second, &log2);
    assert_eq!(second.source.version, first.source.version);
    let name = format!("hello-{}.tar.gz", first.source.version);
    assert_eq!(
        sha(&sources(&dir1, &name)),
        sha(&sources(&dir2, &name)),
        "the same commit gave another tarball"
    );
    assert!(
        log2.contains(&format!(
            "kiln: fetching {} main: mirror updated, ",
            p.up.url()
        )),
        "{log2}"
    );
    assert!(!log2.contains("mirror created"), "{log2}");
    assert!(mirror.join("kiln-test-marker").exists());
    assert!(second.fetches.iter().all(|f| !f.created));

    // A fetch killed mid-way left its lock files: they do not stop the next.
    let lock = mirror.join("refs/kiln/stale.lock");
    std::fs::write(&lock, b"").unwrap();
    std::fs::write(mirror.join("packed-refs.lock"), b"").unwrap();

    // A new upstream commit: only it comes, and the version moves on.
    let new = p.up.commit(&[("NEWS", b"more news\n")], "fourth");
    let (third, log3, _) = p.run(p.ci()).await;
    srpm_of(&third, &log3);
    assert_eq!(third.source.upstream_commit, new);
    assert_eq!(
        third.source.version,
        format!("1.0^20260101.030000.3.g{}", &new[..7])
    );
    assert_eq!(
        kiln_core::srpm::compare_evr(&first.source.version, &third.source.version),
        std::cmp::Ordering::Less
    );
    let up = &third.fetches[0];
    assert!(!up.created && up.bytes > 0, "{up:?}");
    assert!(up.bytes < kiln_core_dir_size(&mirror), "{up:?}");
    assert!(log3.contains("mirror updated"), "{log3}");
    assert!(
        log3.contains("kiln: removed 2 lock files an interrupted git left in the mirror"),
        "{log3}"
    );
    assert!(!lock.exists());
}

fn kiln_core_dir_size(d: &Path) -> u64 {
    mirror::dir_size(d)
}

#[tokio::test]
async fn a_packit_style_repository_holds_the_spec() {
    let p = Project::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut one = TestRepo::new(&tmp.path().join("one"));
    one.commit(
        &[
            ("src/main.c", b"int main(void) { return 0; }\n"),
            (
                "packaging/one.spec",
                spec("one", "0.3", "%{name}-%{version}.tar.xz", "").as_bytes(),
            ),
        ],
        "all in one",
    );
    let source = pb::GitSource {
        mode: "ci".into(),
        upstream_url: one.url(),
        upstream_ref: "main".into(),
        spec: "packaging/one.spec".into(),
        ..Default::default()
    };
    let (made, log, dir) = p.run(source.clone()).await;
    let srpm = srpm_of(&made, &log);
    let v = format!("0.3^20260101.000000.1.g{}", &one.head()[..7]);
    assert_eq!(made.source.version, v);
    assert_eq!(made.source.packaging_commit, "");
    let tarball = format!("one-{v}.tar.xz");
    assert!(srpm_files(&srpm).contains(&tarball));
    let entries = tar_list(&dir, &tarball);
    assert!(
        entries.contains(&format!("one-{v}/packaging/one.spec")),
        "{entries:?}"
    );
    assert!(
        entries.contains(&format!("one-{v}/src/main.c")),
        "{entries:?}"
    );
    assert_eq!(made.fetches.len(), 1, "one repository, one fetch");

    // Without the spec's path: none at the top.
    let (m, log) = p
        .fails(pb::GitSource {
            spec: String::new(),
            ..source
        })
        .await;
    let want = format!(
        "no spec in upstream repository at {}: found no *.spec at its top",
        &one.head()[..7]
    );
    assert_starts(&m, &want, &log);
}

#[tokio::test]
async fn a_release_build_takes_its_version_from_the_tag() {
    let p = Project::new();
    let tagged = {
        // v1.0 is on the first commit.
        p.up.git(&["rev-parse", "v1.0^{commit}"])
    };
    let release = pb::GitSource {
        mode: "release".into(),
        upstream_ref: "v1.0".into(),
        ..p.ci()
    };
    let (made, log, _) = p.run(release.clone()).await;
    let srpm = srpm_of(&made, &log);
    assert_eq!(made.source.version, "1.0");
    assert_eq!(made.source.upstream_commit, tagged);
    let info = kiln_core::srpm::inspect_srpm(&srpm).unwrap();
    assert_eq!(
        (info.version.as_str(), info.release.as_str()),
        ("1.0", "1.kt1")
    );
    assert!(
        log.contains("kiln: version 1.0 (release: tag v1.0)"),
        "{log}"
    );
    // The commit a webhook names must be the tag's.
    let (m, log) = p
        .fails(pb::GitSource {
            upstream_commit: p.up.head(),
            ..release.clone()
        })
        .await;
    assert_starts(&m, &format!("tag v1.0 is at {}", &tagged[..7]), &log);

    // A tag that disagrees with the spec, unless the tag wins.
    p.up.tag("v1.3");
    let v13 = pb::GitSource {
        upstream_ref: "refs/tags/v1.3".into(),
        ..release.clone()
    };
    let (m, _) = p.fails(v13.clone()).await;
    assert_eq!(m, "tag v1.3 says 1.3 but the spec says 1.0");
    let (made, log, _) = p
        .run(pb::GitSource {
            tag_wins: true,
            ..v13
        })
        .await;
    let srpm = srpm_of(&made, &log);
    assert_eq!(kiln_core::srpm::inspect_srpm(&srpm).unwrap().version, "1.3");
    assert!(
        log.contains("kiln: tag v1.3 says 1.3 but the spec says 1.0: the tag wins (tag_wins)"),
        "{log}"
    );

    // A tag that is not a version; a branch is not a tag.
    p.up.tag("foo");
    for (git_ref, want) in [
        ("foo", "tag foo is not a version".to_string()),
        (
            "nope",
            format!(
                "fetching {}#nope: fatal: couldn't find remote ref refs/tags/nope",
                p.up.url()
            ),
        ),
    ] {
        let (m, log) = p
            .fails(pb::GitSource {
                upstream_ref: git_ref.into(),
                ..release.clone()
            })
            .await;
        assert_starts(&m, &want, &log);
    }
}

#[tokio::test]
async fn an_asked_for_commit_is_built_even_when_older() {
    let p = Project::new();
    let first = p.up.git(&["rev-parse", "v1.0^{commit}"]);
    // On the tag itself: 0 commits since it, at 00:00.
    let v = format!("1.0^20260101.000000.0.g{}", &first[..7]);
    // Asked for as the commit, and as the ref itself.
    let by_commit = pb::GitSource {
        upstream_commit: first.clone(),
        ..p.ci()
    };
    let by_ref = pb::GitSource {
        upstream_ref: first.clone(),
        ..p.ci()
    };
    for source in [by_commit, by_ref] {
        let (made, log, dir) = p.run(source).await;
        srpm_of(&made, &log);
        assert_eq!(made.source.upstream_commit, first);
        assert_eq!(made.source.version, v);
        let entries = tar_list(&dir, &format!("hello-{v}.tar.gz"));
        assert!(!entries.iter().any(|e| e.ends_with("/NEWS")), "{entries:?}");
    }

    // A commit the repository does not have: fetched by its id, and then
    // refused clearly.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let (m, log) = p
        .fails(pb::GitSource {
            upstream_commit: missing.into(),
            ..p.ci()
        })
        .await;
    assert_starts(&m, &format!("fetching {}#{missing}: ", p.up.url()), &log);
}

#[tokio::test]
async fn bad_sources_fail_with_a_precise_first_line() {
    let p = Project::new();
    let base = p.ci();
    let cases: Vec<(pb::GitSource, String)> = vec![
        (
            pb::GitSource {
                upstream_ref: "--upload-pack=touch /tmp/x".into(),
                ..base.clone()
            },
            "git ref \"--upload-pack=touch /tmp/x\": starts with `-`".into(),
        ),
        (
            pb::GitSource {
                packaging_url: "http://example.invalid/x.git".into(),
                ..base.clone()
            },
            "repository URL \"http://example.invalid/x.git\": is not an https://".into(),
        ),
        (
            pb::GitSource {
                spec: "../x.spec".into(),
                ..base.clone()
            },
            "path in the repository \"../x.spec\"".into(),
        ),
        (
            pb::GitSource {
                upstream_ref: "nope".into(),
                ..base.clone()
            },
            format!(
                "fetching {}#nope: fatal: couldn't find remote ref nope",
                p.up.url()
            ),
        ),
        (
            pb::GitSource {
                spec: "missing.spec".into(),
                ..base.clone()
            },
            format!(
                "no spec missing.spec in the packaging repository at {}",
                &p.pk.head()[..7]
            ),
        ),
        (
            pb::GitSource {
                upstream_url: "ssh://git@example.invalid/x.git".into(),
                ..base.clone()
            },
            format!(
                "an ssh:// repository needs a key: set git_ssh_key ({SSH_KEY_ENV}) in the worker's settings"
            ),
        ),
    ];
    for (source, want) in cases {
        let (m, log) = p.fails(source).await;
        assert_starts(&m, &want, &log);
    }
}

/// A packaging repository made for one failure.
async fn packaging_failure(files: &[(&str, &[u8])]) -> (String, String, String) {
    let p = Project::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut pk = TestRepo::new(&tmp.path().join("pk2"));
    let head = pk.commit(files, "broken packaging");
    let (m, log) = p.fails(p.with_packaging(&pk)).await;
    (m, log, head)
}

/// A spec of `a` 1 with `a-1.tar.gz` as its Source0, and `extra`.
fn spec_a(extra: &str) -> String {
    spec("a", "1", "a-%{version}.tar.gz", extra)
}

/// The failure of a packaging repository that holds `a.spec` alone: its
/// message, its log.
async fn spec_a_failure(extra: &str) -> (String, String) {
    let (m, log, _) = packaging_failure(&[("a.spec", spec_a(extra).as_bytes())]).await;
    (m, log)
}

#[tokio::test]
async fn two_specs_are_named_in_the_failure() {
    let s = spec_a("");
    let (m, _, head) =
        packaging_failure(&[("a.spec", s.as_bytes()), ("b.spec", s.as_bytes())]).await;
    assert_eq!(
        m,
        format!(
            "no spec in packaging repository at {}: found a.spec, b.spec (name one)",
            &head[..7]
        )
    );
}

#[tokio::test]
async fn a_spec_that_does_not_parse_says_why() {
    let (m, log) = spec_a_failure("%{error:deliberately broken}\n").await;
    assert_starts(
        &m,
        "the spec does not parse: error: deliberately broken",
        &log,
    );
}

/// A source given by URL is never downloaded (`_disable_source_fetch`,
/// and no network in the sandbox): the SRPM cannot be made without it.
#[tokio::test]
async fn a_source_url_is_never_downloaded() {
    let (m, log) =
        spec_a_failure("Source1: https://example.invalid/extra-%{version}.tar.gz\n").await;
    assert_starts(
        &m,
        "rpmbuild -bs failed: error: Bad file: /build/SOURCES/extra-1",
        &log,
    );
    assert!(log.contains("_disable_source_fetch 1"), "{log}");
}

#[tokio::test]
async fn a_spec_through_a_link_or_a_source0_kiln_cannot_make_is_refused() {
    let s = spec("a", "1", "a-%{version}.gem", "");
    let (m, _, _) = packaging_failure(&[("a.spec", s.as_bytes())]).await;
    assert!(m.starts_with("Source0 a-1^"), "{m}");
    assert!(m.contains("is no archive Kiln makes"), "{m}");

    let p = Project::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut pk = TestRepo::new(&tmp.path().join("pk3"));
    pk.commit(&[], "empty");
    std::os::unix::fs::symlink("/etc/passwd", pk.dir.join("evil.spec")).unwrap();
    pk.commit(&[], "a link");
    let (m, _) = p.fails(p.with_packaging(&pk)).await;
    assert!(m.contains("evil.spec is a symbolic link (refused)"), "{m}");
}

#[tokio::test]
async fn two_jobs_of_one_project_at_once_share_the_mirror() {
    let p = Project::new();
    let ((a, la, _), (b, lb, _)) = tokio::join!(p.run(p.ci()), p.run(p.ci()));
    srpm_of(&a, &la);
    srpm_of(&b, &lb);
    assert_eq!(a.source.version, b.source.version);
    // One made each mirror, the other found it made.
    let created = |l: &str| l.matches("mirror created").count();
    assert_eq!(created(&la) + created(&lb), 2, "{la}\n{lb}");
}

#[tokio::test]
async fn a_canceled_job_stops() {
    let p = Project::new();
    let dir = p.tmp.path().join("work/jobs/99-1");
    let req = SrpmRequest {
        source: p.ci(),
        disttag: String::new(),
        timeout: Duration::from_secs(60),
        buildroot: None,
    };
    let log = Buf(Mutex::new(Vec::new()));
    let (tx, rx) = watch::channel(false);
    tx.send(true).unwrap();
    let made = make_srpm(&p.env, &req, &dir, &log, rx).await;
    assert!(made.outcome.canceled && !made.outcome.success);
}

/// With a buildroot, the spec is read and the SRPM made inside the target's
/// base root (its rpm, its files), through the job's own overlay.
#[tokio::test]
async fn in_a_buildroot_the_srpm_is_made_inside_the_base_root() {
    let p = Project::new();
    let hb = tokio::task::spawn_blocking(|| {
        hostbase::build_host_base_repo(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/hostbase"),
        )
    })
    .await
    .unwrap();
    let server = hostbase::serve_dir(&hb.repo);
    let tmp = tempfile::tempdir().unwrap();
    let mut pk = TestRepo::new(&tmp.path().join("pk-root"));
    // Release 7 only where the base root's marker file is.
    let s = spec("hello", "1.0", "%{name}-%{version}.tar.gz", "").replace(
        "Release: 1%{?dist}",
        &format!(
            "Release: %(test -e {} && echo 7 || echo 1)%{{?dist}}",
            hostbase::MARKER_FILE
        ),
    );
    pk.commit(&[("hello.spec", s.as_bytes())], "packaging");
    let roots = Arc::new(Roots::new(&p.env.work, None, 1 << 30));
    let rs = RootSpec::new(
        "t",
        "noarch",
        &pb::Buildroot {
            repos: vec![server.url.clone()],
            packages: hostbase::ROOT_PACKAGES
                .iter()
                .map(|x| x.to_string())
                .collect(),
            releasever: "9".into(),
            gpgcheck: false,
            ..Default::default()
        },
    );
    let (made, log, dir) = p.run_in(p.with_packaging(&pk), Some((rs, roots))).await;
    let srpm = srpm_of(&made, &log);
    let info = kiln_core::srpm::inspect_srpm(&srpm).unwrap();
    assert_eq!(info.release, "7.kt1", "{log}");
    assert!(
        log.contains("kiln: $ rpmbuild -bs --nodeps")
            && log.contains("(in the sandbox, in the target's base root)"),
        "{log}"
    );
    assert!(dir.join(crate::buildroot::ROOT_LOG).is_file());
    // On the worker's own system the same spec says 1.
    let (made, log, _) = p.run(p.with_packaging(&pk)).await;
    let srpm = srpm_of(&made, &log);
    assert_eq!(
        kiln_core::srpm::inspect_srpm(&srpm).unwrap().release,
        "1.kt1"
    );
}

/// With `submodules`, the tarball holds the submodules' files too, packed
/// the same way each time; without, only upstream's own tree.
#[tokio::test]
async fn submodules_go_in_the_tarball_when_asked() {
    let p = Project::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = TestRepo::new(&tmp.path().join("lib"));
    lib.commit(&[("lib.h", b"int lib(void);\n")], "lib");
    let mut up = TestRepo::new(&tmp.path().join("up-sub"));
    up.commit(&[("README", b"hello\n")], "first");
    up.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        &lib.url(),
        "vendor/lib",
    ]);
    let head = up.commit(&[], "vendor lib");
    let with = pb::GitSource {
        upstream_url: up.url(),
        submodules: true,
        ..p.ci()
    };
    let v = format!("1.0^20260101.010000.2.g{}", &head[..7]);
    let tarball = format!("hello-{v}.tar.gz");
    let (a, log_a, dir_a) = p.run(with.clone()).await;
    srpm_of(&a, &log_a);
    assert_eq!(a.source.version, v);
    let entries = tar_list(&dir_a, &tarball);
    for e in ["README", ".gitmodules", "vendor/lib/lib.h"] {
        assert!(
            entries.contains(&format!("hello-{v}/{e}")),
            "{e} in {entries:?}"
        );
    }
    assert!(
        !entries
            .iter()
            .any(|e| e.contains(".git/") || e.ends_with("/.git")),
        "{entries:?}"
    );
    assert!(log_a.contains("kiln: 1 submodules checked out"), "{log_a}");
    let (b, log_b, dir_b) = p.run(with.clone()).await;
    srpm_of(&b, &log_b);
    assert_eq!(
        sha(&sources(&dir_a, &tarball)),
        sha(&sources(&dir_b, &tarball)),
        "the same commits gave another tarball"
    );
    // Without: the submodule's folder is empty.
    let (c, log_c, dir_c) = p
        .run(pb::GitSource {
            submodules: false,
            ..with
        })
        .await;
    srpm_of(&c, &log_c);
    let entries = tar_list(&dir_c, &tarball);
    assert!(!entries.iter().any(|e| e.ends_with("lib.h")), "{entries:?}");
}
