//! dnf in an installroot, offline, against the master's URL, with the
//! .repo file `kiln repo file` prints.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Deadline for a `dnf install` in an installroot.
pub const DNF_TIMEOUT: Duration = Duration::from_secs(240);

/// What a `dnf install` run did.
pub struct DnfRun {
    pub root: PathBuf,
    pub repo_file: String,
    pub out: Out,
}

impl DnfRun {
    /// Panics, with the .repo file and dnf's output, unless dnf exited 0.
    pub fn assert_ok(&self) {
        assert!(
            self.out.success(),
            "dnf install failed (exit {:?}) with the .repo file\n{}\n---- dnf stdout ----\n{}\n\
             ---- dnf stderr ----\n{}",
            self.out.status.code(),
            self.repo_file,
            self.out.stdout,
            self.out.stderr
        );
    }
}

/// The section names (`[id]`) of a .repo file.
pub fn repo_ids(repo_file: &str) -> Vec<String> {
    repo_file
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l[1..l.len() - 1].trim().to_string())
        .collect()
}

/// `kiln repo file T`, checked to hold a `[kiln-T]` section.
pub fn repo_file(m: &Master, target: &str) -> String {
    let text = m.cli(&["repo", "file", target]).assert_ok().stdout;
    let id = format!("kiln-{target}");
    assert!(
        repo_ids(&text).contains(&id),
        "`kiln repo file {target}` has no [{id}] section:\n{text}"
    );
    text
}

/// Installs `pkgs` with dnf into a new, empty installroot under `scratch`,
/// using `repo_file` as is (written into the reposdir) and enabling only
/// its `[kiln-T]` repository. dnf's main config is Fedora's usual one
/// (gpgcheck=1), so a repository that does not sign must say gpgcheck=0.
pub fn dnf_install(scratch: &Path, target: &str, repo_file: &str, pkgs: &[&str]) -> DnfRun {
    let dnf = require_tool("dnf");
    require_tool("rpm");
    let base = scratch.join(format!("dnf-{}", unique()));
    let root = base.join("root");
    let reposdir = base.join("repos.d");
    let cache = base.join("cache");
    let home = base.join("home");
    for d in [&root, &reposdir, &cache, &home] {
        fs::create_dir_all(d).unwrap();
    }
    // Debian's rpm keeps its database under ~/.rpmdb; dnf in an
    // installroot must use the usual place inside it.
    fs::write(home.join(".rpmmacros"), "%_dbpath /var/lib/rpm\n").unwrap();
    fs::write(reposdir.join(format!("kiln-{target}.repo")), repo_file).unwrap();
    let conf = base.join("dnf.conf");
    fs::write(
        &conf,
        "[main]\ngpgcheck=1\ninstallonly_limit=3\nclean_requirements_on_remove=True\n\
         best=False\nskip_if_unavailable=False\n",
    )
    .unwrap();
    let mut cmd = Command::new(dnf);
    cmd.arg("-y")
        .arg("--installroot")
        .arg(&root)
        .arg("--releasever")
        .arg("9")
        .arg("--config")
        .arg(&conf)
        .arg(format!("--setopt=reposdir={}", reposdir.display()))
        .arg(format!("--setopt=cachedir={}", cache.display()))
        .arg("--setopt=install_weak_deps=False")
        .arg("--disablerepo=*")
        .arg(format!("--enablerepo=kiln-{target}"))
        .arg("install")
        .args(pkgs)
        .env("HOME", &home);
    let out = run_timeout(cmd, DNF_TIMEOUT, &format!("dnf install {}", pkgs.join(" ")));
    // dnf starts a gpg-agent for a repository's keyring (repo_gpgcheck).
    kill_gpg_agents_under(&cache);
    DnfRun {
        root,
        repo_file: repo_file.to_string(),
        out,
    }
}
