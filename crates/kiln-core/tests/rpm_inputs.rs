//! Package inspection on real packages made here with `rpmbuild` (which
//! must be installed: these tests fail, never skip, without it), on
//! corrupted and crafted ones, and on thousands of mutations of them (a
//! fixed-seed fuzz run with a time bound).
//!
//! Fuzz knobs: KILN_FUZZ_SEED (default 0x6b696c6e), KILN_FUZZ_CASES
//! (default 5000), KILN_FUZZ_TRACE=1 prints every case before it runs (to
//! find the one that aborts, with `--nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "fixtures/crafted.rs"]
mod crafted;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_core::header::{self, Which};
use kiln_core::listing::{Listing, ListingEntry};
use kiln_core::srpm::{
    inspect_package, inspect_package_bytes, inspect_srpm, plan_arches, same_package, PackageError,
};
use kiln_core::state::ArtifactKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Where this test process builds its packages (under cargo's own
/// temporary directory for integration tests). The first call removes what
/// earlier runs, no longer alive, left there.
fn work() -> PathBuf {
    const PREFIX: &str = "kiln-core-rpm-inputs-";
    static CLEANED: OnceLock<()> = OnceLock::new();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    CLEANED.get_or_init(|| {
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(PREFIX) {
                if !PathBuf::from(format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
    let d = base.join(format!("{PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what}: {e} (rpmbuild, rpmsign and gpg must be installed)")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `rpmbuild MODE` of a spec; returns the files it wrote.
fn rpmbuild(name: &str, spec: &str, mode: &str) -> Vec<PathBuf> {
    let dir = work().join(name);
    let top = dir.join("top");
    std::fs::create_dir_all(&top).unwrap();
    let spec_path = dir.join(format!("{name}.spec"));
    std::fs::write(&spec_path, spec).unwrap();
    let out = run(
        Command::new("rpmbuild")
            .arg(mode)
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg("--define")
            .arg("_dbpath /var/lib/rpm")
            .arg(&spec_path),
        &format!("rpmbuild {mode}"),
    );
    let wrote: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Wrote:"))
        .map(|p| PathBuf::from(p.trim()))
        .collect();
    assert!(!wrote.is_empty(), "rpmbuild wrote nothing: {out}");
    wrote
}

fn spec(name: &str, release: &str, noarch: bool) -> String {
    format!(
        "Name: {name}\nVersion: 1.0\nRelease: {release}\nSummary: kiln-core test package\n\
         License: MIT\n{}\n%description\nA test package.\n\n%install\n\
         mkdir -p %{{buildroot}}/usr/share/{name}\n\
         echo hello > %{{buildroot}}/usr/share/{name}/data\n\n%files\n/usr/share/{name}/data\n",
        if noarch { "BuildArch: noarch\n" } else { "" }
    )
}

struct Packages {
    /// `BuildArch: noarch` source package and its binary package.
    srpm: PathBuf,
    rpm: PathBuf,
    /// An arch-specific source package.
    native_srpm: PathBuf,
    /// A source package whose Release is `1ZZZZZ` (6 bytes, to patch).
    placeholder_srpm: PathBuf,
}

fn packages() -> &'static Packages {
    static P: OnceLock<Packages> = OnceLock::new();
    P.get_or_init(|| {
        let both = rpmbuild("kfz", &spec("kfz", "1", true), "-ba");
        let srpm = both
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".src.rpm"))
            .expect("an SRPM")
            .clone();
        let rpm = both
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".noarch.rpm"))
            .expect("a noarch rpm")
            .clone();
        let native_srpm = rpmbuild("kfzc", &spec("kfzc", "1", false), "-bs").remove(0);
        let placeholder_srpm = rpmbuild("kfze", &spec("kfze", "1ZZZZZ", true), "-bs").remove(0);
        Packages {
            srpm,
            rpm,
            native_srpm,
            placeholder_srpm,
        }
    })
}

fn write(name: &str, data: &[u8]) -> PathBuf {
    let p = work().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Replace every occurrence of `from` by `to` (same length) in the main
/// header, then write the header's new SHA-256 into the signature header,
/// as a forger would: the package is then consistent but for its content.
fn patch_main_header(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = data.to_vec();
    let h = header::parse_headers(data).unwrap();
    let range = h.main.range.clone();
    let mut hits = 0;
    let mut i = range.start;
    while i + from.len() <= range.end {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
        i += 1;
    }
    assert!(hits > 0, "{from:?} is not in the main header");
    let h = header::parse_headers(&out).unwrap();
    let sha = h.view(Which::Main).sha256();
    let sig = h.view(Which::Signature);
    let e = sig
        .find(header::RPMSIGTAG_SHA256)
        .expect("a SHA-256 header digest");
    let at = h.signature.range.start + sig.store_offset() + e.offset as usize;
    out[at..at + 64].copy_from_slice(sha.as_bytes());
    out
}

#[test]
fn real_packages_are_read_and_their_digests_checked() {
    let p = packages();
    let s = inspect_srpm(&p.srpm).unwrap();
    assert_eq!((s.name.as_str(), s.version.as_str()), ("kfz", "1.0"));
    assert_eq!((s.release.as_str(), s.arch.as_str()), ("1", "src"));
    assert_eq!(s.build_archs, ["noarch"]);
    let bytes = std::fs::read(&p.srpm).unwrap();
    assert_eq!(inspect_package_bytes(&bytes).unwrap(), s);
    let b = inspect_package(&p.rpm).unwrap();
    assert_eq!(b.nevra(), "kfz-0:1.0-1.noarch");
    assert!(matches!(
        inspect_srpm(&p.rpm),
        Err(PackageError::NotSource(_))
    ));

    // rpmbuild 4.18 records a header SHA-256 and a SHA-256 payload digest
    // (and the size): the checks above did run on them.
    for f in [&p.srpm, &p.rpm] {
        let data = std::fs::read(f).unwrap();
        let h = header::parse_headers(&data).unwrap();
        let sig = h.view(Which::Signature);
        let main = h.view(Which::Main);
        assert!(sig.string(header::RPMSIGTAG_SHA256).is_some(), "{f:?}");
        assert!(sig.number(header::RPMSIGTAG_SIZE).is_some(), "{f:?}");
        assert!(main.string(header::RPMTAG_PAYLOADDIGEST).is_some(), "{f:?}");
        assert_eq!(main.number(header::RPMTAG_PAYLOADDIGESTALGO), Some(8));
        assert_eq!(
            sig.string(header::RPMSIGTAG_SHA256).unwrap(),
            main.sha256().as_bytes()
        );
    }
}

#[test]
fn corruption_is_caught_by_the_digests() {
    let data = std::fs::read(&packages().srpm).unwrap();
    let h = header::parse_headers(&data).unwrap();
    // A byte of the payload.
    let mut bad = data.clone();
    let last = bad.len() - 10;
    bad[last] ^= 0x01;
    let e = inspect_package_bytes(&bad).unwrap_err();
    assert!(matches!(e, PackageError::PayloadDigest { .. }), "{e}");
    assert!(e
        .to_string()
        .starts_with("payload digest mismatch: the package is corrupt"));
    let f = write("payload.src.rpm", &bad);
    assert!(matches!(
        inspect_srpm(&f),
        Err(PackageError::PayloadDigest { .. })
    ));
    // A byte of a string in the main header (the summary).
    let mut bad = data.clone();
    let at = h.main.range.start
        + data[h.main.range.clone()]
            .windows(7)
            .position(|w| w == b"kiln-co")
            .unwrap();
    bad[at] = b'K';
    let e = inspect_package_bytes(&bad).unwrap_err();
    assert!(matches!(e, PackageError::HeaderDigest { .. }), "{e}");
    assert!(e
        .to_string()
        .starts_with("header digest mismatch: the package is corrupt"));
    // Truncated, or with bytes appended.
    let e = inspect_package_bytes(&data[..data.len() - 1]).unwrap_err();
    assert!(matches!(e, PackageError::Size { .. }), "{e}");
    let mut long = data.clone();
    long.extend_from_slice(b"trailing");
    let e = inspect_package_bytes(&long).unwrap_err();
    assert!(matches!(e, PackageError::Size { .. }), "{e}");
    let e = inspect_package_bytes(&data[..h.main.range.end - 1]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn the_crafted_266_byte_srpm_is_refused() {
    let data = crafted::crafted_266();
    assert_eq!(data.len(), 266);
    let want = "malformed rpm header: main header entry 0 (tag 5009) declares 4294967295 INT64 \
                items, more than the 98-byte data store holds";
    let e = inspect_package_bytes(&data).unwrap_err();
    assert_eq!(e.to_string(), want);
    let f = write("crafted.src.rpm", &data);
    assert_eq!(inspect_srpm(&f).unwrap_err().to_string(), want);
    assert_eq!(inspect_package(&f).unwrap_err().to_string(), want);
    assert!(same_package(&f, &f).is_err());
}

#[test]
fn a_release_with_an_escape_or_a_bidi_override_is_refused() {
    let data = std::fs::read(&packages().placeholder_srpm).unwrap();
    assert_eq!(inspect_package_bytes(&data).unwrap().release, "1ZZZZZ");
    for (to, word) in [
        ("1\u{1b}[31m", "escape character"),
        ("1ZZ\u{202e}", "bidirectional"),
        ("1ZZZ\n\n", "line break"),
        ("1-ZZZZ", "'-'"),
        ("1ZZ/ZZ", "'/'"),
    ] {
        let bad = patch_main_header(&data, b"1ZZZZZ", to.as_bytes());
        let e = inspect_package_bytes(&bad).unwrap_err();
        assert!(matches!(e, PackageError::BadField(_)), "{to:?}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("release") && msg.contains(word), "{msg}");
        assert!(
            !msg.contains('\u{1b}') && !msg.contains('\u{202e}'),
            "{msg:?}"
        );
        let f = write("patched.src.rpm", &bad);
        assert!(matches!(inspect_srpm(&f), Err(PackageError::BadField(_))));
    }
}

#[test]
fn noarch_planning_on_real_source_packages() {
    let p = packages();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let noarch = inspect_srpm(&p.srpm).unwrap();
    let native = inspect_srpm(&p.native_srpm).unwrap();
    assert!(native.build_archs.is_empty());
    let target = v(&["x86_64", "aarch64", "noarch"]);
    assert_eq!(plan_arches(&noarch, &target).unwrap().build, ["noarch"]);
    assert_eq!(
        plan_arches(&native, &target).unwrap().build,
        ["x86_64", "aarch64"]
    );
    let e = plan_arches(&native, &v(&["noarch"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("arch-specific"), "{e}");
    assert_eq!(
        plan_arches(&noarch, &v(&["noarch"])).unwrap().build,
        ["noarch"]
    );
}

#[test]
fn a_signed_package_is_the_same_package() {
    let p = packages();
    let dir = work().join("sign");
    let gnupg = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    run(
        Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .args(["Kiln Test <test@kiln.invalid>", "ed25519", "sign", "never"]),
        "gpg --quick-gen-key",
    );
    let out = run(
        Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--list-keys", "--with-colons"]),
        "gpg --list-keys",
    );
    let fpr = out
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.split(':').find(|f| f.len() == 40))
        .expect("a fingerprint")
        .to_string();
    let signed = dir.join("signed.noarch.rpm");
    std::fs::copy(&p.rpm, &signed).unwrap();
    run(
        Command::new("rpmsign")
            .env("GNUPGHOME", &gnupg)
            .arg("--addsign")
            .arg("--define")
            .arg(format!("_gpg_name {fpr}"))
            .arg("--define")
            .arg("__gpg /usr/bin/gpg")
            .arg("--define")
            .arg(format!("_gpg_path {}", gnupg.display()))
            .arg(&signed),
        "rpmsign --addsign",
    );
    assert_ne!(
        std::fs::read(&signed).unwrap(),
        std::fs::read(&p.rpm).unwrap()
    );
    assert_eq!(
        inspect_package(&signed).unwrap(),
        inspect_package(&p.rpm).unwrap()
    );
    assert!(same_package(&p.rpm, &signed).unwrap());
    assert!(!same_package(&p.rpm, &p.srpm).unwrap());
}

// ---------------------------------------------------------------------------
// Fuzz
// ---------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

/// Offsets of the intro and index entries of both headers of `data`.
fn structure(data: &[u8]) -> Vec<(usize, usize)> {
    let Ok(h) = header::parse_headers(data) else {
        return Vec::new();
    };
    [&h.signature, &h.main]
        .iter()
        .map(|hd| (hd.range.start, hd.entries.len()))
        .collect()
}

const EXTREMES: [u32; 10] = [
    0,
    1,
    2,
    0x7f,
    0xffff,
    0x10000,
    0x0fff_ffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// One mutation of `data` (some bias towards the headers, where the
/// parsing is).
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, layout: &[(usize, usize)], header_end: usize) {
    if data.is_empty() {
        data.push(rng.random());
        return;
    }
    let pos = |rng: &mut StdRng, len: usize| {
        if rng.random_bool(0.8) {
            rng.random_range(0..header_end.min(len).max(1))
        } else {
            rng.random_range(0..len)
        }
    };
    match rng.random_range(0..8) {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = pos(rng, data.len());
                data[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            let v = [0x00, 0xff, 0x7f, 0x80, rng.random()][rng.random_range(0..5)];
            for _ in 0..rng.random_range(1..=4) {
                let i = pos(rng, data.len());
                data[i] = v;
            }
        }
        2 => {
            let n = rng.random_range(0..data.len());
            data.truncate(n);
        }
        3..=5 if !layout.is_empty() => {
            // An index field (tag, type, offset or count) or an intro
            // count set to an extreme.
            let (start, il) = layout[rng.random_range(0..layout.len())];
            let field = if rng.random_bool(0.2) || il == 0 {
                start + 8 + 4 * rng.random_range(0..2)
            } else {
                start + 16 + 16 * rng.random_range(0..il) + 4 * rng.random_range(0..4)
            };
            let v = if rng.random_bool(0.8) {
                EXTREMES[rng.random_range(0..EXTREMES.len())]
            } else {
                rng.random_range(0..16)
            };
            if field + 4 <= data.len() {
                data[field..field + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        6 => {
            // Delete or duplicate a chunk.
            let a = pos(rng, data.len());
            let n = rng.random_range(1..=64).min(data.len() - a);
            if rng.random_bool(0.5) {
                data.drain(a..a + n);
            } else {
                let chunk = data[a..a + n].to_vec();
                let b = pos(rng, data.len());
                data.splice(b..b, chunk);
            }
        }
        _ => {
            // Random bytes over a stretch.
            let a = pos(rng, data.len());
            let n = rng.random_range(1..=16).min(data.len() - a);
            rng.fill(&mut data[a..a + n]);
        }
    }
}

#[test]
fn fuzz_mutated_packages_and_listings() {
    let p = packages();
    let seed = env_u64("KILN_FUZZ_SEED", 0x6b69_6c6e);
    let cases = env_u64("KILN_FUZZ_CASES", 5000);
    let trace = std::env::var_os("KILN_FUZZ_TRACE").is_some();
    let seeds: Vec<Vec<u8>> = vec![
        std::fs::read(&p.srpm).unwrap(),
        std::fs::read(&p.rpm).unwrap(),
        std::fs::read(&p.native_srpm).unwrap(),
        crafted::crafted_266(),
    ];
    let listing = serde_json::to_vec(&Listing {
        job: 12,
        attempt: 1,
        arch: "x86_64".into(),
        artifacts: vec![ListingEntry {
            name: "kfz-1.0-1.noarch.rpm".into(),
            kind: ArtifactKind::Rpm,
            size: 6000,
            sha256: "0".repeat(64),
            nevra: Some("kfz-0:1.0-1.noarch".into()),
        }],
    })
    .unwrap();
    let file = work().join("fuzz.rpm");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut ok, mut refused) = (0u64, 0u64);
    for case in 0..cases {
        let which = rng.random_range(0..seeds.len());
        let mut data = seeds[which].clone();
        let layout = structure(&data);
        let header_end = header::parse_headers(&data)
            .map(|h| h.main.range.end)
            .unwrap_or(data.len());
        for _ in 0..rng.random_range(1..=3) {
            mutate(&mut rng, &mut data, &layout, header_end);
        }
        let mut text = listing.clone();
        let text_len = text.len();
        mutate(&mut rng, &mut text, &[], text_len);
        let via_file = case % 10 == 0;
        if trace {
            eprintln!(
                "case {case} (seed {seed:#x}): from package {which}, {} bytes",
                data.len()
            );
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let r = inspect_package_bytes(&data);
            if via_file {
                std::fs::write(&file, &data).unwrap();
                let f = inspect_package(&file);
                assert_eq!(
                    f.as_ref().map_err(|e| e.to_string()),
                    r.as_ref().map_err(|e| e.to_string()),
                    "the file and the bytes are read alike"
                );
                let _ = inspect_srpm(&file);
                let _ = same_package(&file, &p.srpm);
            }
            let _ = Listing::parse(&text);
            let _ = Listing::parse(&data);
            r.is_ok()
        }));
        match outcome {
            Ok(true) => ok += 1,
            Ok(false) => refused += 1,
            Err(panic) => {
                let dump = work().join(format!("fuzz-case-{case}.rpm"));
                let _ = std::fs::write(&dump, &data);
                eprintln!(
                    "fuzz case {case} panicked (seed {seed:#x}, KILN_FUZZ_SEED={seed:#x} \
                     reproduces it); its package is in {}",
                    dump.display()
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    let took = started.elapsed();
    eprintln!(
        "fuzz: {cases} cases from seed {seed:#x} in {took:.2?}: {ok} read, {refused} refused"
    );
    assert!(
        took < Duration::from_secs(20) || cases > 5000,
        "{cases} cases took {took:?} (more than 20 s)"
    );
    assert!(
        refused > cases / 2,
        "most mutations should be refused ({refused} of {cases})"
    );
}

/// The fuzz run's own check that a read package is really read: the good
/// files pass the same path.
#[test]
fn the_fuzz_seeds_are_good_packages() {
    let p = packages();
    for f in [&p.srpm, &p.rpm, &p.native_srpm, &p.placeholder_srpm] {
        inspect_package(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let data = std::fs::read(f).unwrap();
        inspect_package_bytes(&data).unwrap();
        assert!(same_package(f, f).unwrap());
    }
}

#[test]
fn build_requires_are_read_from_the_source_package() {
    let spec =
        "Name: kfbr\nVersion: 1.0\nRelease: 1\nSummary: t\nLicense: MIT\nBuildArch: noarch\n\
                BuildRequires: gcc\nBuildRequires: libgreet-devel >= 2\nBuildRequires: make < 5\n\
                BuildRequires: (foo if bar)\nBuildRequires: /usr/bin/true\n\
                %description\nt\n%files\n";
    let srpm = rpmbuild("kfbr", spec, "-bs").remove(0);
    let info = kiln_core::srpm::inspect_srpm(&srpm).unwrap();
    let mut got = info.build_requires.clone();
    got.sort();
    assert_eq!(
        got,
        [
            "(foo if bar)",
            "/usr/bin/true",
            "gcc",
            "libgreet-devel >= 2",
            "make < 5"
        ],
        "rpmlib() features are left out"
    );
    // A binary package has none.
    let rpm = kiln_core::srpm::inspect_package(&packages().rpm).unwrap();
    assert!(rpm.build_requires.is_empty());
}
