//! Settings: a TOML file whose unknown keys are errors, `KILN_*`
//! environment variables, and flags over both.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

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

// ---------------------------------------------------------------------------
// Every key, three ways
// ---------------------------------------------------------------------------

use std::path::Path;

use kiln_master::MasterConfig;
use serde_json::{json, Value};

/// `kiln ARGS` with none of the `KILN_*` variables the tests run with.
fn kiln_without_env(args: &[&str]) -> Command {
    let mut cmd = Command::new(kiln());
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KILN_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `kiln <sub> --print-config=json` with only the given `KILN_*` variables.
fn print_config(
    sub: &str,
    file: Option<&Path>,
    env: &[(String, String)],
    flags: &[String],
) -> Value {
    let mut cmd = kiln_without_env(&[sub, "--print-config=json"]);
    if let Some(f) = file {
        cmd.arg("--config").arg(f);
    }
    cmd.args(flags).envs(env.iter().cloned());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "kiln {sub} --print-config {flags:?} with {env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A value for `key` that differs from its default and from the other
/// layers' (layer 0: file, 1: environment, 2: flag), and that the checks
/// accept.
fn value_for(key: &str, default: &Value, layer: usize) -> Value {
    let pick = |v: [&str; 3]| json!(v[layer]);
    match key {
        "durability" => pick(["normal", "full", "normal"]),
        "default_target" => json!(format!("t{layer}")),
        "backend" => pick(["noop", "rpmbuild", "noop"]),
        "nodeps" => pick(["yes", "no", "yes"]),
        "sandbox" => pick(["auto", "off", "auto"]),
        "public_url" => json!(format!("https://layer{layer}.example:8443")),
        "arches" => [
            json!(["aarch64"]),
            json!(["ppc64le", "noarch"]),
            json!(["s390x"]),
        ][layer]
            .clone(),
        k if k.ends_with("_listen") => json!(format!("127.0.0.1:{}", 10001 + layer)),
        _ => match default {
            Value::Bool(_) => json!(layer != 1),
            Value::Number(n) => json!(n.as_u64().expect("a whole number") + 1 + layer as u64),
            Value::Array(_) => json!([format!("a{layer}.example"), format!("b{layer}.example")]),
            Value::String(_) | Value::Null => json!(format!("/tmp/kiln-layer{layer}/{key}")),
            Value::Object(_) => panic!("{key}: a table is file-only"),
        },
    }
}

/// How the environment and a flag spell a value.
fn raw(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(","),
        o => o.to_string(),
    }
}

/// One settings struct: its keys (with defaults), what its variables start
/// with, and the subcommand.
struct Walk {
    sub: &'static str,
    env_prefix: &'static str,
    keys: Vec<(String, Value)>,
    /// File lines every run needs (the master's targets).
    base: &'static str,
    dir: tempfile::TempDir,
}

impl Walk {
    fn values(&self, layer: usize) -> Vec<(String, Value)> {
        self.keys
            .iter()
            .map(|(k, d)| (k.clone(), value_for(k, d, layer)))
            .collect()
    }

    fn is_string(&self, key: &str) -> bool {
        self.keys
            .iter()
            .any(|(k, d)| k == key && matches!(d, Value::String(_) | Value::Null))
    }

    /// A config file with `values` (string keys as `<key>_file` when
    /// `secrets`).
    fn file(&self, name: &str, values: &[(String, Value)], secrets: bool) -> std::path::PathBuf {
        let mut t = toml::Table::new();
        for (k, v) in values {
            let v = toml::Value::try_from(v).unwrap();
            if secrets && self.is_string(k) {
                let p = self.secret(&format!("{name}-{k}"), v.as_str().unwrap());
                t.insert(format!("{k}_file"), toml::Value::String(p));
            } else {
                t.insert(k.clone(), v);
            }
        }
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!("{}\n{}", toml::to_string(&t).unwrap(), self.base),
        )
        .unwrap();
        path
    }

    /// A file holding `value` (with a final newline, as editors leave it).
    fn secret(&self, name: &str, value: &str) -> String {
        let p = self.dir.path().join(format!("{name}.secret"));
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn env(&self, values: &[(String, Value)], secrets: bool) -> Vec<(String, String)> {
        values
            .iter()
            .map(|(k, v)| {
                let var = format!("{}{}", self.env_prefix, k.to_uppercase());
                if secrets && self.is_string(k) {
                    (
                        format!("{var}_FILE"),
                        self.secret(&format!("env-{k}"), &raw(v)),
                    )
                } else {
                    (var, raw(v))
                }
            })
            .collect()
    }

    fn flags(&self, values: &[(String, Value)], secrets: bool) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in values {
            let flag = format!("--{}", k.replace('_', "-"));
            if secrets && self.is_string(k) {
                out.push(format!("{flag}-file"));
                out.push(self.secret(&format!("flag-{k}"), &raw(v)));
            } else {
                out.push(flag);
                out.push(raw(v));
            }
        }
        out
    }

    fn expect(&self, what: &str, got: &Value, want: &[(String, Value)]) {
        for (k, v) in want {
            assert_eq!(&got[k], v, "kiln {} {what}: key {k} in {got:#}", self.sub);
        }
    }

    /// Every key from the file, then `KILN_<KEY>` over it, then `--<key>`
    /// over both; each layer alone; and each as a file's content.
    fn run(&self) {
        assert!(self.keys.len() >= 8, "{:?}", self.keys);
        let (f, e, g) = (self.values(0), self.values(1), self.values(2));
        for secrets in [false, true] {
            let how = if secrets { " (as files)" } else { "" };
            let file = self.file(&format!("all-{secrets}"), &f, secrets);
            let base = self.file("base", &[], false);
            let (env, flags) = (self.env(&e, secrets), self.flags(&g, secrets));
            let got = print_config(self.sub, Some(&file), &[], &[]);
            self.expect(&format!("file{how}"), &got, &f);
            let got = print_config(self.sub, Some(&file), &env, &[]);
            self.expect(&format!("file < env{how}"), &got, &e);
            let got = print_config(self.sub, Some(&file), &env, &flags);
            self.expect(&format!("file < env < flags{how}"), &got, &g);
            let got = print_config(self.sub, Some(&base), &env, &[]);
            self.expect(&format!("env alone{how}"), &got, &e);
            let got = print_config(self.sub, Some(&base), &[], &flags);
            self.expect(&format!("flags alone{how}"), &got, &g);
        }
    }
}

const TARGETS: &str =
    "[[target]]\nname = \"t0\"\n[[target]]\nname = \"t1\"\n[[target]]\nname = \"t2\"\n";

/// Every key of `MasterConfig` (but the `[[target]]` tables, which are
/// file-only) can be set from the file, from `KILN_<KEY>` and from
/// `--<key>`, in that order of precedence, and as a file's content.
#[test]
fn every_master_key_three_ways() {
    let Value::Object(defaults) = serde_json::to_value(MasterConfig::default()).unwrap() else {
        panic!("MasterConfig is not a table");
    };
    let keys: Vec<(String, Value)> = defaults
        .into_iter()
        .filter(|(k, _)| !["target", "project", "mqtt"].contains(&k.as_str()))
        .collect();
    for k in [
        "token_ttl_secs",
        "cert_days",
        "createrepo",
        "default_target",
        "durability",
    ] {
        assert!(keys.iter().any(|(n, _)| n == k), "{k} is walked");
    }
    Walk {
        sub: "master",
        env_prefix: "KILN_",
        keys,
        base: TARGETS,
        dir: tempfile::tempdir().unwrap(),
    }
    .run();
}

/// The same for the worker, whose variables are `KILN_WORKER_<KEY>`; its
/// keys are read off its own printout of the defaults.
#[test]
fn every_worker_key_three_ways() {
    let Value::Object(defaults) = print_config("worker", None, &[], &[]) else {
        panic!("the worker's settings are not a table");
    };
    let keys: Vec<(String, Value)> = defaults.into_iter().collect();
    for k in [
        "dir", "name", "master", "arches", "channels", "capacity", "work", "backend",
    ] {
        assert!(keys.iter().any(|(n, _)| n == k), "{k} is walked");
    }
    Walk {
        sub: "worker",
        env_prefix: "KILN_WORKER_",
        keys,
        base: "",
        dir: tempfile::tempdir().unwrap(),
    }
    .run();
}

/// The flags and variables the README, the scripts and the tests use keep
/// their meaning (older names included).
#[test]
fn the_names_in_use_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("master.toml");
    std::fs::write(&cfg, "lease_secs = 9\n").unwrap();
    let s = |x: &str| x.to_string();
    let got = print_config(
        "master",
        None,
        &[
            (s("KILN_CONFIG"), cfg.to_string_lossy().into_owned()),
            (s("KILN_DATA"), s("/d")),
        ],
        &[
            "--api-listen",
            "127.0.0.1:1",
            "--worker-listen",
            "127.0.0.1:2",
            "--server-name",
            "a.example",
            "--server-name",
            "b.example,c.example",
            "--job-timeout-secs",
            "5",
            "--max-upload",
            "6",
            "--max-job-upload",
            "7",
            "--max-job-files",
            "8",
            "--log-cap",
            "1500",
            "--api-tls",
        ]
        .map(s),
    );
    let want = json!({
        "data": "/d", "lease_secs": 9, "api_listen": "127.0.0.1:1", "worker_listen": "127.0.0.1:2",
        "server_names": ["a.example", "b.example", "c.example"], "job_timeout_secs": 5,
        "max_upload": 6, "max_job_upload": 7, "max_job_files": 8, "log_cap": 1500, "api_tls": true,
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&got[k], v, "{k}: {got:#}");
    }

    let wcfg = dir.path().join("worker.toml");
    std::fs::write(&wcfg, "capacity = 3\nname = \"from-file\"\n").unwrap();
    let env = [
        ("KILN_WORKER_CONFIG", wcfg.to_string_lossy().into_owned()),
        ("KILN_WORKER_DIR", s("/wd")),
        ("KILN_MASTER", s("https://m.example:8443")),
        ("KILN_ARCH", s("x86_64,noarch")),
        ("KILN_CHANNEL", s("c1")),
        ("KILN_WORK", s("/ww")),
        ("KILN_BACKEND", s("noop")),
        ("KILN_NODEPS", s("yes")),
        ("KILN_SANDBOX", s("off")),
    ]
    .map(|(k, v)| (s(k), v));
    let got = print_config("worker", None, &env, &[]);
    let want = json!({
        "capacity": 3, "name": "from-file", "dir": "/wd", "master": "https://m.example:8443",
        "arches": ["x86_64", "noarch"], "channels": ["c1"], "work": "/ww", "backend": "noop",
        "nodeps": "yes", "sandbox": "off",
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&got[k], v, "{k}: {got:#}");
    }
    let env = [
        (s("KILN_WORKER_NAME"), s("from-env")),
        (s("KILN_CAPACITY"), s("4")),
    ];
    let flags = [
        "--dir",
        "/fd",
        "--name",
        "from-flag",
        "--arch",
        "aarch64",
        "--channel",
        "c2",
        "--capacity",
        "5",
        "--work",
        "/fw",
        "--master",
        "https://f:1",
    ]
    .map(s);
    let got = print_config("worker", Some(&wcfg), &env, &flags);
    let want = json!({
        "dir": "/fd", "name": "from-flag", "arches": ["aarch64"], "channels": ["c2"],
        "capacity": 5, "work": "/fw", "master": "https://f:1",
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&got[k], v, "{k}: {got:#}");
    }
}

/// A `KILN_*` variable that looks like a setting is a one-line error that
/// names the right one; an unrelated one is only a warning.
#[test]
fn a_misspelt_variable_is_an_error() {
    let run = |var: &str| {
        kiln_without_env(&["master", "--print-config"])
            .env(var, "5")
            .output()
            .unwrap()
    };
    let out = run("KILN_LEASE_SEC");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("KILN_LEASE_SECS"),
        "{err}"
    );
    let out = run("KILN_COMPLETELY_UNRELATED");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KILN_COMPLETELY_UNRELATED"));
    // A value of the wrong type names its variable.
    let mut cmd = Command::new(kiln());
    cmd.args(["master", "--print-config"])
        .env_remove("KILN_CONFIG")
        .env("KILN_MAX_ATTEMPTS", "many");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KILN_MAX_ATTEMPTS"));
}
