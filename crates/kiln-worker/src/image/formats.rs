//! The image files made from a finished root, without loop mounts or any
//! feature only root has: every tool reads the root as a directory.
//!
//! Reproducibility: before any format, every time in the root is clamped
//! to `SOURCE_DATE_EPOCH` (the newest installed package's build time), and
//! every format gets the entries in sorted order or an order of its own
//! that does not depend on the host:
//! - `tar.zst`: GNU tar with `--sort=name`, pax headers without atime,
//!   ctime or the PID in their names, numeric owners, `--mtime`/
//!   `--clamp-mtime`, then `zstd -T1` (one worker: the same bytes on any
//!   host). Reproducible.
//! - `cpio`: the sorted list from the walk, `cpio -H newc --reproducible`.
//!   Reproducible.
//! - `squashfs`: `mksquashfs -reproducible -mkfs-time`; reproducible.
//! - `ext4`: `mkfs.ext4 -d` with a UUID and a directory hash seed derived
//!   from the build id, `E2FSPROGS_FAKE_TIME` and `SOURCE_DATE_EPOCH`.
//!   mke2fs copies the files' change times (which no tool can set) and
//!   walks directories in the host filesystem's order: not byte for byte
//!   reproducible.
//! - `qcow2`: `qemu-img convert` of the raw ext4 image: as reproducible as
//!   that.
//! - `erofs`: `mkfs.erofs -T -U`.
//!
//! Owners are kept as dnf installed them (numeric ids): the worker runs
//! dnf as root, so the root holds the packages' real owners (no
//! `--owner=0`/`-all-root`, which would give every file to root).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kiln_core::image::ImageFormat;

use super::sandbox::Stage;

/// What a format is made from.
pub struct FormatInput<'a> {
    pub root: &'a Path,
    pub name: &'a str,
    pub epoch: i64,
    pub build_id: u64,
    /// The sorted list of the root's entries (`./x`, NUL-terminated), for
    /// cpio.
    pub list: &'a Path,
    /// Bytes of a filesystem image.
    pub size: u64,
    /// Inodes a filesystem image needs at least.
    pub inodes: u64,
    /// The raw ext4 image (made for qcow2 when the recipe has no ext4).
    pub raw_ext4: &'a Path,
    /// Threads a tool may use.
    pub threads: usize,
}

/// A UUID derived from the build id, the image's name and a purpose.
pub fn derived_uuid(build_id: u64, name: &str, purpose: &str) -> String {
    let h = kiln_core::fsutil::sha256_bytes(
        format!("kiln-image {purpose} {build_id} {name}").as_bytes(),
    );
    let mut b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    // Version 4 and the RFC 4122 variant, as a random one would have.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// The commands that make `format` into `out` (run in the root's
/// directory; the last stage's output is `out` when `to_stdout`).
pub struct Plan {
    pub stages: Vec<Stage>,
    /// The last stage writes the file on its standard output.
    pub to_stdout: bool,
    /// Made into a file of the image's size first (mkfs.ext4).
    pub sized_file: bool,
    /// A stdin file for the first stage (cpio's list).
    pub stdin: Option<PathBuf>,
}

/// How to make `format` at `out`.
pub fn plan(format: ImageFormat, inp: &FormatInput<'_>, out: &Path) -> Plan {
    let epoch = inp.epoch.to_string();
    let sde = |s: &mut Stage| {
        s.env.push((os("SOURCE_DATE_EPOCH"), os(epoch.clone())));
    };
    match format {
        ImageFormat::TarZst => {
            let mut tar = Stage::new([
                os("tar"),
                os("--create"),
                os("--file=-"),
                os("--directory"),
                inp.root.as_os_str().to_owned(),
                os("--sort=name"),
                os("--format=pax"),
                os("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"),
                os(format!("--mtime=@{epoch}")),
                os("--clamp-mtime"),
                os("--numeric-owner"),
                os("--xattrs"),
                os("--xattrs-include=security.capability"),
                os("--one-file-system"),
                os("."),
            ]);
            sde(&mut tar);
            let zstd = Stage::new(["zstd", "-q", "-T1", "-3", "-c"]);
            Plan {
                stages: vec![tar, zstd],
                to_stdout: true,
                sized_file: false,
                stdin: None,
            }
        }
        ImageFormat::Cpio => Plan {
            stages: vec![Stage::new([
                "cpio",
                "--quiet",
                "--create",
                "--format=newc",
                "--reproducible",
                "--null",
            ])],
            to_stdout: true,
            sized_file: false,
            stdin: Some(inp.list.to_path_buf()),
        },
        ImageFormat::Squashfs => {
            let s = Stage::new([
                os("mksquashfs"),
                inp.root.as_os_str().to_owned(),
                out.as_os_str().to_owned(),
                os("-noappend"),
                os("-no-progress"),
                os("-comp"),
                os("zstd"),
                os("-Xcompression-level"),
                os("3"),
                os("-reproducible"),
                os("-mkfs-time"),
                os(epoch.clone()),
                os("-processors"),
                os(inp.threads.max(1).to_string()),
            ]);
            // No SOURCE_DATE_EPOCH: mksquashfs refuses it beside -mkfs-time
            // (and would set every file's time; they are clamped already).
            Plan {
                stages: vec![s],
                to_stdout: false,
                sized_file: false,
                stdin: None,
            }
        }
        ImageFormat::Ext4 | ImageFormat::Qcow2 => {
            let target = if format == ImageFormat::Ext4 {
                out
            } else {
                inp.raw_ext4
            };
            let label: String = inp.name.chars().take(16).collect();
            let mut mkfs = Stage::new([
                os("mkfs.ext4"),
                os("-q"),
                os("-F"),
                os("-t"),
                os("ext4"),
                os("-b"),
                os("4096"),
                os("-m"),
                os("0"),
                os("-N"),
                os(inp.inodes.to_string()),
                os("-L"),
                os(label),
                os("-U"),
                os(derived_uuid(inp.build_id, inp.name, "fs-uuid")),
                os("-E"),
                os(format!(
                    "hash_seed={},root_owner=0:0,nodiscard",
                    derived_uuid(inp.build_id, inp.name, "hash-seed")
                )),
                os("-d"),
                inp.root.as_os_str().to_owned(),
                target.as_os_str().to_owned(),
            ]);
            sde(&mut mkfs);
            mkfs.env
                .push((os("E2FSPROGS_FAKE_TIME"), os(epoch.clone())));
            let mut stages = vec![mkfs];
            if format == ImageFormat::Qcow2 {
                stages.push(Stage::new([
                    os("qemu-img"),
                    os("convert"),
                    os("-q"),
                    os("-f"),
                    os("raw"),
                    os("-O"),
                    os("qcow2"),
                    inp.raw_ext4.as_os_str().to_owned(),
                    out.as_os_str().to_owned(),
                ]));
            }
            Plan {
                stages,
                to_stdout: false,
                sized_file: true,
                stdin: None,
            }
        }
        ImageFormat::Erofs => {
            let mut s = Stage::new([
                os("mkfs.erofs"),
                os("-T"),
                os(epoch.clone()),
                os("-U"),
                os(derived_uuid(inp.build_id, inp.name, "fs-uuid")),
                os("-zlz4hc"),
                out.as_os_str().to_owned(),
                inp.root.as_os_str().to_owned(),
            ]);
            sde(&mut s);
            Plan {
                stages: vec![s],
                to_stdout: false,
                sized_file: false,
                stdin: None,
            }
        }
    }
}

/// How a tool says its version (for the manifest).
pub fn version_argv(tool: &str) -> Vec<&'static str> {
    match tool {
        "mkfs.ext4" => vec!["mkfs.ext4", "-V"],
        "mksquashfs" => vec!["mksquashfs", "-version"],
        "mkfs.erofs" => vec!["mkfs.erofs", "-V"],
        "tar" => vec!["tar", "--version"],
        "zstd" => vec!["zstd", "--version"],
        "cpio" => vec!["cpio", "--version"],
        "qemu-img" => vec!["qemu-img", "--version"],
        "dnf" => vec!["dnf", "--version"],
        "rpm" => vec!["rpm", "--version"],
        "bwrap" => vec!["bwrap", "--version"],
        "qemu-system-x86_64" => vec!["qemu-system-x86_64", "--version"],
        "qemu-system-aarch64" => vec!["qemu-system-aarch64", "--version"],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_follow_the_build_id() {
        let a = derived_uuid(7, "edge", "fs-uuid");
        assert_eq!(a, derived_uuid(7, "edge", "fs-uuid"));
        assert_ne!(a, derived_uuid(8, "edge", "fs-uuid"));
        assert_ne!(a, derived_uuid(7, "edge", "hash-seed"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
