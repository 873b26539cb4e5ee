//! The upstream tarball of an srpm job (`git archive`, or a checkout with
//! its submodules packed by tar, both the same bytes for the same commit)
//! and the SRPM (`rpmbuild -bs` in the sandbox).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kiln_core::git::{self as kgit};
use kiln_core::names::printable;

use super::spec::SpecFacts;
use super::{failed, mirror, Job, Stop, SOURCES, SPECS};
use crate::backend::{self, make_private_dir, Invocation};

impl Job<'_> {
    /// The upstream tarball `source0` in `SOURCES`: `git archive` of
    /// `commit` under `NAME-VERSION/`, compressed as its name says, made
    /// beside the build directory and renamed into place (never written
    /// through a link the packaging tree holds).
    pub(super) async fn tarball(
        &self,
        mirror: &Path,
        commit: &str,
        facts: &SpecFacts,
        source0: &str,
    ) -> Result<(), Stop> {
        let Some(format) = kgit::archive_format(source0) else {
            return failed(format!(
                "Source0 {} is no archive Kiln makes (.tar.gz, .tgz, .tar.xz, .tar.bz2, .tar.zst, \
                 .tar or .zip)",
                printable(source0)
            ));
        };
        let top = format!("{}-{}", facts.name, facts.version);
        if kiln_core::names::check_file_name(&top).is_err() {
            return failed(format!("{} is not a plain folder name", printable(&top)));
        }
        let tmp = self.dir.join("tarball");
        make_private_dir(&tmp).map_err(kiln_core::error::io_err("making the tarball's folder"))?;
        let zip = format == kgit::ArchiveFormat::Zip;
        let mut file = tmp.join(if zip { "src.zip" } else { "src.tar" });
        if self.req.source.submodules {
            if zip {
                return failed("a .zip Source0 with submodules is not supported (use a tarball)");
            }
            self.tar_with_submodules(mirror, commit, &top, &file)
                .await?;
        } else {
            let (fmt, prefix, out) = (
                if zip { "--format=zip" } else { "--format=tar" },
                format!("--prefix={top}/"),
                format!("--output={}", file.display()),
            );
            self.git()?
                .run(
                    &self.ctx,
                    mirror,
                    &["archive", fmt, &prefix, &out, commit],
                    || {
                        format!(
                            "making the upstream tarball of {}",
                            kgit::short_commit(commit)
                        )
                    },
                )
                .await?;
        }
        if let Some((argv, suffix)) = format.compressor() {
            let f = file.to_string_lossy().into_owned();
            let mut args: Vec<&str> = argv.to_vec();
            args.push(&f);
            self.host(&tmp, &args, "compressing the upstream tarball")
                .await?;
            let mut name = file.into_os_string();
            name.push(suffix);
            file = PathBuf::from(name);
        }
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let dst = self.build.join(SOURCES).join(source0);
        if let Err(e) = std::fs::rename(&file, &dst) {
            return failed(format!(
                "putting the upstream tarball in place as {}: {e} (the packaging tree has \
                 something of that name)",
                printable(source0)
            ));
        }
        self.ctx.log(&format!(
            "Source0 {}: upstream {commit} under {top}/ ({size} bytes)",
            printable(source0)
        ));
        Ok(())
    }

    /// Run a tool of the worker's (a compressor, tar) on files of the
    /// job's own, in `cwd`; the job fails with `what` when it does.
    async fn host(&self, cwd: &Path, argv: &[&str], what: &str) -> Result<(), Stop> {
        let inv = Invocation {
            argv: argv.iter().map(OsString::from).collect(),
            cwd: cwd.to_path_buf(),
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("LC_ALL".into(), "C".into()),
            ],
            clear_env: true,
            pid_namespace: false,
            overlay: None,
        };
        let (prog, args) = argv.split_first().unwrap_or((&"", &[]));
        let ran = self.ctx.run(&inv, &mirror::shown(prog, args)).await?;
        if ran.end != Some(0) {
            return Err(self.ctx.failed(what, &ran, prog));
        }
        self.ctx.write_output(&ran.text);
        Ok(())
    }

    /// Upstream's `commit` with its submodules (first level, each URL
    /// checked as the project's are; a file:// one only for a file://
    /// upstream) as a tar at `out`, under `top/`: a checkout in the job
    /// directory, packed by name order with the commit's date and owner 0
    /// on every entry, so the same commits give the same bytes.
    async fn tar_with_submodules(
        &self,
        mirror: &Path,
        commit: &str,
        top: &str,
        out: &Path,
    ) -> Result<(), Stop> {
        let git = self.git()?;
        let tree = self.dir.join("checkout");
        let (m, t) = (mirror.to_string_lossy(), tree.to_string_lossy());
        let url = &self.req.source.upstream_url;
        let short = kgit::short_commit(commit);
        let step = |what: &'static str| move || format!("{what} {short} with its submodules");
        git.run_in(
            &self.ctx,
            self.dir,
            &[
                "clone",
                "--quiet",
                "--shared",
                "--no-checkout",
                "--",
                &m,
                &t,
            ],
            step("checking out"),
        )
        .await?;
        // Relative submodule URLs are upstream's, not the mirror's.
        for args in [
            &["remote", "set-url", "origin", url.as_str()][..],
            &["checkout", "--quiet", "--detach", commit],
            &["submodule", "--quiet", "init"],
        ] {
            git.run_in(&self.ctx, &tree, args, step("checking out"))
                .await?;
        }
        let listed = git
            .raw_in(
                &self.ctx,
                &tree,
                &["config", "--get-regexp", r"^submodule\..*\.url$"],
            )
            .await?;
        let upstream_is_file = url.starts_with("file://");
        let text = String::from_utf8_lossy(&listed.text);
        let mut n = 0;
        for line in text.lines().filter(|_| listed.end == Some(0)) {
            let (key, sub_url) = line.split_once(' ').unwrap_or((line, ""));
            let name = key
                .strip_prefix("submodule.")
                .and_then(|k| k.strip_suffix(".url"))
                .unwrap_or(key);
            let checked = kgit::check_repo_url(sub_url)
                .map_err(|e| Stop::Failed(format!("submodule {}: {e}", printable(name))))?;
            if checked.scheme == kgit::Scheme::File && !upstream_is_file {
                return failed(format!(
                    "submodule {}: a file:// URL is refused for an upstream that is not file://",
                    printable(name)
                ));
            }
            n += 1;
        }
        if n > 0 {
            git.run_in(
                &self.ctx,
                &tree,
                &["submodule", "--quiet", "update"],
                step("fetching the submodules of"),
            )
            .await?;
        }
        self.ctx.log(&format!("{n} submodules checked out"));
        let time = git
            .run(
                &self.ctx,
                mirror,
                &["show", "-s", "--format=%ct", commit],
                step("reading the date of"),
            )
            .await?;
        let time: i64 = time.trim().parse().map_err(|_| {
            Stop::Failed(format!(
                "git gave no commit date for {commit}: {}",
                printable(time.trim())
            ))
        })?;
        let file = format!("--file={}", out.display());
        let mtime = format!("--mtime=@{time}");
        let transform = format!("--transform=s,^\\.,{top},S");
        let t = t.into_owned();
        self.host(
            self.dir,
            &[
                "tar",
                "--create",
                &file,
                "--format=gnu",
                "--sort=name",
                &mtime,
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mode=a+rX,u+w,go-w",
                "--exclude=.git",
                &transform,
                "-C",
                &t,
                ".",
            ],
            "packing upstream with its submodules",
        )
        .await?;
        crate::run::remove_job_dir(&tree);
        Ok(())
    }

    /// `rpmbuild -bs` of the spec copy, in the sandbox: the SRPM.
    pub(super) async fn rpmbuild(&self, spec: &str) -> Result<PathBuf, Stop> {
        let path = format!("/build/{SPECS}/{spec}");
        let defines = self.defines();
        let mut argv: Vec<&str> = vec!["rpmbuild", "-bs", "--nodeps"];
        argv.extend(defines.iter().map(String::as_str));
        argv.push(&path);
        let ran = self.sandboxed(&argv, true).await?;
        if ran.end != Some(0) {
            return Err(self.ctx.failed("rpmbuild -bs failed", &ran, "rpmbuild"));
        }
        self.ctx.write_output(&ran.text);
        let (found, refused) = backend::collect_packages(&self.build.join("topdir"));
        for r in refused.iter().take(20) {
            self.ctx.log(&format!("not taking {r}"));
        }
        let mut srpms = found
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".src.rpm"));
        match (srpms.next(), srpms.next()) {
            (Some(srpm), None) => {
                self.ctx.log(&format!(
                    "made {} from upstream {}{}",
                    srpm.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default(),
                    self.made.upstream_commit,
                    if self.made.packaging_commit.is_empty() {
                        String::new()
                    } else {
                        format!(" and packaging {}", self.made.packaging_commit)
                    }
                ));
                Ok(srpm)
            }
            (None, _) => failed("rpmbuild -bs made no source package"),
            (Some(_), Some(_)) => failed("rpmbuild -bs made more than one source package"),
        }
    }
}
