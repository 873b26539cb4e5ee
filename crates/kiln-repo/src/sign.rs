//! Signing with gpg and rpmsign: packages before they enter a repository,
//! and a detached armored signature of `repomd.xml`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::RepoError;

/// A target's signing key, imported into a GnuPG home of its own.
#[derive(Debug, Clone)]
pub struct Signer {
    gnupghome: PathBuf,
    pub fingerprint: String,
}

fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>, RepoError> {
    let out = kiln_core::child::die_with_parent(cmd)
        .output()
        .map_err(|e| RepoError::Tool(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(RepoError::Tool(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

impl Signer {
    /// Import the armored secret key `key` into `gnupghome` (created 0700)
    /// and write the public key, armored, to `pubkey_out`.
    pub fn setup(key: &Path, gnupghome: &Path, pubkey_out: &Path) -> Result<Signer, RepoError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(key)
            .map_err(|e| RepoError::Config(format!("sign_key {}: {e}", key.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(RepoError::Config(format!(
                "sign_key {} must not be readable by group or others (chmod 600)",
                key.display()
            )));
        }
        std::fs::create_dir_all(gnupghome).map_err(RepoError::io(gnupghome))?;
        std::fs::set_permissions(gnupghome, std::fs::Permissions::from_mode(0o700))
            .map_err(RepoError::io(gnupghome))?;
        let gpg = |args: &[&str]| {
            let mut c = Command::new("gpg");
            c.arg("--homedir")
                .arg(gnupghome)
                .args(["--batch", "--yes"])
                .args(args);
            c
        };
        run(
            gpg(&["--import"]).arg(key),
            &format!("importing {}", key.display()),
        )?;
        let listing = run(
            &mut gpg(&["--with-colons", "--list-secret-keys"]),
            "listing the signing key",
        )?;
        let fingerprint = String::from_utf8_lossy(&listing)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .filter(|f| !f.is_empty())
            .ok_or_else(|| RepoError::Config(format!("{} holds no secret key", key.display())))?;
        let public = run(
            &mut gpg(&["--armor", "--export", &fingerprint]),
            "exporting the public key",
        )?;
        if let Some(d) = pubkey_out.parent() {
            std::fs::create_dir_all(d).map_err(RepoError::io(d))?;
        }
        crate::publish::write_atomic(pubkey_out, &public)?;
        Ok(Signer {
            gnupghome: gnupghome.to_path_buf(),
            fingerprint,
        })
    }

    /// Sign an rpm in place.
    pub fn sign_rpm(&self, rpm: &Path) -> Result<(), RepoError> {
        run(
            Command::new("rpmsign")
                .arg("--addsign")
                .arg("--define")
                .arg(format!("_gpg_name {}", self.fingerprint))
                .arg("--define")
                .arg("__gpg /usr/bin/gpg")
                .arg("--define")
                .arg(format!("_gpg_path {}", self.gnupghome.display()))
                .env("GNUPGHOME", &self.gnupghome)
                .arg(rpm),
            &format!("signing {}", rpm.display()),
        )
        .map(|_| ())
    }

    /// Detached armored signature of `file`, written to `out`.
    pub fn sign_detached(&self, file: &Path, out: &Path) -> Result<(), RepoError> {
        run(
            Command::new("gpg")
                .arg("--homedir")
                .arg(&self.gnupghome)
                .args([
                    "--batch",
                    "--yes",
                    "--armor",
                    "--detach-sign",
                    "--local-user",
                ])
                .arg(&self.fingerprint)
                .arg("--output")
                .arg(out)
                .arg(file),
            &format!("signing {}", file.display()),
        )
        .map(|_| ())
    }
}
