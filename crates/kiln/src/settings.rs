//! Settings for `kiln master` and `kiln worker`, layered by one mechanism
//! for every key: the settings struct's own defaults, then a TOML file
//! (unknown keys are errors, reported with their line), then environment
//! variables, then flags. The keys, their variables and their flags are read
//! off the struct's serialized defaults ([`MasterConfig`],
//! [`WorkerSettings`]), so a key added there has all three at once:
//!
//! | key          | master                         | worker                                |
//! |--------------|--------------------------------|---------------------------------------|
//! | file         | `lease_secs = 5`               | `capacity = 4`                        |
//! | environment  | `KILN_LEASE_SECS=5`            | `KILN_WORKER_CAPACITY=4`              |
//! | flag         | `--lease-secs 5`               | `--capacity 4`                        |
//!
//! (the worker's variables carry `KILN_WORKER_`, like `KILN_WORKER_CONFIG`,
//! so one environment can hold both; its older short names, `KILN_MASTER`,
//! `KILN_ARCH`, `KILN_CAPACITY`…, and flags `--arch`, `--channel`, and the
//! master's `--server-name`, are kept as aliases).
//!
//! A value from the environment or a flag is read by the type of the key's
//! default: a boolean (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`; a
//! bare boolean flag means true), a whole number, a list (comma separated;
//! a list flag may also be repeated), or a string (so is a key whose default
//! is unset). An empty variable counts as unset. Each layer replaces a key
//! whole (a list is not merged). Every string key may also be given as the
//! content of a file, for secrets: `<key>_file = "PATH"` in the file,
//! `KILN_<KEY>_FILE=PATH`, `--<key>-file PATH` (one final newline is
//! dropped). Tables (`[[target]]`) are file-only.
//!
//! An unknown `KILN_*` variable that looks like a setting (within two edits
//! of one, or sharing its first word: `KILN_LEASE_SEC`, `KILN_DATA_DIR`) is
//! an error; any other unknown `KILN_*` variable is ignored with a warning.
//!
//! `--print-config[=toml|json]` (hidden) prints the effective settings and
//! exits without starting anything.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use kiln_master::{Master, MasterConfig};
use kiln_worker::backend::{Backend, Noop, Rpmbuild, Sandbox};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------
// The mechanism
// ---------------------------------------------------------------------------

/// A settings struct the layering knows how to fill. Everything else (the
/// keys, their types, their defaults) is read off `Self::default()`.
pub trait Settings: Serialize + serde::de::DeserializeOwned + Default {
    /// For messages: `kiln master`.
    const COMMAND: &'static str;
    /// What a key's environment variable starts with.
    const ENV_PREFIX: &'static str;
    /// Keys given only in the file (tables).
    const FILE_ONLY: &'static [&'static str];
    /// Older names that keep working.
    const ALIASES: &'static [Alias];
    /// One line of help for a key's flag.
    fn help(key: &str) -> Option<&'static str>;
}

/// Older names of a key.
pub struct Alias {
    pub key: &'static str,
    pub env: &'static [&'static str],
    pub flags: &'static [&'static str],
}

/// How a value from the environment or a flag is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Float,
    Str,
    List,
}

#[derive(Debug, Clone)]
struct Key {
    name: String,
    kind: Kind,
    default: Value,
    env: String,
    flag: String,
    env_aliases: &'static [&'static str],
    flag_aliases: &'static [&'static str],
    /// A string key may also be given as a file's content (unless the
    /// struct has a `<key>_file` of its own).
    file_ok: bool,
}

impl Key {
    fn takes_file(&self) -> bool {
        self.file_ok
    }
    fn file_key(&self) -> String {
        format!("{}_file", self.name)
    }
    fn file_env(&self) -> String {
        format!("{}_FILE", self.env)
    }
}

/// The keys of `S`, from its serialized defaults.
fn schema<S: Settings>() -> anyhow::Result<Vec<Key>> {
    let defaults = to_object(&S::default())?;
    let mut keys = Vec::new();
    for (name, default) in defaults {
        if S::FILE_ONLY.contains(&name.as_str()) {
            continue;
        }
        let kind = match &default {
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_f64() => Kind::Float,
            Value::Number(_) => Kind::Int,
            Value::String(_) | Value::Null => Kind::Str,
            Value::Array(_) => Kind::List,
            // A table: file-only.
            Value::Object(_) => continue,
        };
        let alias = S::ALIASES.iter().find(|a| a.key == name);
        keys.push(Key {
            env: format!("{}{}", S::ENV_PREFIX, name.to_ascii_uppercase()),
            flag: name.replace('_', "-"),
            env_aliases: alias.map_or(&[], |a| a.env),
            flag_aliases: alias.map_or(&[], |a| a.flags),
            file_ok: kind == Kind::Str,
            name,
            kind,
            default,
        });
    }
    let names: BTreeSet<String> = keys.iter().map(|k| k.name.clone()).collect();
    for k in &mut keys {
        if names.contains(&k.file_key()) {
            k.file_ok = false;
        }
    }
    Ok(keys)
}

fn to_object<T: Serialize>(v: &T) -> anyhow::Result<Map<String, Value>> {
    match serde_json::to_value(v).context("serializing settings")? {
        Value::Object(m) => Ok(m),
        _ => bail!("settings are not a table"),
    }
}

/// A value given on the command line, in the environment or by `kiln up`.
#[derive(Debug, Clone)]
struct Given {
    key: String,
    /// Where it came from, for messages: `--lease-secs`, `KILN_LEASE_SECS`.
    shown: String,
    raw: Raw,
}

#[derive(Debug, Clone)]
enum Raw {
    Values(Vec<String>),
    /// The value is this file's content.
    File(PathBuf),
}

/// The `--<key>` flags of a settings struct (clap arguments made from its
/// keys), and what was given with them.
pub struct Keys<S> {
    given: Vec<Given>,
    _settings: PhantomData<fn() -> S>,
}

impl<S> Default for Keys<S> {
    fn default() -> Self {
        Keys {
            given: Vec::new(),
            _settings: PhantomData,
        }
    }
}

impl<S: Settings> Keys<S> {
    /// Set a key as a flag would (`kiln up` sets its master's and worker's).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.given.push(Given {
            key: key.to_string(),
            shown: format!("{key} (for {})", S::COMMAND),
            raw: Raw::Values(vec![value.into()]),
        });
        self
    }
}

/// clap wants `'static` names; the few dozen made here live as long as the
/// process anyway.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn shown_default(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        o => o.to_string(),
    }
}

impl<S: Settings> clap::Args for Keys<S> {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        // The defaults of our own structs always serialize.
        let keys = schema::<S>().unwrap_or_default();
        for k in keys {
            let env: Vec<&str> = std::iter::once(k.env.as_str())
                .chain(k.env_aliases.iter().copied())
                .collect();
            let help = format!(
                "{} [env: {}] [default: {}]",
                S::help(&k.name).unwrap_or("see the config file"),
                env.join(", "),
                shown_default(&k.default)
            );
            let mut arg = clap::Arg::new(leak(k.name.clone()))
                .long(leak(k.flag.clone()))
                .value_name(leak(k.name.to_ascii_uppercase()))
                .value_parser(clap::value_parser!(String))
                .action(clap::ArgAction::Append)
                .help(help);
            for a in k.flag_aliases {
                arg = arg.visible_alias(*a);
            }
            match k.kind {
                Kind::Bool => {
                    arg = arg.num_args(0..=1).default_missing_value("true");
                }
                Kind::List => arg = arg.value_delimiter(','),
                _ => {}
            }
            cmd = cmd.arg(arg);
            if k.takes_file() {
                cmd = cmd.arg(
                    clap::Arg::new(leak(k.file_key()))
                        .long(leak(format!("{}-file", k.flag)))
                        .value_name("PATH")
                        .value_parser(clap::value_parser!(PathBuf))
                        .action(clap::ArgAction::Set)
                        .conflicts_with(leak(k.name.clone()))
                        .hide(true),
                );
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl<S: Settings> clap::FromArgMatches for Keys<S> {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut k = Keys::default();
        k.update_from_arg_matches(m)?;
        Ok(k)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        for k in schema::<S>().unwrap_or_default() {
            if let Ok(Some(v)) = m.try_get_many::<String>(&k.name) {
                self.given.push(Given {
                    key: k.name.clone(),
                    shown: format!("--{}", k.flag),
                    raw: Raw::Values(v.cloned().collect()),
                });
            }
            if k.takes_file() {
                if let Ok(Some(p)) = m.try_get_one::<PathBuf>(&k.file_key()) {
                    self.given.push(Given {
                        key: k.name.clone(),
                        shown: format!("--{}-file", k.flag),
                        raw: Raw::File(p.clone()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The variables of the environment that start with `KILN_`.
fn kiln_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with("KILN_")
                .then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// `KILN_*` variables kiln reads that are not settings of the master or the
/// worker (the client's, the logs', the tests').
const OTHER_ENV: &[&str] = &[
    "KILN_CONFIG",
    "KILN_WORKER_CONFIG",
    "KILN_URL",
    "KILN_TOKEN",
    "KILN_TOKEN_FILE",
    "KILN_CA",
    "KILN_LOG",
    "KILN_ENROLL_TOKEN",
];
const OTHER_ENV_PREFIXES: &[&str] = &["KILN_FUZZ_"];

fn setting_env_names() -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for keys in [schema::<MasterConfig>()?, schema::<WorkerSettings>()?] {
        for k in keys {
            if k.takes_file() {
                names.insert(k.file_env());
            }
            names.extend(k.env_aliases.iter().map(|a| a.to_string()));
            names.insert(k.env);
        }
    }
    Ok(names)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn first_word(var: &str) -> &str {
    let rest = var.strip_prefix("KILN_").unwrap_or(var);
    rest.split('_').next().unwrap_or(rest)
}

/// Unknown `KILN_*` variables: an error for one that looks like a setting,
/// a warning (once per process) for the others.
fn check_env(env: &BTreeMap<String, String>) -> anyhow::Result<()> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let settings = setting_env_names()?;
    let mut warnings = Vec::new();
    for var in env.keys() {
        if settings.contains(var)
            || OTHER_ENV.contains(&var.as_str())
            || OTHER_ENV_PREFIXES.iter().any(|p| var.starts_with(p))
        {
            continue;
        }
        let near = settings
            .iter()
            .map(|s| (edit_distance(var, s), s))
            .min()
            .filter(|(d, _)| *d <= 2)
            .map(|(_, s)| s)
            .or_else(|| {
                settings
                    .iter()
                    .filter(|s| first_word(s) == first_word(var))
                    .min_by_key(|s| edit_distance(var, s))
            });
        match near {
            Some(s) => bail!(
                "{var} is not a setting (did you mean {s}?); every key of the config file \
                 is KILN_<KEY> for the master, KILN_WORKER_<KEY> for a worker"
            ),
            None => warnings.push(var.clone()),
        }
    }
    if !warnings.is_empty() && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("ignoring {}: not a setting kiln reads", warnings.join(", "));
    }
    Ok(())
}

/// The values the environment gives for `keys`.
fn env_layer(keys: &[Key], env: &BTreeMap<String, String>) -> anyhow::Result<Vec<Given>> {
    let get = |name: &str| env.get(name).filter(|v| !v.is_empty());
    let mut out = Vec::new();
    for k in keys {
        let mut found: Vec<(&str, &String)> = Vec::new();
        for name in std::iter::once(k.env.as_str()).chain(k.env_aliases.iter().copied()) {
            if let Some(v) = get(name) {
                found.push((name, v));
            }
        }
        if let [(a, va), (b, vb), ..] = found.as_slice() {
            if va != vb {
                bail!("{a} and {b} are both set, to different values: set one");
            }
        }
        if let Some((name, v)) = found.first() {
            out.push(Given {
                key: k.name.clone(),
                shown: name.to_string(),
                raw: Raw::Values(vec![v.to_string()]),
            });
        }
        if k.takes_file() {
            let name = k.file_env();
            if let Some(p) = get(&name) {
                if let Some((other, _)) = found.first() {
                    bail!("{other} and {name} are both set: set one");
                }
                out.push(Given {
                    key: k.name.clone(),
                    shown: name,
                    raw: Raw::File(PathBuf::from(p)),
                });
            }
        }
    }
    Ok(out)
}

fn parse_one(kind: Kind, raw: &str) -> Result<Value, String> {
    let t = raw.trim();
    Ok(match kind {
        Kind::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Value::Bool(true),
            "false" | "no" | "off" | "0" => Value::Bool(false),
            _ => return Err(format!("expected true or false, not {raw:?}")),
        },
        Kind::Int => match (t.parse::<u64>(), t.parse::<i64>()) {
            (Ok(n), _) => Value::from(n),
            (_, Ok(n)) => Value::from(n),
            _ => return Err(format!("expected a whole number, not {raw:?}")),
        },
        Kind::Float => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, not {raw:?}"))?,
        Kind::Str => Value::String(raw.to_string()),
        Kind::List => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
    })
}

fn parse_values(kind: Kind, raw: &[String]) -> Result<Value, String> {
    if kind == Kind::List {
        let mut all = Vec::new();
        for r in raw {
            if let Value::Array(a) = parse_one(kind, r)? {
                all.extend(a);
            }
        }
        return Ok(Value::Array(all));
    }
    // A repeated flag: the last one counts.
    parse_one(kind, raw.last().map_or("", String::as_str))
}

/// A file given for a value: its content, less one final newline.
fn read_secret(p: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The file layer: `S` from the file (every key checked, errors with their
/// line), as a table with every key.
fn file_layer<S: Settings>(path: &Path, keys: &[Key]) -> anyhow::Result<Map<String, Value>> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let at = |line: Option<usize>, msg: &str| match line {
        Some(l) => anyhow!("config file {}, line {l}: {}", path.display(), msg.trim()),
        None => anyhow!("config file {}: {}", path.display(), msg.trim()),
    };
    let toml_err = |e: toml::de::Error| at(e.span().map(|s| line_of(&text, s.start)), e.message());
    let mut root = DeTable::parse(&text).map_err(toml_err)?;
    for k in keys.iter().filter(|k| k.takes_file()) {
        let fk = k.file_key();
        let Some(v) = root.get_mut().remove(fk.as_str()) else {
            continue;
        };
        let span = v.span();
        let line = Some(line_of(&text, span.start));
        let Some(p) = v.get_ref().as_str() else {
            return Err(at(line, &format!("{fk} must be a path")));
        };
        if root.get_ref().contains_key(k.name.as_str()) {
            return Err(at(line, &format!("{} and {fk} are both given", k.name)));
        }
        let secret = read_secret(Path::new(p)).map_err(|e| at(line, &format!("{fk}: {e:#}")))?;
        root.get_mut().insert(
            Spanned::new(span.clone(), Cow::Owned(k.name.clone())),
            Spanned::new(span, DeValue::String(Cow::Owned(secret))),
        );
    }
    let s = S::deserialize(toml::de::Deserializer::from(root)).map_err(toml_err)?;
    to_object(&s)
}

/// Put one given value in place, checked against its key alone so an
/// error names where it came from.
fn apply<S: Settings>(keys: &[Key], obj: &mut Map<String, Value>, g: &Given) -> anyhow::Result<()> {
    let k = keys
        .iter()
        .find(|k| k.name == g.key)
        .ok_or_else(|| anyhow!("{}: {} has no setting {:?}", g.shown, S::COMMAND, g.key))?;
    let value = match &g.raw {
        Raw::Values(v) => parse_values(k.kind, v).map_err(anyhow::Error::msg),
        Raw::File(p) => {
            read_secret(p).and_then(|s| parse_one(k.kind, &s).map_err(anyhow::Error::msg))
        }
    }
    .map_err(|e| anyhow!("{}: {e:#}", g.shown))?;
    let mut alone = Map::new();
    alone.insert(k.name.clone(), value.clone());
    serde_json::from_value::<S>(Value::Object(alone)).map_err(|e| anyhow!("{}: {e}", g.shown))?;
    obj.insert(k.name.clone(), value);
    Ok(())
}

/// Defaults, then the file, then the environment, then the flags.
fn layered<S: Settings>(
    file: Option<&Path>,
    flags: &Keys<S>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<S> {
    check_env(env)?;
    let keys = schema::<S>()?;
    let mut obj = match file {
        Some(p) => file_layer::<S>(p, &keys)?,
        None => to_object(&S::default())?,
    };
    for g in env_layer(&keys, env)?.iter().chain(&flags.given) {
        apply::<S>(&keys, &mut obj, g)?;
    }
    serde_json::from_value(Value::Object(obj)).context("combining the settings")
}

/// `--print-config`: the effective settings on stdout.
fn print_settings<S: Serialize>(s: &S, format: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let text = match format {
        "json" => serde_json::to_string_pretty(s)? + "\n",
        _ => toml::to_string(s).context("printing the settings as TOML")?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .context("writing the settings")
}

// ---------------------------------------------------------------------------
// The master
// ---------------------------------------------------------------------------

impl Settings for MasterConfig {
    const COMMAND: &'static str = "kiln master";
    const ENV_PREFIX: &'static str = "KILN_";
    const FILE_ONLY: &'static [&'static str] = &["target", "project", "mqtt"];
    const ALIASES: &'static [Alias] = &[Alias {
        key: "server_names",
        env: &[],
        flags: &["server-name"],
    }];
    fn help(key: &str) -> Option<&'static str> {
        Some(match key {
            "data" => "Data directory (database, CA, files)",
            "api_listen" => "HTTP API address",
            "api_tls" => "Serve the HTTP API over TLS (certificate from the master's CA)",
            "worker_listen" => "Worker endpoint address (gRPC over mutual TLS)",
            "server_names" => "Extra names for the worker endpoint certificate (comma separated)",
            "lease_secs" => "Lease of a running job, renewed by heartbeats, in seconds",
            "max_attempts" => "Attempts before a job fails for good",
            "max_upload" => "Largest SRPM upload, in bytes",
            "max_artifact" => "Largest artifact, in bytes",
            "max_job_upload" => "What one job attempt may stage in all, in bytes",
            "max_job_files" => "How many files one job attempt may stage",
            "default_target" => "The target of a submit that names none",
            "api_header_timeout_secs" => {
                "Seconds an API client may take to send a request's headers (idle connections close)"
            }
            "api_max_connections" => "API connections served at once; past it a new one is closed",
            "log_cap" => "Build log cap per job, in bytes",
            "notify_retention_days" => {
                "Days delivered and dead notifications are kept before they are pruned"
            }
            "job_timeout_secs" => "Per-job timeout, in seconds",
            "token_ttl_secs" => "How long an enrollment token stays valid, in seconds",
            "cert_days" => "Validity of worker certificates, in days",
            "durability" => "`full` (fsync every commit) or `normal` (survives a process crash)",
            "createrepo" => "The createrepo_c program",
            "public_url" => {
                "How workers and people reach the API (buildroots read the published repositories there)"
            }
            "hook_max_bytes" => "The largest webhook body taken, in bytes",
            "keep_releases" => "Old versions kept per channel of a release besides `latest`",
            "web_public" => {
                "Anyone may read the web pages and the API (false: reading needs a token or a web session)"
            }
            _ => return None,
        })
    }
}

#[derive(Args, Default)]
pub struct MasterArgs {
    /// TOML config file.
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (toml or json) and exit.
    #[arg(
        long,
        hide = true,
        value_name = "FORMAT",
        num_args = 0..=1,
        default_missing_value = "toml",
        value_parser = ["toml", "json"]
    )]
    pub print_config: Option<String>,
    #[command(flatten)]
    pub keys: Keys<MasterConfig>,
}

impl MasterArgs {
    /// The settings as layered, not yet checked.
    fn settings(&self) -> anyhow::Result<MasterConfig> {
        layered(self.config.as_deref(), &self.keys, &kiln_env())
    }

    /// The effective settings, checked.
    pub fn into_config(self) -> anyhow::Result<MasterConfig> {
        let mut c = self.settings()?;
        c.validate()?;
        Ok(c)
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made (install it
/// before saying "listening", so a stop sent at once is not the default
/// action that kills the process without its clean shutdown).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        })
    }

    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    Signals::install()?.wait().await;
    Ok(())
}

/// Close the database (queued writes commit, the WAL is folded into the
/// file), off the async threads and within a bound: a stop never hangs.
pub async fn stop_store(store: &kiln_store::Store) {
    let st = store.clone();
    let closing = tokio::task::spawn_blocking(move || st.close());
    if tokio::time::timeout(std::time::Duration::from_secs(20), closing)
        .await
        .is_err()
    {
        tracing::error!("the database did not close within 20 s; stopping anyway");
    }
}

pub async fn start_master(cfg: MasterConfig) -> anyhow::Result<Master> {
    let data = cfg.data.clone();
    let m = Master::start(cfg)
        .await
        .with_context(|| format!("starting the master in {}", data.display()))?;
    Ok(m)
}

pub async fn run_master(a: MasterArgs) -> anyhow::Result<i32> {
    if let Some(format) = &a.print_config {
        let mut c = a.settings()?;
        // Checked like a real start, printed as given (without the
        // implicit `default` target the check adds), secrets hidden.
        c.clone().validate()?;
        for p in &mut c.projects {
            if p.secret.is_some() {
                p.secret = Some("<hidden>".into());
            }
        }
        if let Some(m) = &mut c.mqtt {
            if m.password.is_some() {
                m.password = Some("<hidden>".into());
            }
        }
        print_settings(&c, format)?;
        return Ok(0);
    }
    let cfg = a.into_config()?;
    let signals = Signals::install()?;
    let m = start_master(cfg).await?;
    println!(
        "listening api={}://{} worker=https://{}",
        if m.core.cfg.api_tls { "https" } else { "http" },
        m.api_addr,
        m.worker_addr
    );
    tracing::info!("admin token in {}", m.core.paths.admin_token().display());
    crate::systemd::notify("READY=1");
    signals.wait().await;
    tracing::info!("stopping");
    crate::systemd::notify("STOPPING=1");
    stop_store(&m.core.store).await;
    Ok(0)
}

// ---------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------

/// The worker's settings (its config file, `KILN_WORKER_<KEY>`, `--<key>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Directory written by `kiln worker enroll`.
    pub dir: PathBuf,
    /// Worker name (must match the enrolled certificate).
    pub name: Option<String>,
    /// Master URL (default: the one enrolled with).
    pub master: Option<String>,
    pub arches: Vec<String>,
    pub channels: Vec<String>,
    pub capacity: u32,
    /// Job directories and input cache (default: DIR/work).
    pub work: Option<PathBuf>,
    pub backend: String,
    pub nodeps: String,
    pub sandbox: String,
    /// dnf's package cache for buildroots is kept under this many MB.
    pub dnf_cache_mb: u64,
    /// Take only jobs of targets with a buildroot.
    pub no_host_builds: bool,
    /// The private key srpm jobs fetch ssh:// repositories with.
    pub git_ssh_key: Option<PathBuf>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            dir: PathBuf::from("/var/lib/kiln-worker"),
            name: None,
            master: None,
            arches: vec![kiln_core::names::host_arch().to_string()],
            channels: vec!["default".into()],
            capacity: 1,
            work: None,
            backend: "rpmbuild".into(),
            nodeps: "auto".into(),
            sandbox: "on".into(),
            dnf_cache_mb: 4096,
            no_host_builds: false,
            git_ssh_key: None,
        }
    }
}

impl Settings for WorkerSettings {
    const COMMAND: &'static str = "kiln worker";
    const ENV_PREFIX: &'static str = "KILN_WORKER_";
    const FILE_ONLY: &'static [&'static str] = &[];
    const ALIASES: &'static [Alias] = &[
        Alias {
            key: "master",
            env: &["KILN_MASTER"],
            flags: &[],
        },
        Alias {
            key: "arches",
            env: &["KILN_ARCH"],
            flags: &["arch"],
        },
        Alias {
            key: "channels",
            env: &["KILN_CHANNEL"],
            flags: &["channel"],
        },
        Alias {
            key: "capacity",
            env: &["KILN_CAPACITY"],
            flags: &[],
        },
        Alias {
            key: "work",
            env: &["KILN_WORK"],
            flags: &[],
        },
        Alias {
            key: "backend",
            env: &["KILN_BACKEND"],
            flags: &[],
        },
        Alias {
            key: "nodeps",
            env: &["KILN_NODEPS"],
            flags: &[],
        },
        Alias {
            key: "sandbox",
            env: &["KILN_SANDBOX"],
            flags: &[],
        },
    ];
    fn help(key: &str) -> Option<&'static str> {
        Some(match key {
            "dir" => "Directory written by `kiln worker enroll`",
            "name" => "Worker name (must match the enrolled certificate)",
            "master" => "Master URL (default: the one enrolled with)",
            "arches" => "Arches built here (comma separated); compatible ones are added",
            "channels" => "Channels served (comma separated)",
            "capacity" => "Jobs run at once",
            "work" => "Job directories and input cache (default: DIR/work)",
            "backend" => "`rpmbuild` or `noop` (benchmarks)",
            "nodeps" => "`auto` (when the host rpm database cannot resolve /bin/sh), `yes`, `no`",
            "sandbox" => "Bubblewrap sandbox without network: `auto`, `on`, `off`",
            "dnf_cache_mb" => "dnf's package cache for buildroots is kept under this many MB",
            "git_ssh_key" => "The private key for ssh:// repositories of builds from git",
            "no_host_builds" => {
                "Take only jobs of targets with a buildroot (none built on this system)"
            }
            _ => return None,
        })
    }
}

fn parse_nodeps(v: &str) -> anyhow::Result<Option<bool>> {
    Ok(match v {
        "auto" => None,
        "yes" | "true" | "on" => Some(true),
        "no" | "false" | "off" => Some(false),
        o => bail!("nodeps must be auto, yes or no, not {o:?}"),
    })
}

impl WorkerSettings {
    /// Check every value (nothing is run).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.arches.is_empty() || self.channels.is_empty() {
            bail!("a worker needs at least one arch and one channel");
        }
        for arch in &self.arches {
            kiln_core::names::check_arch(arch)?;
        }
        for c in &self.channels {
            kiln_core::names::check_ident("channel", c)?;
        }
        if self.capacity == 0 {
            bail!("capacity must be at least 1");
        }
        if !matches!(self.backend.as_str(), "rpmbuild" | "noop") {
            bail!("unknown backend {:?} (rpmbuild, noop)", self.backend);
        }
        parse_nodeps(&self.nodeps)?;
        self.sandbox
            .parse::<Sandbox>()
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }

    pub fn into_worker_config(self) -> anyhow::Result<kiln_worker::WorkerConfig> {
        self.check()?;
        let backend = make_backend(&self.backend, &self.nodeps, &self.sandbox)?;
        Ok(kiln_worker::WorkerConfig {
            work: self.work.unwrap_or_else(|| self.dir.join("work")),
            name: self.name,
            master: self.master,
            dir: self.dir,
            arches: self.arches,
            channels: self.channels,
            capacity: self.capacity,
            backend,
            announce: true,
            dnf_cache_mb: self.dnf_cache_mb,
            no_host_builds: self.no_host_builds,
            git_ssh_key: self.git_ssh_key,
        })
    }
}

#[derive(Args, Default)]
pub struct WorkerArgs {
    /// TOML config file.
    #[arg(long, env = "KILN_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (toml or json) and exit.
    #[arg(
        long,
        hide = true,
        value_name = "FORMAT",
        num_args = 0..=1,
        default_missing_value = "toml",
        value_parser = ["toml", "json"]
    )]
    pub print_config: Option<String>,
    #[command(flatten)]
    pub keys: Keys<WorkerSettings>,
}

impl WorkerArgs {
    /// The settings as layered, not yet checked.
    pub fn settings(&self) -> anyhow::Result<WorkerSettings> {
        layered(self.config.as_deref(), &self.keys, &kiln_env())
    }
}

fn host_rpmdb_usable() -> bool {
    std::process::Command::new("rpm")
        .args(["-q", "--whatprovides", "/bin/sh"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn make_backend(
    backend: &str,
    nodeps: &str,
    sandbox: &str,
) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match backend {
        "rpmbuild" => {
            let nodeps = parse_nodeps(nodeps)?.unwrap_or_else(|| !host_rpmdb_usable());
            let sandbox: Sandbox = sandbox.parse().map_err(anyhow::Error::msg)?;
            Arc::new(Rpmbuild { nodeps, sandbox })
        }
        "noop" => Arc::new(Noop),
        o => bail!("unknown backend {o:?} (rpmbuild, noop)"),
    })
}

pub fn worker_config(a: WorkerArgs) -> anyhow::Result<kiln_worker::WorkerConfig> {
    a.settings()?.into_worker_config()
}

pub async fn run_worker(a: WorkerArgs) -> anyhow::Result<i32> {
    if let Some(format) = &a.print_config {
        let s = a.settings()?;
        s.check()?;
        print_settings(&s, format)?;
        return Ok(0);
    }
    let cfg = worker_config(a)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Caught before the worker says anything, so an early stop drains too.
    let signals = Signals::install()?;
    tokio::spawn(async move {
        signals.wait().await;
        crate::systemd::notify("STOPPING=1");
        let _ = stop_tx.send(true);
    });
    // Ready once running: it connects (and reconnects) to the master on
    // its own, so a master that is down does not hold up the unit.
    crate::systemd::notify("READY=1");
    kiln_worker::run(cfg, stop_rx).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_master_key_has_a_variable_and_a_flag() {
        let keys = schema::<MasterConfig>().unwrap();
        let k = keys.iter().find(|k| k.name == "token_ttl_secs").unwrap();
        assert_eq!(
            (k.env.as_str(), k.flag.as_str()),
            ("KILN_TOKEN_TTL_SECS", "token-ttl-secs")
        );
        assert_eq!(k.kind, Kind::Int);
        let k = keys.iter().find(|k| k.name == "default_target").unwrap();
        assert_eq!(k.kind, Kind::Str, "an unset optional key takes a string");
        assert!(
            keys.iter().all(|k| k.name != "target"),
            "targets are file-only"
        );
        assert!(
            keys.iter().all(|k| MasterConfig::help(&k.name).is_some()),
            "every key has help"
        );
        let keys = schema::<WorkerSettings>().unwrap();
        assert!(keys.iter().all(|k| WorkerSettings::help(&k.name).is_some()));
    }

    #[test]
    fn values_are_read_by_the_type_of_the_default() {
        assert_eq!(parse_one(Kind::Bool, "yes"), Ok(Value::Bool(true)));
        assert_eq!(parse_one(Kind::Bool, "0"), Ok(Value::Bool(false)));
        assert!(parse_one(Kind::Bool, "maybe").is_err());
        assert_eq!(parse_one(Kind::Int, " 42 "), Ok(Value::from(42u64)));
        assert!(parse_one(Kind::Int, "4x").is_err());
        assert_eq!(
            parse_values(Kind::List, &["a, b".into(), "c".into()]),
            Ok(serde_json::json!(["a", "b", "c"]))
        );
        assert_eq!(
            parse_values(Kind::Int, &["1".into(), "2".into()]),
            Ok(Value::from(2u64))
        );
    }

    #[test]
    fn layers_in_order_and_errors_name_their_source() {
        let mut flags = Keys::<MasterConfig>::default();
        flags.set("lease_secs", "9");
        let c: MasterConfig = layered(
            None,
            &flags,
            &env(&[("KILN_LEASE_SECS", "7"), ("KILN_CERT_DAYS", "30")]),
        )
        .unwrap();
        assert_eq!((c.lease_secs, c.cert_days), (9, 30));
        let e =
            layered::<MasterConfig>(None, &Keys::default(), &env(&[("KILN_DURABILITY", "fast")]))
                .unwrap_err()
                .to_string();
        assert!(
            e.starts_with("KILN_DURABILITY: ") && e.contains("fast"),
            "{e}"
        );
    }

    #[test]
    fn a_variable_that_looks_like_a_setting_is_an_error() {
        for bad in ["KILN_LEASE_SEC", "KILN_DATA_DIR", "KILN_WORKER_ARCH"] {
            let e = check_env(&env(&[(bad, "1")])).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("did you mean"), "{e}");
        }
        check_env(&env(&[
            ("KILN_URL", "x"),
            ("KILN_FUZZ_SEED", "1"),
            ("KILN_SOMETHING_UNRELATED", "1"),
            ("KILN_ARCH", "x86_64"),
            ("KILN_DATA_FILE", "/x"),
        ]))
        .unwrap();
    }

    #[test]
    fn old_and_new_worker_names_must_agree() {
        let keys = schema::<WorkerSettings>().unwrap();
        let g = env_layer(
            &keys,
            &env(&[("KILN_ARCH", "x86_64"), ("KILN_WORKER_ARCHES", "x86_64")]),
        )
        .unwrap();
        assert_eq!(g.len(), 1);
        assert!(env_layer(
            &keys,
            &env(&[("KILN_ARCH", "x86_64"), ("KILN_WORKER_ARCHES", "aarch64")])
        )
        .is_err());
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("LEASE_SEC", "LEASE_SECS"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
