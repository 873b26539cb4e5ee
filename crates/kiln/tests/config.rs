//! Settings: a TOML file whose unknown keys are errors, `KILN_*`
//! environment variables, and flags over both.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

#[test]
fn an_unknown_key_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("master.toml");
    std::fs::write(&cfg, "lease_secs = 5\nbogus_key = 1\n").unwrap();
    let out = Command::new(kiln())
        .args(["master", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("line 2") && err.contains("bogus_key"), "{err}");
    assert!(
        !dir.path().join("data/kiln.db").exists(),
        "nothing was created"
    );
}

/// The data directory from the environment, the listen addresses from the
/// file, and a flag that overrides the file.
#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("master.toml");
    std::fs::write(
        &cfg,
        "api_listen = \"127.0.0.1:0\"\nworker_listen = \"127.0.0.1:1\"\n\
         [[target]]\nname = \"t1\"\ndisttag = \".k1\"\narches = [\"x86_64\"]\n",
    )
    .unwrap();
    let data = dir.path().join("from-env");
    let mut child = Command::new(kiln())
        .args(["master", "--config"])
        .arg(&cfg)
        .args(["--worker-listen", "127.0.0.1:0"])
        .env("KILN_DATA", &data)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("listening api=http://127.0.0.1:"),
        "{line}"
    );
    // The flag won over the file's port 1.
    assert!(!line.contains("worker=https://127.0.0.1:1 "), "{line}");
    assert!(!line.trim_end().ends_with(":1"), "{line}");
    assert!(data.join("admin.token").exists(), "KILN_DATA was not used");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

/// Without `KILN_URL`/`KILN_TOKEN`, the client reads
/// `~/.config/kiln/client.toml`, whose token may be a file.
#[test]
fn the_client_reads_its_config_file() {
    let m = Master::start();
    let home = tempfile::tempdir().unwrap();
    let conf = home.path().join(".config/kiln");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("client.toml"),
        format!(
            "url = \"{}\"\ntoken_file = \"{}\"\n",
            m.api_url,
            m.data.join("admin.token").display()
        ),
    )
    .unwrap();
    let out = Command::new(kiln())
        .args(["token", "create", "--worker", "from-file"])
        .env_remove("KILN_URL")
        .env_remove("KILN_TOKEN")
        .env_remove("KILN_TOKEN_FILE")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("kiln1."));
    // An unknown key in it is an error, not ignored.
    std::fs::write(conf.join("client.toml"), "url = \"x\"\ntokn = \"y\"\n").unwrap();
    let out = Command::new(kiln())
        .args(["builds"])
        .env_remove("KILN_URL")
        .env_remove("KILN_TOKEN")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokn"));
}
