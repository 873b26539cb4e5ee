//! `kiln bench-release`: the time of a promotion of a 1 GiB image
//! (issue 12, BENCHMARKS.md), in this process: the release tree made the
//! way the master makes it (`kiln_master::release::place`: hard links into
//! a `.tmp-` directory, `SHA256SUMS` from the recorded sha256, its detached
//! signature with a key made for the run, fsync, rename; then `latest`
//! switched). The database commit that follows on the master (one row) is
//! not included. The image file's sha256 is computed once before timing,
//! as the intake did.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kiln_core::layout::Layout;
use kiln_master::release::{place, switch_latest, Source};

#[derive(Args)]
pub struct BenchReleaseArgs {
    /// Size of the image file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Make the image file sparse (default: written out).
    #[arg(long)]
    sparse: bool,
    /// Skip the signature (no gpg).
    #[arg(long)]
    unsigned: bool,
    /// Promotions measured.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Work directory (default: a temporary one under /var/tmp).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn gpg(home: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args)
        .output()
        .context("running gpg")?;
    if !out.status.success() {
        bail!("gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

pub async fn bench_release(a: BenchReleaseArgs) -> anyhow::Result<i32> {
    let base = a
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp"));
    let root_buf = base.join(format!(
        "kiln-bench-release-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::create_dir_all(&root_buf)?;
    let r = run(&a, &root_buf);
    // Stop the agents gpg started for the run's homes.
    for home in [
        root_buf.join("keygen"),
        Layout::new(root_buf.join("data")).gnupg("bench"),
    ] {
        if home.is_dir() {
            let _ = std::process::Command::new("gpgconf")
                .arg("--homedir")
                .arg(&home)
                .args(["--kill", "gpg-agent"])
                .status();
        }
    }
    let _ = std::fs::remove_dir_all(&root_buf);
    r
}

fn run(a: &BenchReleaseArgs, root: &Path) -> anyhow::Result<i32> {
    let layout = Layout::new(root.join("data"));
    let img_dir = layout.image_files("bench-img", 1, "x86_64");
    std::fs::create_dir_all(&img_dir)?;
    let img = img_dir.join("bench-img.ext4");
    let size = a.size_mib << 20;
    let t = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&img)?;
        if a.sparse {
            f.set_len(size)?;
        } else {
            let chunk = vec![0x5au8; 1 << 20];
            for _ in 0..a.size_mib {
                f.write_all(&chunk)?;
            }
        }
        f.sync_all()?;
    }
    let out = std::process::Command::new("sha256sum")
        .arg(&img)
        .output()
        .context("running sha256sum")?;
    let sha = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let manifest = img_dir.join("manifest.json");
    std::fs::write(&manifest, b"{\"packages\": []}\n")?;
    let (msha, msize) = kiln_core::fsutil::sha256_file(&manifest)?;
    eprintln!(
        "made a {} MiB {} image in {:.1?} (not timed)",
        a.size_mib,
        if a.sparse { "sparse" } else { "written" },
        t.elapsed()
    );
    let signer = if a.unsigned {
        None
    } else {
        let home = root.join("keygen");
        std::fs::create_dir_all(&home)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
        gpg(
            &home,
            &[
                "--quick-gen-key",
                "Kiln bench <bench@kiln.invalid>",
                "ed25519",
                "sign",
                "never",
            ],
        )?;
        let key = gpg(&home, &["--armor", "--export-secret-keys"])?;
        let key_file = root.join("sign.asc");
        kiln_core::fsutil::write_atomic(&key_file, &key, 0o600)?;
        Some(kiln_repo::Signer::setup(
            &key_file,
            &layout.gnupg("bench"),
            &layout.pubkey("bench"),
        )?)
    };
    let files = vec![
        Source {
            src: img.clone(),
            path: "bench-img.ext4".into(),
            size,
            sha256: sha,
        },
        Source {
            src: manifest,
            path: "manifest.json".into(),
            size: msize,
            sha256: msha,
        },
    ];
    let chan = layout.release_channel("bench", "stable");
    let mut times: Vec<Duration> = Vec::new();
    for i in 0..a.samples.max(1) {
        let version = format!("bench-img-20261129.{}", i + 1);
        let t = Instant::now();
        let copied = place(&chan, &version, &files, signer.as_ref())?;
        switch_latest(&chan, &version)?;
        let el = t.elapsed();
        use std::os::unix::fs::MetadataExt;
        let linked = std::fs::metadata(chan.join(&version).join("bench-img.ext4"))?.ino()
            == std::fs::metadata(&img)?.ino();
        println!(
            "promotion {}: {:.1} ms ({} copied, image {})",
            i + 1,
            el.as_secs_f64() * 1000.0,
            copied,
            if linked {
                "hard-linked: 0 bytes copied"
            } else {
                "COPIED"
            }
        );
        times.push(el);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "promotion of a {} MiB image ({}): median {:.1} ms, max {:.1} ms over {} runs (goal <= 1000 ms)",
        a.size_mib,
        if signer.is_some() { "signed" } else { "unsigned" },
        median.as_secs_f64() * 1000.0,
        times.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        times.len()
    );
    Ok(0)
}
