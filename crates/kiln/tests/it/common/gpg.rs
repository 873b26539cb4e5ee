//! OpenPGP with the host's gpg: a signing key for a target, detached
//! signatures checked, and the agents gpg starts stopped again.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SIGTERMs every gpg-agent whose command line names a path under `dir`
/// (the agents gpg and dnf start for the test's own home directories).
pub fn kill_gpg_agents_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let agents = pids_where(|argv| {
        argv.first()
            .is_some_and(|a| a.rsplit('/').next().unwrap_or(a).starts_with("gpg-agent"))
            && argv.iter().skip(1).any(|a| a.starts_with(&prefix))
    });
    for pid in agents {
        // SAFETY: kill(2) on an agent started for this test's directory.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// `gpg --homedir HOME --batch ARGS`.
pub fn gpg(home: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(require_tool("gpg"));
    cmd.arg("--homedir").arg(home).arg("--batch").args(args);
    run_timeout(cmd, CLI_TIMEOUT, &format!("gpg {}", args.join(" ")))
}

/// A new home directory for gpg (mode 0700).
pub fn gpg_home(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let h = dir.join(format!("gnupg-{}", unique()));
    fs::create_dir_all(&h).unwrap();
    fs::set_permissions(&h, fs::Permissions::from_mode(0o700)).unwrap();
    h
}

/// The fingerprints (`fpr` records) of the primary keys in `--with-colons`
/// output.
pub fn colon_fprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut want = false;
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        match f[0] {
            "pub" | "sec" => want = true,
            "sub" | "ssb" => want = false,
            "fpr" if want => {
                out.push(f.get(9).unwrap_or(&"").to_uppercase());
                want = false;
            }
            _ => {}
        }
    }
    out
}

/// A passphrase-less RSA signing key made with gpg, its secret part
/// exported armored to a 0600 file. Agents are stopped on drop.
pub struct GpgKey {
    pub home: PathBuf,
    pub fpr: String,
    pub secret_file: PathBuf,
}

impl GpgKey {
    pub fn generate(dir: &Path) -> GpgKey {
        use std::os::unix::fs::PermissionsExt;
        let home = gpg_home(dir);
        gpg(
            &home,
            &[
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Kiln Repo Test <kiln-repo-test@example.invalid>",
                "rsa3072",
                "sign",
                "never",
            ],
        )
        .assert_ok();
        let listing = gpg(&home, &["--with-colons", "--list-secret-keys"]).assert_ok();
        let fprs = colon_fprs(&listing.stdout);
        assert_eq!(fprs.len(), 1, "one secret key expected: {}", listing.stdout);
        let fpr = fprs[0].clone();
        let secret = gpg(
            &home,
            &[
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--armor",
                "--export-secret-keys",
                &fpr,
            ],
        )
        .assert_ok()
        .stdout;
        assert!(
            secret.contains("BEGIN PGP PRIVATE KEY BLOCK"),
            "no armored secret key exported: {secret}"
        );
        let secret_file = dir.join("kiln-signing-key.asc");
        fs::write(&secret_file, &secret).unwrap();
        fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).unwrap();
        GpgKey {
            home,
            fpr,
            secret_file,
        }
    }

    /// The short key id rpm prints (last 8 hex digits, lower case).
    pub fn short_id(&self) -> String {
        self.fpr[self.fpr.len() - 8..].to_lowercase()
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        kill_gpg_agents_under(&self.home);
    }
}

/// Verifies a detached signature with gpg against only `pubkey` (in a
/// fresh keyring). Returns gpg's status lines on success; panics otherwise.
pub fn gpg_verify(pubkey: &Path, sig: &Path, data: &Path, scratch: &Path) -> String {
    let home = gpg_home(scratch);
    let imp = gpg(&home, &["--import", pubkey.to_str().unwrap()]);
    let ver = gpg(
        &home,
        &[
            "--status-fd",
            "1",
            "--verify",
            sig.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
    );
    kill_gpg_agents_under(&home);
    imp.assert_ok();
    assert!(
        ver.success() && ver.stdout.contains("GOODSIG"),
        "gpg --verify {} {} against {} failed (exit {:?}):\n{}\n{}",
        sig.display(),
        data.display(),
        pubkey.display(),
        ver.status.code(),
        ver.stdout,
        ver.stderr
    );
    ver.stdout
}
