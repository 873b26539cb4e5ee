//! The repository builder's main path: succeeded builds land in
//! `DATA/repos/<target>/<arch>/` and `…/source/` with createrepo_c metadata,
//! are served over HTTP, and dnf (in an installroot, offline, against the
//! master's URL) installs the newest version while the older one is retired
//! from the metadata at once and from disk soon after. Also `kiln vercmp`.

use crate::common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

#[test]
fn dnf_installs_the_newer_version_and_the_older_is_retired() {
    require_tool("dnf");
    let config = config_toml(&[], &[target_toml("t", &["x86_64"], &[])]);
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;

    // 1.0-1: published to the x86_64 repo (noarch) and the source repo.
    let v1 = Pkg::noarch("hello").version("1.0");
    let b1 = build_and_publish(m, &v1, "t");
    assert_eq!(publish_error(&b1), None, "{b1}");
    let ls = repo_ls(m, "t");
    let hello = entries_of(&ls, "hello");
    let bin: Vec<&Pub> = hello.iter().filter(|p| p.repo == "x86_64").collect();
    assert_eq!(bin.len(), 1, "hello once in the x86_64 repo: {ls:?}");
    assert_eq!(
        (bin[0].version.as_str(), bin[0].release.as_str()),
        ("1.0", "1")
    );
    assert_eq!(bin[0].arch, "noarch", "{ls:?}");
    assert_eq!(bin[0].epoch, "0", "{ls:?}");
    let old_bin_path = published_path(m, "t", bin[0]);
    assert_eq!(
        rpm_query(&old_bin_path, "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}"),
        "hello 1.0-1 noarch"
    );
    assert!(
        hello
            .iter()
            .any(|p| p.repo == "source" && p.evr() == "1.0-1"),
        "the source rpm of 1.0-1 is not in the source repo: {ls:?}"
    );
    let x86 = repo_dir(m, "t", "x86_64");
    let pkgs = check_repo_consistent(&x86);
    let in_md = primary_of(&pkgs, "hello");
    assert_eq!(in_md.len(), 1, "{in_md:?}");
    assert_eq!(in_md[0].evr(), "1.0-1");

    // 1.1-1: once it is published, the metadata and `repo ls` name only it.
    let v2 = Pkg::noarch("hello").version("1.1");
    let b2 = build_and_publish(m, &v2, "t");
    assert_eq!(publish_error(&b2), None, "{b2}");
    let ls = repo_ls(m, "t");
    let hello = entries_of(&ls, "hello");
    let bin: Vec<&Pub> = hello.iter().filter(|p| p.repo == "x86_64").collect();
    assert_eq!(
        bin.len(),
        1,
        "hello exactly once in the x86_64 repo: {ls:?}"
    );
    assert_eq!(bin[0].evr(), "1.1-1", "{ls:?}");
    assert!(
        hello.iter().all(|p| p.evr() != "1.0-1"),
        "1.0-1 is still listed by `repo ls` after 1.1-1 was published (keep = 1): {ls:?}"
    );
    assert!(
        hello
            .iter()
            .any(|p| p.repo == "source" && p.evr() == "1.1-1"),
        "the source rpm of 1.1-1 is not in the source repo: {ls:?}"
    );
    let new_bin_path = published_path(m, "t", bin[0]);
    assert_eq!(
        rpm_query(&new_bin_path, "%{NAME} %{VERSION}-%{RELEASE}"),
        "hello 1.1-1"
    );
    for repo in ["x86_64", "source"] {
        let pkgs = check_repo_consistent(&repo_dir(m, "t", repo));
        let in_md = primary_of(&pkgs, "hello");
        assert_eq!(
            in_md.len(),
            1,
            "hello exactly once in the {repo} metadata: {in_md:?}"
        );
        assert_eq!(in_md[0].evr(), "1.1-1", "{repo} metadata: {in_md:?}");
    }

    // The files of 1.0-1 leave the disk soon after (at the latest with the
    // next publication, which `kiln repo regen` forces).
    let target_dir = m.data.join("repos").join("t");
    let old_files = || files_named(&target_dir, |n| n.starts_with("hello-1.0-1."));
    let gone = || old_files().is_empty().then_some(());
    if wait_for(Duration::from_secs(10), gone).is_none() {
        m.cli(&["repo", "regen", "t"]).assert_ok();
        assert!(
            wait_for(Duration::from_secs(60), gone).is_some(),
            "the files of hello 1.0-1 are still on disk after 1.1-1 was published and \
             `kiln repo regen t` ran: {:?}",
            old_files()
        );
    }
    assert!(
        !old_bin_path.exists(),
        "{} is still there",
        old_bin_path.display()
    );
    assert!(new_bin_path.is_file());
    // A regeneration keeps the repository whole.
    check_repo_consistent(&x86);

    // dnf, offline in an empty installroot, with the .repo file as printed.
    let rf = repo_file(m, "t");
    assert!(
        rf.contains(&format!("{}/repos/t/$basearch", m.api_url)),
        "the .repo file should point at {}/repos/t/$basearch/:\n{rf}",
        m.api_url
    );
    let run = dnf_install(&m.scratch, "t", &rf, &["hello"]);
    run.assert_ok();
    assert_eq!(
        rpm_q_root(&run.root, &["hello"]).as_deref(),
        Some("hello-1.1-1.noarch"),
        "dnf should have installed hello 1.1-1:\n{}",
        run.out.stdout
    );
    let installed = fs::read_to_string(
        run.root
            .join(v2.data_file().trim_start_matches('/'))
            .as_path(),
    )
    .expect("the installed file");
    assert_eq!(installed.trim(), v2.data_text());
}

#[test]
fn noarch_lands_in_every_arch_repo_and_the_srpm_in_source_served_over_http() {
    let config = config_toml(&[], &[target_toml("multi", &["x86_64", "aarch64"], &[])]);
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;

    let pkg = Pkg::noarch("kn-multi").version("2.0").release("3");
    let b = build_and_publish(m, &pkg, "multi");
    let rpm_art = only_artifact(&b, "rpm");
    let srpm_art = only_artifact(&b, "srpm");
    let ls = repo_ls(m, "multi");
    let mine = entries_of(&ls, "kn-multi");

    for arch in ["x86_64", "aarch64"] {
        let e: Vec<&Pub> = mine.iter().filter(|p| p.repo == arch).collect();
        assert_eq!(
            e.len(),
            1,
            "the noarch package should be listed once in the {arch} repo: {ls:?}"
        );
        let e = e[0];
        assert_eq!(e.arch, "noarch", "{e:?}");
        assert_eq!(e.evr(), "2.0-3", "{e:?}");
        let path = published_path(m, "multi", e);
        assert!(
            path.starts_with(repo_dir(m, "multi", arch)),
            "{} is not in the {arch} repository directory",
            path.display()
        );
        assert_eq!(
            rpm_query(&path, "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}"),
            "kn-multi-2.0-3.noarch"
        );
        // Unsigned target: the published package is the built one.
        assert_eq!(sha256_file(&path), jstr(&rpm_art, "sha256"));
        let pkgs = check_repo_consistent(&repo_dir(m, "multi", arch));
        let md = primary_of(&pkgs, "kn-multi");
        assert_eq!(md.len(), 1, "{arch} metadata: {md:?}");
        assert_eq!(md[0].arch, "noarch");

        // Served over HTTP as it is on disk.
        let base = format!("{}/repos/multi/{arch}", m.api_url);
        let repomd = http_get_ok(&format!("{base}/repodata/repomd.xml"), &m.scratch);
        assert_eq!(
            repomd,
            fs::read(repo_dir(m, "multi", arch).join("repodata/repomd.xml")).unwrap(),
            "the served {arch} repomd.xml differs from the one on disk"
        );
        let rel = served_rel(m, "multi", e);
        let body = http_get_ok(&format!("{base}/{rel}"), &m.scratch);
        assert_eq!(
            sha256_hex(&body),
            sha256_file(&path),
            "GET {base}/{rel} is not the published file"
        );
    }
    // No x86_64 or aarch64 binary crept into the wrong place.
    assert!(
        mine.iter()
            .all(|p| ["x86_64", "aarch64", "source"].contains(&p.repo.as_str())),
        "{ls:?}"
    );

    // The source repo has the src.rpm, with its own metadata.
    let src: Vec<&Pub> = mine.iter().filter(|p| p.repo == "source").collect();
    assert_eq!(src.len(), 1, "the src.rpm once in the source repo: {ls:?}");
    let src_path = published_path(m, "multi", src[0]);
    assert!(
        src_path.starts_with(repo_dir(m, "multi", "source")),
        "{}",
        src_path.display()
    );
    assert!(
        src_path.to_string_lossy().ends_with(".src.rpm"),
        "{}",
        src_path.display()
    );
    assert_eq!(sha256_file(&src_path), jstr(&srpm_art, "sha256"));
    assert_eq!(
        rpm_query(&src_path, "%{NAME}-%{VERSION}-%{RELEASE}"),
        "kn-multi-2.0-3"
    );
    let pkgs = check_repo_consistent(&repo_dir(m, "multi", "source"));
    let md = primary_of(&pkgs, "kn-multi");
    assert_eq!(md.len(), 1, "source metadata: {md:?}");
    assert_eq!(md[0].arch, "src", "source metadata: {md:?}");
    let src_url = format!(
        "{}/repos/multi/source/{}",
        m.api_url,
        served_rel(m, "multi", src[0])
    );
    assert_eq!(
        sha256_hex(&http_get_ok(&src_url, &m.scratch)),
        sha256_file(&src_path)
    );

    // Range and If-Modified-Since, as dnf and mirrors use them.
    let e = mine.iter().find(|p| p.repo == "x86_64").unwrap();
    let url = format!(
        "{}/repos/multi/x86_64/{}",
        m.api_url,
        served_rel(m, "multi", e)
    );
    let disk = fs::read(published_path(m, "multi", e)).unwrap();
    let r = http_get(&url, &["Range: bytes=100-299"], &m.scratch);
    assert_eq!(
        r.status, 206,
        "a Range request should get 206 Partial Content"
    );
    assert_eq!(r.body, disk[100..300].to_vec(), "the range served is wrong");
    let cr = r.header("content-range").unwrap_or_default();
    assert!(
        cr.starts_with("bytes 100-299/") && cr.ends_with(&disk.len().to_string()),
        "Content-Range: {cr:?}"
    );
    let full = http_get(&url, &[], &m.scratch);
    assert_eq!(full.status, 200);
    let lm = full
        .header("last-modified")
        .unwrap_or_else(|| panic!("no Last-Modified on {url}: {:?}", full.headers));
    let cond = http_get(&url, &[&format!("If-Modified-Since: {lm}")], &m.scratch);
    assert_eq!(
        cond.status, 304,
        "If-Modified-Since: {lm} should get 304 Not Modified"
    );
    assert!(cond.body.is_empty());

    // An unsigned target's .repo file does not ask dnf for signatures.
    let rf = repo_file(m, "multi");
    assert!(
        rf.contains(&format!("{}/repos/multi/$basearch", m.api_url)),
        "{rf}"
    );
    assert!(!rf.contains("repo_gpgcheck=1"), "{rf}");
}

/// `kiln vercmp A B`: stdout and exit status.
fn vercmp(a: &str, b: &str) -> Out {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(kiln());
    cmd.arg("vercmp")
        .arg(a)
        .arg(b)
        .env("HOME", home.path())
        .env_remove("KILN_URL")
        .env_remove("KILN_TOKEN")
        .env_remove("XDG_CONFIG_HOME");
    run_timeout(cmd, CLI_TIMEOUT, &format!("kiln vercmp {a} {b}"))
}

#[test]
fn vercmp_orders_like_rpm_and_exits_like_rpmdev_vercmp() {
    let cases = [
        ("1.0-1", "1.0-1", 0, "=="),
        ("1:1.0-1", "2.0-1", 11, ">"),
        ("1.0~rc1-1", "1.0-1", 12, "<"),
        ("1.0-1", "1.1-1", 12, "<"),
        ("1.10-1", "1.9-1", 11, ">"),
        ("1.0-10", "1.0-9", 11, ">"),
        ("2.0-1", "1:1.0-1", 12, "<"),
    ];
    for (a, b, code, op) in cases {
        let out = vercmp(a, b);
        assert_eq!(
            out.status.code(),
            Some(code),
            "`kiln vercmp {a} {b}` should exit {code}: {out:?}"
        );
        let line = out.stdout.trim();
        let (left, right) = line.split_once(&format!(" {op} ")).unwrap_or_else(|| {
            panic!("`kiln vercmp {a} {b}` should print `{a} {op} {b}`: {out:?}")
        });
        assert!(
            left.trim().ends_with(a) && right.trim().ends_with(b),
            "`kiln vercmp {a} {b}` should print `{a} {op} {b}`, printed {line:?}"
        );
    }
}

/// With `--api-tls` the repositories are served over HTTPS too: the .repo
/// file names https and the CA file, the master serves its CA at /ca.crt,
/// and dnf installs through TLS trusting only that CA.
#[test]
fn dnf_installs_over_https_trusting_the_masters_ca() {
    let config = config_toml(&[], &[target_toml("h", &["x86_64"], &[])]);
    let f = RepoFarm::start_opts(
        MasterOpts::default().config(&config).flag("--api-tls"),
        Ctl::new(),
    );
    let m = &f.m;
    assert!(m.api_url.starts_with("https://"), "{}", m.api_url);
    build_and_publish(m, &Pkg::noarch("kh-tls"), "h");

    let rf = repo_file(m, "h");
    assert!(
        rf.contains(&format!("{}/repos/h/$basearch", m.api_url)),
        "the .repo file should point at {}/repos/h/$basearch/:\n{rf}",
        m.api_url
    );
    assert!(rf.contains("sslcacert=/etc/pki/kiln/ca.crt"), "{rf}");

    // The CA as the .repo file says to fetch it (into the test's directory
    // rather than /etc), checked against the master's own file.
    let ca = m.scratch.join("kiln-ca.crt");
    let served = curl(
        &[
            "--cacert",
            m.ca_cert().to_str().unwrap(),
            &format!("{}/ca.crt", m.api_url),
        ],
        &m.scratch,
    );
    assert_eq!(served.status, 200, "GET /ca.crt");
    assert_eq!(served.body, fs::read(m.ca_cert()).unwrap());
    fs::write(&ca, &served.body).unwrap();

    let rf = rf.replace("/etc/pki/kiln/ca.crt", ca.to_str().unwrap());
    let run = dnf_install(&m.scratch, "h", &rf, &["kh-tls"]);
    run.assert_ok();
    let q = rpm_q_root(&run.root, &["kh-tls"]);
    assert!(
        q.as_deref().is_some_and(|v| v.starts_with("kh-tls-1.0-1.")),
        "dnf should have installed kh-tls 1.0-1 over https: {q:?}\n{}",
        run.out.stdout
    );

    // Without the CA dnf refuses the repository.
    let untrusted = rf
        .lines()
        .filter(|l| !l.starts_with("sslcacert="))
        .collect::<Vec<_>>()
        .join("\n");
    let run = dnf_install(&m.scratch, "h", &untrusted, &["kh-tls"]);
    assert!(
        !run.out.success(),
        "dnf trusted an unknown CA: {}",
        run.out.stdout
    );
}
