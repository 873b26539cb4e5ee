//! Bad submissions: each is refused with one clear `error:` line and a
//! non-zero exit, and nothing is stored (no build, no new file in DATA/cas/).

#[path = "../../../kiln-core/tests/fixtures/crafted.rs"]
mod crafted;

use crate::common::*;
use kiln_core::header::{self, Which};
use std::fs;
use std::path::Path;

/// Submits `file` with `extra` and checks the refusal: non-zero exit, one
/// `error:` line on stderr mentioning one of `keywords` (the file's own path
/// and name do not count), no build listed, nothing new in the store.
fn assert_refused(m: &Master, file: &Path, extra: &[&str], keywords: &[&str]) -> String {
    let cas = m.data.join("cas");
    let cas_before = files_under(&cas);
    let builds_before = m.builds();

    let mut args = vec!["submit", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push("--json");
    let out = m.cli(&args);
    let line = out.assert_error_line(&[]);
    let path = file.to_str().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    let what = line
        .trim_start_matches("error:")
        .replace(path, "")
        .replace(name, "")
        .to_lowercase();
    assert!(
        keywords.iter().any(|k| what.contains(&k.to_lowercase())),
        "the error should say what is wrong (one of {keywords:?}): {line:?}"
    );

    assert_eq!(
        m.builds(),
        builds_before,
        "a refused submit changed the build list"
    );
    assert_eq!(
        files_under(&cas),
        cas_before,
        "a refused submit left a file in {}",
        cas.display()
    );
    line
}

/// After a refusal, a good SRPM is still accepted: the refusal was about
/// the input, not a broken master.
fn assert_still_accepts(m: &Master) {
    let good = Pkg::noarch("bi-good").build_srpm(&m.scratch);
    let b = m.submit(&good, &[]);
    assert_eq!(jstr(&b, "package"), "bi-good");
    assert_eq!(m.builds().len(), 1);
    assert!(
        !files_under(&m.data.join("cas")).is_empty(),
        "an accepted SRPM is stored in DATA/cas/"
    );
}

#[test]
fn random_bytes_are_not_an_srpm() {
    let m = Master::start();
    let file = m.scratch.join("noise.src.rpm");
    fs::write(&file, random_bytes(4096)).unwrap();
    assert_refused(
        &m,
        &file,
        &[],
        &[
            "rpm",
            "lead",
            "magic",
            "header",
            "package",
            "invalid",
            "malformed",
            "corrupt",
            "not a",
        ],
    );
    assert_eq!(m.builds().len(), 0);
    assert_still_accepts(&m);
}

#[test]
fn a_truncated_srpm_is_refused() {
    let m = Master::start();
    let whole = Pkg::noarch("bi-whole").build_srpm(&m.scratch);
    let bytes = fs::read(&whole).unwrap();
    let file = m.scratch.join("half.src.rpm");
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(
        &m,
        &file,
        &[],
        &[
            "truncat",
            "short",
            "incomplete",
            "unexpected end",
            "eof",
            "end of",
            "size",
            "length",
            "corrupt",
            "malformed",
            "invalid",
            "header",
            "payload",
            "rpm",
        ],
    );
    assert_eq!(m.builds().len(), 0);
    assert_still_accepts(&m);
}

#[test]
fn an_unknown_target_is_refused() {
    let m = Master::start();
    let srpm = Pkg::noarch("bi-target").build_srpm(&m.scratch);
    assert_refused(
        &m,
        &srpm,
        &["--target", "nosuch-target"],
        &["nosuch-target"],
    );
    assert_eq!(m.builds().len(), 0);
    assert_still_accepts(&m);
}

#[test]
fn an_unknown_arch_is_refused() {
    let m = Master::start();
    let srpm = Pkg::c("bi-arch").build_srpm(&m.scratch);
    assert_refused(&m, &srpm, &["--arch", "vax"], &["vax"]);
    // Also when mixed with a good one: nothing is half-accepted.
    assert_refused(&m, &srpm, &["--arch", "x86_64,vax"], &["vax"]);
    assert_eq!(m.builds().len(), 0);
    assert_still_accepts(&m);
}

#[test]
fn an_oversized_upload_is_refused() {
    let m = Master::start_with(MasterOpts::default().arg("--max-upload", "1000"));
    let srpm = Pkg::noarch("bi-big").build_srpm(&m.scratch);
    let size = fs::metadata(&srpm).unwrap().len();
    assert!(
        size > 1000,
        "the test SRPM should exceed the limit ({size})"
    );
    assert_refused(
        &m,
        &srpm,
        &[],
        &[
            "too large",
            "too big",
            "exceed",
            "limit",
            "max",
            "size",
            "1000",
        ],
    );
    assert_eq!(m.builds().len(), 0);
}

/// Files left under DATA/uploads, DATA/tmp and DATA/cas.
fn leftovers(m: &Master) -> Vec<std::path::PathBuf> {
    ["uploads", "tmp", "cas"]
        .iter()
        .flat_map(|d| files_under(&m.data.join(d)))
        .collect()
}

#[test]
fn a_crafted_header_is_refused_and_the_master_lives() {
    let m = Master::start();
    let file = m.scratch.join("crafted.src.rpm");
    fs::write(&file, crafted::crafted_266()).unwrap();
    let line = assert_refused(&m, &file, &[], &["malformed rpm header"]);
    assert!(
        line.contains("4294967295 INT64 items"),
        "the error names the entry: {line}"
    );
    let health = curl(&[&format!("{}/healthz", m.api_url)], &m.scratch);
    assert_eq!(health.status, 200, "the master stopped answering");
    let pid = m.pid();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the master process is gone"
    );
    assert_eq!(
        leftovers(&m),
        Vec::<std::path::PathBuf>::new(),
        "files left behind"
    );
    assert_eq!(m.builds().len(), 0);
    assert_still_accepts(&m);
}

#[test]
fn an_srpm_with_a_corrupted_payload_is_refused_at_submit() {
    let m = Master::start();
    let good = Pkg::noarch("bi-corrupt").build_srpm(&m.scratch);
    let mut bytes = fs::read(&good).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x40;
    let file = m.scratch.join("corrupt.src.rpm");
    fs::write(&file, &bytes).unwrap();
    let line = assert_refused(&m, &file, &[], &["digest mismatch"]);
    assert!(
        line.contains("payload") && line.contains("corrupt"),
        "{line}"
    );
    assert_eq!(m.builds().len(), 0, "a corrupt SRPM was queued");
    assert_eq!(
        leftovers(&m),
        Vec::<std::path::PathBuf>::new(),
        "files left behind"
    );
    assert_still_accepts(&m);
}

/// Replace `from` by `to` (same length) in the main header and record the
/// header's new SHA-256 in the signature header: a package consistent but
/// for its content. (rpmbuild itself refuses such a Release in a spec, so
/// this is how such a package comes to exist.)
fn forge_main_header(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let h = header::parse_headers(data).expect("a good package");
    let mut out = data.to_vec();
    let main = h.main.range.clone();
    let at = main.start
        + data[main]
            .windows(from.len())
            .position(|w| w == from)
            .expect("the placeholder in the main header");
    out[at..at + to.len()].copy_from_slice(to);
    let h = header::parse_headers(&out).expect("the same layout");
    let sha = h.view(Which::Main).sha256();
    let sig = h.view(Which::Signature);
    let e = sig
        .find(header::RPMSIGTAG_SHA256)
        .expect("a header SHA-256");
    let at = h.signature.range.start + sig.store_offset() + e.offset as usize;
    out[at..at + 64].copy_from_slice(sha.as_bytes());
    out
}

#[test]
fn a_release_with_an_ansi_escape_or_a_bidi_override_is_refused() {
    let m = Master::start();
    let srpm = Pkg::noarch("bi-rel")
        .release("1ZZZZZ")
        .build_srpm(&m.scratch);
    let bytes = fs::read(&srpm).unwrap();
    for (i, (to, what)) in [("1\u{1b}[31m", "escape"), ("1ZZ\u{202e}", "bidirectional")]
        .iter()
        .enumerate()
    {
        let forged = forge_main_header(&bytes, b"1ZZZZZ", to.as_bytes());
        let file = m.scratch.join(format!("forged{i}.src.rpm"));
        fs::write(&file, &forged).unwrap();
        let line = assert_refused(&m, &file, &[], &["release"]);
        assert!(line.contains(what), "{line}");
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{202e}'),
            "the error printed the raw character: {line:?}"
        );
    }
    assert_eq!(m.builds().len(), 0);
    assert_eq!(
        leftovers(&m),
        Vec::<std::path::PathBuf>::new(),
        "files left behind"
    );
    assert_still_accepts(&m);
}

#[test]
fn noarch_in_the_arches_means_noarch_packages_are_welcome() {
    let m = Master::start_with(
        MasterOpts::default()
            .config("[[target]]\nname = \"t1\"\narches = [\"x86_64\", \"noarch\"]\n"),
    );
    let arches_of = |b: &serde_json::Value| -> Vec<String> {
        let mut a: Vec<String> = jobs_of(b).iter().map(|j| jstr(j, "arch")).collect();
        a.sort();
        a
    };
    // An arch-specific package: one job per real arch, no noarch job.
    let c = Pkg::c("bi-native").build_srpm(&m.scratch);
    let b = m.submit(&c, &["--target", "t1"]);
    assert_eq!(arches_of(&b), ["x86_64"], "{b}");
    // A noarch package: the one noarch job.
    let n = Pkg::noarch("bi-noarch").build_srpm(&m.scratch);
    let b = m.submit(&n, &["--target", "t1"]);
    assert_eq!(arches_of(&b), ["noarch"], "{b}");
    // Only noarch for an arch-specific package: refused, saying why (its
    // SRPM, a good one, stays in the store).
    let builds = m.builds().len();
    let out = m.cli(&[
        "submit",
        c.to_str().unwrap(),
        "--target",
        "t1",
        "--arch",
        "noarch",
    ]);
    let line = out.assert_error_line(&["arch-specific"]);
    assert!(line.contains("BuildArch: noarch"), "{line}");
    assert_eq!(m.builds().len(), builds);
}
