//! Signing: a target with `sign_key` publishes packages that pass `rpm -K`,
//! a `repomd.xml.asc` that gpg verifies against the served public key, and a
//! .repo file with which dnf installs under gpgcheck=1 and repo_gpgcheck=1.
//! An unsigned target with `tosign_dir` copies what it publishes there.

use crate::common::*;
use std::fs;

#[test]
fn a_signed_target_passes_rpm_k_repomd_asc_and_dnf_gpgcheck() {
    require_tool("gpg");
    require_tool("dnf");
    let ctl = Ctl::new();
    let key = GpgKey::generate(ctl.path());
    let config = config_toml(
        &[],
        &[target_toml(
            "s",
            &["x86_64"],
            &[toml_path("sign_key", &key.secret_file)],
        )],
    );
    let f = RepoFarm::start(&config, ctl);
    let m = &f.m;

    let pkg = Pkg::noarch("ks-signed");
    build_and_publish(m, &pkg, "s");

    // The public key, beside the repositories and over HTTP.
    let pubkey = m.data.join("repos/s/RPM-GPG-KEY-kiln-s");
    let pub_text = fs::read_to_string(&pubkey)
        .unwrap_or_else(|e| panic!("no public key at {}: {e}", pubkey.display()));
    assert!(
        pub_text.contains("BEGIN PGP PUBLIC KEY BLOCK"),
        "{} is not an armored public key:\n{pub_text}",
        pubkey.display()
    );
    assert!(
        !pub_text.contains("PRIVATE KEY"),
        "the served key file holds a private key!"
    );
    let key_url = format!("{}/repos/s/RPM-GPG-KEY-kiln-s", m.api_url);
    assert_eq!(
        http_get_ok(&key_url, &m.scratch),
        pub_text.as_bytes(),
        "GET {key_url} differs from the file on disk"
    );
    let shown = gpg(
        &gpg_home(&m.scratch),
        &["--with-colons", "--show-keys", pubkey.to_str().unwrap()],
    )
    .assert_ok();
    assert_eq!(
        colon_fprs(&shown.stdout),
        vec![key.fpr.clone()],
        "the served public key is not the configured signing key"
    );

    // Every published package is signed with that key.
    let ls = repo_ls(m, "s");
    let mine = entries_of(&ls, "ks-signed");
    assert!(
        mine.iter().any(|p| p.repo == "x86_64") && mine.iter().any(|p| p.repo == "source"),
        "{ls:?}"
    );
    let empty_db = m.scratch.join("rpmdb-empty");
    let key_db = m.scratch.join("rpmdb-key");
    fs::create_dir_all(&empty_db).unwrap();
    fs::create_dir_all(&key_db).unwrap();
    rpm_db(&key_db, &["--import", pubkey.to_str().unwrap()]).assert_ok();
    for p in &mine {
        let path = published_path(m, "s", p);
        let file = path.to_str().unwrap();
        // Without the key, rpm cannot check the signature: proof there is one.
        let nokey = rpm_db(&empty_db, &["-K", file]);
        assert!(
            !nokey.success(),
            "{file} passes `rpm -K` with no key imported: it carries no signature: {nokey:?}"
        );
        let k = rpm_db(&key_db, &["-K", file]);
        assert!(
            k.success() && k.stdout.contains("signatures OK"),
            "`rpm -K {file}` with the public key imported: {k:?}"
        );
        let kv = rpm_db(&key_db, &["-Kv", file]).assert_ok();
        assert!(
            kv.stdout
                .to_lowercase()
                .contains(&format!("key id {}: ok", key.short_id())),
            "`rpm -Kv {file}` does not show a good signature by key {}: {}",
            key.short_id(),
            kv.stdout
        );
    }

    // repomd.xml is signed (detached, armored) and verifies against the
    // served key; the signature is served too.
    for repo in ["x86_64", "source"] {
        let dir = repo_dir(m, "s", repo);
        check_repo_consistent(&dir);
        let repomd = dir.join("repodata/repomd.xml");
        let asc = dir.join("repodata/repomd.xml.asc");
        let asc_text =
            fs::read_to_string(&asc).unwrap_or_else(|e| panic!("no {} ({e})", asc.display()));
        assert!(
            asc_text.contains("BEGIN PGP SIGNATURE"),
            "{} is not an armored signature",
            asc.display()
        );
        let status = gpg_verify(&pubkey, &asc, &repomd, &m.scratch);
        assert!(
            status.contains(&format!("VALIDSIG {}", key.fpr)),
            "repomd.xml.asc of {repo} is not by {}:\n{status}",
            key.fpr
        );
        let url = format!("{}/repos/s/{repo}/repodata/repomd.xml.asc", m.api_url);
        assert_eq!(http_get_ok(&url, &m.scratch), asc_text.as_bytes(), "{url}");
    }

    // The .repo file asks dnf to check both, with the served key.
    let rf = repo_file(m, "s");
    let compact: String = rf.chars().filter(|c| *c != ' ').collect();
    for want in [
        "gpgcheck=1".to_string(),
        "repo_gpgcheck=1".to_string(),
        format!("gpgkey={key_url}"),
    ] {
        assert!(
            compact.lines().any(|l| l.trim() == want),
            "the .repo file lacks `{want}`:\n{rf}"
        );
    }
    let run = dnf_install(&m.scratch, "s", &rf, &["ks-signed"]);
    run.assert_ok();
    assert_eq!(
        rpm_q_root(&run.root, &["ks-signed"]).as_deref(),
        Some("ks-signed-1.0-1.noarch")
    );
    // dnf imported the target's key to check the package.
    let pubkeys = rpm_q_root(&run.root, &["gpg-pubkey"]).unwrap_or_default();
    assert!(
        pubkeys.contains(&format!("gpg-pubkey-{}", key.short_id())),
        "the installroot should hold the imported key {}: {pubkeys:?}",
        key.short_id()
    );
}

#[test]
fn an_unsigned_target_copies_published_packages_to_tosign_dir() {
    let ctl = Ctl::new();
    let tosign = ctl.path().join("tosign");
    fs::create_dir_all(&tosign).unwrap();
    let config = config_toml(
        &[],
        &[target_toml(
            "u",
            &["x86_64"],
            &[toml_path("tosign_dir", &tosign)],
        )],
    );
    let f = RepoFarm::start(&config, ctl);
    let m = &f.m;

    let pkg = Pkg::noarch("ku-tosign");
    build_and_publish(m, &pkg, "u");
    let ls = repo_ls(m, "u");
    let mine = entries_of(&ls, "ku-tosign");
    assert!(
        mine.iter().any(|p| p.repo == "x86_64") && mine.iter().any(|p| p.repo == "source"),
        "{ls:?}"
    );
    let staged_dir = tosign.join("u");
    for p in &mine {
        let published = published_path(m, "u", p);
        let name = p.basename();
        let staged = files_named(&staged_dir, |n| n == name);
        assert_eq!(
            staged.len(),
            1,
            "{name} (published in {}) should be copied once to {}; it holds {:?}",
            p.repo,
            staged_dir.display(),
            files_under(&staged_dir)
        );
        assert_eq!(
            sha256_file(&staged[0]),
            sha256_file(&published),
            "{} differs from the published {}",
            staged[0].display(),
            published.display()
        );
    }
    // Unsigned: no repomd signature, no gpgcheck asked in the .repo file.
    for repo in ["x86_64", "source"] {
        let dir = repo_dir(m, "u", repo);
        check_repo_consistent(&dir);
        assert!(
            !dir.join("repodata/repomd.xml.asc").exists(),
            "an unsigned target has no repomd.xml.asc"
        );
    }
    let rf = repo_file(m, "u");
    let compact: String = rf.chars().filter(|c| *c != ' ').collect();
    assert!(
        !compact.lines().any(|l| l.trim() == "repo_gpgcheck=1"),
        "{rf}"
    );
    assert!(!compact.lines().any(|l| l.trim() == "gpgcheck=1"), "{rf}");
}
