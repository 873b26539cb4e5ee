//! Image recipes (`[[image]]`): what an image is made of, checked before
//! anything is built, and the version rule of an image build.
//!
//! The recipe is plain data (serde, unknown keys refused): the master
//! reads it from its configuration or its database and sends it to a
//! worker, which builds it with `kiln_worker::image::build_image`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::{self, shown};

/// The largest filesystem image a recipe may ask for (1 TiB).
pub const MAX_IMAGE_SIZE: u64 = 1 << 40;
/// The longest boot test a recipe may ask for.
pub const MAX_BOOT_TIMEOUT: Duration = Duration::from_secs(3600);
/// A boot test's timeout when the recipe gives none.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// At most this many packages, files, commands.
const MAX_ITEMS: usize = 10_000;
/// A command or a file's content at most this long.
const MAX_TEXT: usize = 1 << 20;

/// One `[[image]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    /// The image's name: an identifier (it names the files and releases).
    pub name: String,
    /// The target whose published repositories the packages come from.
    pub target: String,
    /// Repositories besides the target's (base URLs; `$basearch` and
    /// `$releasever` expanded by the worker).
    #[serde(default)]
    pub repos: Vec<String>,
    /// The arches to build the image for (default: the target's).
    #[serde(default)]
    pub arches: Vec<String>,
    /// What `dnf install` is given.
    pub packages: Vec<String>,
    /// The files made from the root, in this order.
    pub formats: Vec<ImageFormat>,
    /// The size of a filesystem image (`ext4`, `qcow2`): `512M`, `2G`;
    /// default: what the root holds plus a quarter and 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Files written into the root after the packages: absolute path →
    /// content.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Shell commands run inside the root (sandboxed, no network), in order.
    #[serde(default)]
    pub post: Vec<String>,
    /// Shell commands run inside the root after `post`; any failure fails
    /// the image.
    #[serde(default)]
    pub test: Vec<String>,
    /// A boot test under qemu (TCG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootTest>,
    /// Build a new image when one of its packages is published.
    #[serde(default)]
    pub rebuild_on_publish: bool,
    /// The version of the image's builds; default `<name>-<YYYYMMDD>.<n>`
    /// ([`image_version`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `boot = { kernel, initrd, expect, timeout }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTest {
    /// The kernel: a path inside the image's root.
    pub kernel: String,
    /// The initramfs: a path inside the image's root; default: the image's
    /// own `cpio` format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The line (a substring of a line of the serial console) that passes
    /// the test.
    pub expect: String,
    /// `120s`, `5m`; default 120 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// An image file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ImageFormat {
    /// A tarball (sorted entries, clamped times) compressed with zstd.
    #[serde(rename = "tar.zst")]
    TarZst,
    /// A raw ext4 filesystem (`mkfs.ext4 -d`).
    #[serde(rename = "ext4")]
    Ext4,
    /// A squashfs filesystem.
    #[serde(rename = "squashfs")]
    Squashfs,
    /// The ext4 filesystem as a qcow2 disk image.
    #[serde(rename = "qcow2")]
    Qcow2,
    /// A `newc` cpio archive (an initramfs).
    #[serde(rename = "cpio")]
    Cpio,
    /// An EROFS filesystem (needs `mkfs.erofs` on the worker).
    #[serde(rename = "erofs")]
    Erofs,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 6] = [
        ImageFormat::TarZst,
        ImageFormat::Ext4,
        ImageFormat::Squashfs,
        ImageFormat::Qcow2,
        ImageFormat::Cpio,
        ImageFormat::Erofs,
    ];

    /// The name in a recipe, and the extension of the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::TarZst => "tar.zst",
            ImageFormat::Ext4 => "ext4",
            ImageFormat::Squashfs => "squashfs",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Cpio => "cpio",
            ImageFormat::Erofs => "erofs",
        }
    }

    /// The tools the worker runs to make it.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            ImageFormat::TarZst => &["tar", "zstd"],
            ImageFormat::Ext4 => &["mkfs.ext4"],
            ImageFormat::Squashfs => &["mksquashfs"],
            ImageFormat::Qcow2 => &["mkfs.ext4", "qemu-img"],
            ImageFormat::Cpio => &["cpio"],
            ImageFormat::Erofs => &["mkfs.erofs"],
        }
    }

    /// Whether it is a filesystem of a fixed size (`size` applies).
    pub fn sized(self) -> bool {
        matches!(self, ImageFormat::Ext4 | ImageFormat::Qcow2)
    }

    /// The format named `s`, if known.
    pub fn parse(s: &str) -> Option<ImageFormat> {
        ImageFormat::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a recipe is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipeError {
    #[error("image {image}: {source}")]
    Name {
        image: String,
        #[source]
        source: names::NameError,
    },
    #[error("image {image}: {field}: {why}")]
    Field {
        image: String,
        field: String,
        why: String,
    },
}

/// What a checked recipe asks for, in the units the worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The size of a filesystem image in bytes, when the recipe gives one.
    pub size: Option<u64>,
    /// The boot test's timeout.
    pub boot_timeout: Option<Duration>,
}

impl ImageRecipe {
    fn field(&self, field: impl Into<String>, why: impl Into<String>) -> RecipeError {
        RecipeError::Field {
            image: shown(&self.name),
            field: field.into(),
            why: why.into(),
        }
    }

    /// Check every field; the first problem is the error.
    pub fn check(&self) -> Result<Checked, RecipeError> {
        let named = |source| RecipeError::Name {
            image: shown(&self.name),
            source,
        };
        names::check_ident("image", &self.name).map_err(named)?;
        names::check_ident("target", &self.target).map_err(named)?;
        for (i, r) in self.repos.iter().enumerate() {
            check_repo_url(r).map_err(|why| self.field(format!("repos[{i}]"), why))?;
        }
        if !self.arches.is_empty() {
            names::check_arch_list("arches", &self.arches).map_err(named)?;
            if let Some(a) = self.arches.iter().find(|a| a.as_str() == "noarch") {
                return Err(self.field("arches", format!("{} is not an image arch", shown(a))));
            }
        }
        if self.packages.is_empty() {
            return Err(self.field("packages", "lists no package"));
        }
        if self.packages.len() > MAX_ITEMS {
            return Err(self.field("packages", format!("more than {MAX_ITEMS}")));
        }
        for (i, p) in self.packages.iter().enumerate() {
            check_package(p).map_err(|why| self.field(format!("packages[{i}]"), why))?;
        }
        if self.formats.is_empty() {
            return Err(self.field("formats", "lists no format"));
        }
        let mut seen = Vec::new();
        for f in &self.formats {
            if seen.contains(f) {
                return Err(self.field("formats", format!("{f} is listed twice")));
            }
            seen.push(*f);
        }
        let size = match &self.size {
            Some(s) => Some(parse_size(s).map_err(|why| self.field("size", why))?),
            None => None,
        };
        if self.files.len() > MAX_ITEMS {
            return Err(self.field("files", format!("more than {MAX_ITEMS}")));
        }
        for (path, content) in &self.files {
            check_image_path(path).map_err(|why| self.field(format!("files[{path:?}]"), why))?;
            if content.len() > MAX_TEXT {
                return Err(self.field(
                    format!("files[{path:?}]"),
                    format!("is longer than {MAX_TEXT} bytes"),
                ));
            }
        }
        for (what, list) in [("post", &self.post), ("test", &self.test)] {
            if list.len() > MAX_ITEMS {
                return Err(self.field(what, format!("more than {MAX_ITEMS} commands")));
            }
            for (i, c) in list.iter().enumerate() {
                check_command(c).map_err(|why| self.field(format!("{what}[{i}]"), why))?;
            }
        }
        let boot_timeout = match &self.boot {
            None => None,
            Some(b) => {
                check_image_path(&b.kernel).map_err(|why| self.field("boot.kernel", why))?;
                match &b.initrd {
                    Some(i) => check_image_path(i).map_err(|why| self.field("boot.initrd", why))?,
                    None if !self.formats.contains(&ImageFormat::Cpio) => {
                        return Err(self.field(
                            "boot.initrd",
                            "is needed when the image has no cpio format (the initramfs booted)",
                        ))
                    }
                    None => {}
                }
                if b.expect.trim().is_empty() {
                    return Err(self.field("boot.expect", "is empty"));
                }
                if b.expect.len() > 256 || b.expect.chars().any(char::is_control) {
                    return Err(self.field(
                        "boot.expect",
                        "must be one line of at most 256 bytes without control characters",
                    ));
                }
                Some(match &b.timeout {
                    Some(t) => parse_timeout(t).map_err(|why| self.field("boot.timeout", why))?,
                    None => DEFAULT_BOOT_TIMEOUT,
                })
            }
        };
        if let Some(v) = &self.version {
            names::check_ident("version", v).map_err(named)?;
        }
        Ok(Checked { size, boot_timeout })
    }
}

/// A repository base URL: http, https or file, no whitespace or control
/// characters (it goes into a dnf configuration file, one line).
pub fn check_repo_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file:///")) {
        return Err(format!(
            "{} is not an http://, https:// or file:/// URL",
            shown(url)
        ));
    }
    if url.len() > 2048 {
        return Err("is longer than 2048 bytes".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{} contains whitespace or a control character",
            shown(url)
        ));
    }
    Ok(())
}

/// A package spec for `dnf install`: not empty, not an option, one line.
fn check_package(p: &str) -> Result<(), String> {
    if p.trim().is_empty() {
        return Err("is empty".into());
    }
    if p.starts_with('-') {
        return Err(format!("{} looks like an option, not a package", shown(p)));
    }
    if p.len() > 512 || p.chars().any(char::is_control) {
        return Err(format!(
            "{} is not a package (control characters, or longer than 512 bytes)",
            shown(p)
        ));
    }
    Ok(())
}

fn check_command(c: &str) -> Result<(), String> {
    if c.trim().is_empty() {
        return Err("is empty".into());
    }
    if c.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if c.len() > MAX_TEXT {
        return Err(format!("is longer than {MAX_TEXT} bytes"));
    }
    Ok(())
}

/// A path inside the image: absolute, not the root itself, no `.` or `..`
/// component, no empty component, no NUL or control character.
pub fn check_image_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{} is not an absolute path", shown(p)));
    }
    if p.len() > 4096 {
        return Err("is longer than 4096 bytes".into());
    }
    if p.chars().any(char::is_control) {
        return Err(format!("{} contains a control character", shown(p)));
    }
    let parts: Vec<&str> = p[1..].split('/').collect();
    if parts.iter().all(|c| c.is_empty()) {
        return Err("is the root directory itself".into());
    }
    for c in &parts {
        match *c {
            "" => {
                return Err(format!(
                    "{} has an empty component (`//` or a trailing /)",
                    shown(p)
                ))
            }
            "." | ".." => return Err(format!("{} has a {c:?} component", shown(p))),
            c if c.len() > 255 => {
                return Err(format!("{} has a component past 255 bytes", shown(p)))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `512M`, `2G`, `1024K`, `1T` (binary units), or a number of bytes;
/// between 1 MiB and [`MAX_IMAGE_SIZE`].
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{} is not a size (512M, 2G, 1024K: binary units)",
            shown(text)
        )
    };
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes < 1 << 20 {
        return Err(format!("{} is less than 1M", shown(text)));
    }
    if bytes > MAX_IMAGE_SIZE {
        return Err(format!("{} is more than 1T", shown(text)));
    }
    Ok(bytes)
}

/// `120s`, `5m`, `1h`, or a number of seconds; more than zero, at most an
/// hour.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("{} is not a duration (120s, 5m, 1h)", shown(text));
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(bad)?;
    if secs == 0 {
        return Err("must be more than zero".into());
    }
    let d = Duration::from_secs(secs);
    if d > MAX_BOOT_TIMEOUT {
        return Err(format!("{} is more than an hour", shown(text)));
    }
    Ok(d)
}

/// The version of an image build: `<name>-<YYYYMMDD>.<n>` (the UTC date of
/// `unix`).
pub fn image_version(name: &str, unix: i64, n: u32) -> String {
    let (y, m, d, _, _, _) = crate::time::utc(unix);
    format!("{name}-{y:04}{m:02}{d:02}.{n}")
}

/// The next version of `name` on the UTC day of `unix`, after the versions
/// already given (`existing`): `.1` on a new day, else one more than the
/// highest `n` of that day.
pub fn next_image_version<'a>(
    name: &str,
    unix: i64,
    existing: impl IntoIterator<Item = &'a str>,
) -> String {
    let prefix = image_version(name, unix, 0);
    let prefix = prefix.trim_end_matches('0');
    let highest = existing
        .into_iter()
        .filter_map(|v| v.strip_prefix(prefix))
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    image_version(name, unix, highest.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> ImageRecipe {
        serde_json::from_value(serde_json::json!({
            "name": "edge-rootfs",
            "target": "el9",
            "repos": ["https://mirror.example.org/el9/BaseOS/$basearch/os/"],
            "arches": ["x86_64"],
            "packages": ["bash", "coreutils", "kf-hello-noarch"],
            "formats": ["tar.zst", "ext4", "squashfs", "qcow2", "cpio"],
            "size": "512M",
            "files": { "/etc/motd": "Built by Kiln\n" },
            "post": ["systemctl enable foo.service"],
            "test": ["rpm -q kf-hello-noarch", "/usr/bin/hello"],
            "boot": { "kernel": "/boot/vmlinuz", "initrd": "/boot/initramfs.img",
                      "expect": "KILN-BOOT-OK", "timeout": "120s" },
            "rebuild_on_publish": false
        }))
        .unwrap()
    }

    fn why(r: &ImageRecipe) -> String {
        r.check().unwrap_err().to_string()
    }

    #[test]
    fn the_issues_recipe_is_accepted() {
        let r = recipe();
        let c = r.check().unwrap();
        assert_eq!(c.size, Some(512 << 20));
        assert_eq!(c.boot_timeout, Some(Duration::from_secs(120)));
        assert_eq!(r.formats[0], ImageFormat::TarZst);
        // It goes through JSON unchanged (the master sends it as it is).
        let back: ImageRecipe = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_keys_and_formats_are_refused() {
        let mut v = serde_json::to_value(recipe()).unwrap();
        v["colour"] = "blue".into();
        let e = serde_json::from_value::<ImageRecipe>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let mut v = serde_json::to_value(recipe()).unwrap();
        v["formats"] = serde_json::json!(["zip"]);
        let e = serde_json::from_value::<ImageRecipe>(v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown variant `zip`") && e.contains("tar.zst"),
            "{e}"
        );
        let mut v = serde_json::to_value(recipe()).unwrap();
        v["boot"]["memory"] = "1G".into();
        assert!(serde_json::from_value::<ImageRecipe>(v).is_err());
    }

    #[test]
    fn fields_are_checked_with_precise_errors() {
        let mut r = recipe();
        r.name = "../etc".into();
        assert!(why(&r).contains("image name"), "{}", why(&r));
        let mut r = recipe();
        r.packages.push("--installroot=/".into());
        assert!(why(&r).contains("packages[3]") && why(&r).contains("looks like an option"));
        let mut r = recipe();
        r.packages.clear();
        assert!(why(&r).contains("packages: lists no package"));
        let mut r = recipe();
        r.files.insert("etc/x".into(), String::new());
        assert!(why(&r).contains("not an absolute path"), "{}", why(&r));
        let mut r = recipe();
        r.files.insert("/etc/../../x".into(), String::new());
        assert!(why(&r).contains("\"..\" component"), "{}", why(&r));
        let mut r = recipe();
        r.files.insert("/".into(), String::new());
        assert!(why(&r).contains("root directory"), "{}", why(&r));
        let mut r = recipe();
        r.size = Some("12Q".into());
        assert!(
            why(&r).contains("size: \"12Q\" is not a size"),
            "{}",
            why(&r)
        );
        let mut r = recipe();
        r.boot.as_mut().unwrap().timeout = Some("2 weeks".into());
        assert!(why(&r).contains("boot.timeout"), "{}", why(&r));
        let mut r = recipe();
        r.boot.as_mut().unwrap().initrd = None;
        r.formats = vec![ImageFormat::Ext4];
        assert!(why(&r).contains("boot.initrd"), "{}", why(&r));
        let mut r = recipe();
        r.formats.push(ImageFormat::Ext4);
        assert!(why(&r).contains("ext4 is listed twice"), "{}", why(&r));
        let mut r = recipe();
        r.repos = vec!["ftp://x/".into()];
        assert!(why(&r).contains("repos[0]"), "{}", why(&r));
        let mut r = recipe();
        r.arches = vec!["noarch".into()];
        assert!(why(&r).contains("not an image arch"), "{}", why(&r));
        let mut r = recipe();
        r.test.push(" ".into());
        assert!(why(&r).contains("test[2]: is empty"), "{}", why(&r));
    }

    #[test]
    fn sizes_and_timeouts() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2048K"), Ok(2 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("1K").is_err());
        assert!(parse_size("2P").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_timeout("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("2h").is_err());
        assert!(parse_timeout("1.5s").is_err());
    }

    #[test]
    fn versions_follow_the_day() {
        // 2026-11-29 12:00:00 UTC.
        let t = 1_795_953_600;
        assert_eq!(image_version("edge", t, 1), "edge-20261129.1");
        assert_eq!(next_image_version("edge", t, []), "edge-20261129.1");
        assert_eq!(
            next_image_version(
                "edge",
                t,
                [
                    "edge-20261129.1",
                    "edge-20261129.12",
                    "edge-20261128.40",
                    "edge2-20261129.99"
                ]
            ),
            "edge-20261129.13"
        );
    }

    #[test]
    fn formats_have_names_and_tools() {
        for f in ImageFormat::ALL {
            assert_eq!(ImageFormat::parse(f.as_str()), Some(f));
            assert!(!f.tools().is_empty());
        }
        assert_eq!(ImageFormat::Erofs.tools(), ["mkfs.erofs"]);
    }
}
