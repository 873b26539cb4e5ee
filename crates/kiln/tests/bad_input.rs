//! Bad submissions: each is refused with one clear `error:` line and a
//! non-zero exit, and nothing is stored (no build, no new file in DATA/cas/).

mod common;

use common::*;
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
    write_file(&file, &random_bytes(4096));
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
    write_file(&file, &bytes[..bytes.len() / 2]);
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
