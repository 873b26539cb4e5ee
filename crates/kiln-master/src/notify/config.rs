//! `[[notify]]` tables: one flat table per sink, its `kind` saying which
//! keys it takes. [`SinkConfig::prepare`] checks them (per kind: the keys it
//! needs are there, no key of another kind is set) and reads the secrets:
//! `url`, `secret` and `password` may each be given as `<key>_file` (a
//! file, white space around it trimmed) or in the environment as
//! `KILN_NOTIFY_<NAME>_<KEY>` (the sink's name upper-cased, `-` as `_`)
//! when the table gives neither.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The events a sink may ask for.
pub const EVENTS: &[&str] = &[
    "build.queued",
    "build.started",
    "build.succeeded",
    "build.failed",
    "build.canceled",
    "build.skipped",
    "build.published",
    "job.failed",
    "worker.lost",
    "worker.enrolled",
    "worker.revoked",
    "release.promoted",
    "release.rolled_back",
];

/// What kind of service a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Slack,
    Webhook,
    Irc,
    Mqtt,
    Email,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Slack => "slack",
            SinkKind::Webhook => "webhook",
            SinkKind::Irc => "irc",
            SinkKind::Mqtt => "mqtt",
            SinkKind::Email => "email",
        }
    }
}

/// One `[[notify]]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// Event names (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Target globs (`*`, `?`; default: all). Events of no target
    /// (workers) go to every sink that asks for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// One delivery attempt's limit (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// How long an event is retried before it is marked dead (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_hours: Option<u64>,
    /// For tests (not documented as a setting): the first wait after a
    /// failure in ms (default 1000), and the maximum age in seconds
    /// (overrides `max_age_hours`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_base_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,

    // slack, webhook (and mqtt: the broker's URL)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    // webhook
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,

    // irc, email
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    // irc
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    // irc, mqtt, email
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    // mqtt, email
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    // mqtt
    /// The name for `url` (mqtt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The name for `prefix` (mqtt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_last: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    // email
    /// The spelling of `server` (and `port`): `HOST` or `HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<String>,
    /// `none`, `starttls` (default) or `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_submitter: Option<bool>,
}

/// Which kinds take each kind-specific key.
fn kinds_of(key: &str) -> &'static [SinkKind] {
    use SinkKind::*;
    match key {
        "url" | "url_file" => &[Slack, Webhook, Mqtt],
        "secret" | "secret_file" => &[Webhook],
        "server" | "port" => &[Irc, Email],
        "tls" | "nick" | "sasl" | "channels" => &[Irc],
        "ca_file" | "password" | "password_file" => &[Irc, Mqtt, Email],
        "username" => &[Mqtt, Email],
        "broker" | "prefix" | "topic_prefix" | "retain_last" | "cert_file" | "key_file" => &[Mqtt],
        "smtp" | "smtp_tls" | "from" | "to" | "to_submitter" => &[Email],
        _ => &[],
    }
}

/// A sink name: what `kiln notify test NAME` and the URL path take.
fn check_name(n: &str) -> Result<(), String> {
    if n.is_empty()
        || n.len() > 64
        || n.starts_with(['-', '.'])
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "name {n:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
        ));
    }
    Ok(())
}

/// `*` any run, `?` one character; the rest literal.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn read_secret(name: &str, key: &str, f: &std::path::Path) -> Result<String, String> {
    let s = std::fs::read_to_string(f)
        .map_err(|e| format!("reading {key}_file {}: {e}", f.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(format!(
            "{key}_file {} of sink {name} is empty",
            f.display()
        ));
    }
    Ok(s)
}

impl SinkConfig {
    /// The keys set, by name (for the per-kind check).
    fn set_keys(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        macro_rules! k {
            ($($f:ident),*) => {$( if self.$f.is_some() { v.push(stringify!($f)); } )*};
        }
        k!(
            url,
            url_file,
            secret,
            secret_file,
            server,
            port,
            tls,
            nick,
            sasl,
            channels,
            ca_file,
            password,
            password_file,
            username,
            broker,
            prefix,
            topic_prefix,
            retain_last,
            cert_file,
            key_file,
            smtp,
            smtp_tls,
            from,
            to,
            to_submitter
        );
        v
    }

    /// Check the table and read its secrets (`*_file`, environment) into
    /// their keys. Errors name the key.
    pub fn prepare(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        check_name(&self.name)?;
        let kind = self.kind;
        for k in self.set_keys() {
            if !kinds_of(k).contains(&kind) {
                let takes: Vec<&str> = kinds_of(k).iter().map(|k| k.as_str()).collect();
                return Err(format!(
                    "{k} is not a key of a {} sink (only of {})",
                    kind.as_str(),
                    takes.join(", ")
                ));
            }
        }
        if let Some(ev) = &self.events {
            if ev.is_empty() {
                return Err("events is empty (leave it out for every event)".into());
            }
            for e in ev {
                if !EVENTS.contains(&e.as_str()) {
                    return Err(format!(
                        "events: unknown event {e:?} (known: {})",
                        EVENTS.join(", ")
                    ));
                }
            }
        }
        if let Some(ts) = &self.targets {
            if ts.is_empty() {
                return Err("targets is empty (leave it out for every target)".into());
            }
            for t in ts {
                if t.is_empty()
                    || t.len() > 128
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.+*?".contains(c))
                {
                    return Err(format!(
                        "targets: {t:?} is not a target name or glob (letters, digits, -_.+ and * ?)"
                    ));
                }
            }
        }
        if self.timeout_secs == Some(0) {
            return Err("timeout_secs must be at least 1".into());
        }
        if self.max_age_hours == Some(0) || self.max_age_secs == Some(0) {
            return Err("max_age_hours must be at least 1".into());
        }
        if self.retry_base_ms == Some(0) {
            return Err("retry_base_ms must be at least 1".into());
        }
        // Secrets: the key, its file, or the environment.
        let env_key = |key: &str| {
            format!(
                "KILN_NOTIFY_{}_{}",
                self.name.to_ascii_uppercase().replace(['-', '.'], "_"),
                key.to_ascii_uppercase()
            )
        };
        let secret = |key: &str,
                      val: &mut Option<String>,
                      file: &mut Option<PathBuf>|
         -> Result<(), String> {
            if let Some(f) = file.take() {
                if val.is_some() {
                    return Err(format!("{key} and {key}_file are both set"));
                }
                *val = Some(read_secret(&self.name, key, &f)?);
            } else if val.is_none() {
                if let Some(v) = env(&env_key(key)).filter(|v| !v.trim().is_empty()) {
                    *val = Some(v.trim().to_string());
                }
            }
            Ok(())
        };
        if matches!(kind, SinkKind::Slack | SinkKind::Webhook) {
            let (mut v, mut f) = (self.url.take(), self.url_file.take());
            secret("url", &mut v, &mut f)?;
            self.url = v;
        }
        if kind == SinkKind::Webhook {
            let (mut v, mut f) = (self.secret.take(), self.secret_file.take());
            secret("secret", &mut v, &mut f)?;
            self.secret = v;
        }
        if matches!(kind, SinkKind::Irc | SinkKind::Mqtt | SinkKind::Email) {
            let (mut v, mut f) = (self.password.take(), self.password_file.take());
            secret("password", &mut v, &mut f)?;
            self.password = v;
        }
        match kind {
            SinkKind::Slack | SinkKind::Webhook => {
                let Some(u) = &self.url else {
                    return Err(format!(
                        "a {} sink needs url (or url_file, or {})",
                        kind.as_str(),
                        env_key("url")
                    ));
                };
                if !(u.starts_with("http://") || u.starts_with("https://"))
                    || u.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err("url is not an http:// or https:// URL".into());
                }
            }
            SinkKind::Irc => {
                if self.server.as_deref().is_none_or(str::is_empty) {
                    return Err("an irc sink needs server".into());
                }
                if self.nick.as_deref().is_none_or(str::is_empty) {
                    return Err("an irc sink needs nick".into());
                }
                match &self.channels {
                    Some(c) if !c.is_empty() => {
                        if let Some(bad) = c.iter().find(|c| {
                            !c.starts_with(['#', '&'])
                                || c.len() > 50
                                || c.chars()
                                    .any(|x| x.is_control() || x.is_whitespace() || x == ',')
                        }) {
                            return Err(format!("channels: {bad:?} is not a channel name"));
                        }
                    }
                    _ => return Err("an irc sink needs channels".into()),
                }
                if self.sasl == Some(true) && self.password.is_none() {
                    return Err("sasl needs password".into());
                }
            }
            SinkKind::Mqtt => {
                if let Some(b) = self.broker.take() {
                    if self.url.is_some() {
                        return Err("url and broker are both set (one name for the same)".into());
                    }
                    self.url = Some(b);
                }
                if let Some(p) = self.topic_prefix.take() {
                    if self.prefix.is_some() {
                        return Err("prefix and topic_prefix are both set".into());
                    }
                    self.prefix = Some(p);
                }
                match &self.url {
                    Some(u) if u.starts_with("mqtt://") || u.starts_with("mqtts://") => {}
                    Some(_) => return Err("url must be mqtt://HOST:PORT or mqtts://".into()),
                    None => return Err("an mqtt sink needs url (or broker)".into()),
                }
                if let Some(p) = &self.prefix {
                    if p.is_empty()
                        || p.contains(['+', '#'])
                        || p.starts_with('$')
                        || p.ends_with('/')
                        || p.chars().any(char::is_control)
                    {
                        return Err(format!(
                            "prefix {p:?}: no wildcard, no '$' first, no '/' last"
                        ));
                    }
                }
                if self.password.is_some() && self.username.is_none() {
                    return Err("password needs username".into());
                }
                if self.cert_file.is_some() != self.key_file.is_some() {
                    return Err("cert_file and key_file go together".into());
                }
            }
            SinkKind::Email => {
                if let Some(s) = self.smtp.take() {
                    if self.server.is_some() {
                        return Err("smtp and server are both set (one name for the same)".into());
                    }
                    match s.rsplit_once(':') {
                        Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                            let port = p
                                .parse::<u16>()
                                .map_err(|_| format!("smtp {s:?}: bad port"))?;
                            if self.port.is_some_and(|x| x != port) {
                                return Err("smtp names a port and port another".into());
                            }
                            self.port = Some(port);
                            self.server =
                                Some(h.trim_start_matches('[').trim_end_matches(']').into());
                        }
                        _ => self.server = Some(s),
                    }
                }
                if self.server.as_deref().is_none_or(str::is_empty) {
                    return Err("an email sink needs server (or smtp)".into());
                }
                if let Some(t) = &self.smtp_tls {
                    if !matches!(t.as_str(), "none" | "starttls" | "tls") {
                        return Err(format!("smtp_tls {t:?}: none, starttls or tls"));
                    }
                }
                let ok_addr = |a: &str| {
                    a.contains('@')
                        && a.len() <= 320
                        && !a.chars().any(|c| c.is_control() || c == ',')
                };
                match &self.from {
                    Some(f) if ok_addr(f) => {}
                    Some(f) => return Err(format!("from {f:?} is not an address")),
                    None => return Err("an email sink needs from".into()),
                }
                let to = self.to.as_deref().unwrap_or(&[]);
                if let Some(bad) = to.iter().find(|a| !ok_addr(a)) {
                    return Err(format!("to: {bad:?} is not an address"));
                }
                if to.is_empty() && self.to_submitter != Some(true) {
                    return Err("an email sink needs to (or to_submitter = true)".into());
                }
                if self.password.is_some() && self.username.is_none() {
                    return Err("password needs username".into());
                }
            }
        }
        Ok(())
    }

    /// Whether this sink takes `event` of `target` (an event without a
    /// target passes the target filter).
    pub fn takes(&self, event: &str, target: Option<&str>) -> bool {
        if event == "test" {
            return true;
        }
        let ev_ok = self
            .events
            .as_ref()
            .is_none_or(|v| v.iter().any(|e| e == event));
        let tg_ok = match (&self.targets, target) {
            (None, _) | (Some(_), None) => true,
            (Some(globs), Some(t)) => globs.iter().any(|g| glob_match(g, t)),
        };
        ev_ok && tg_ok
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(10))
    }

    pub fn max_age(&self) -> Duration {
        match self.max_age_secs {
            Some(s) => Duration::from_secs(s),
            None => Duration::from_secs(self.max_age_hours.unwrap_or(24) * 3600),
        }
    }

    /// The first wait after a failed attempt.
    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms.unwrap_or(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> SinkConfig {
        serde_json::from_value(v).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn globs() {
        assert!(glob_match("c9-*", "c9-x86"));
        assert!(glob_match("*", ""));
        assert!(glob_match("c?", "c9"));
        assert!(!glob_match("c?", "c10"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!glob_match("c9-*", "c10-x"));
    }

    #[test]
    fn per_kind_keys_are_checked() {
        use serde_json::json;
        let mut s =
            parse(json!({"name": "a", "kind": "slack", "url": "https://h/x", "channels": ["#x"]}));
        let e = s.prepare(&no_env).unwrap_err();
        assert_eq!(e, "channels is not a key of a slack sink (only of irc)");
        let mut s = parse(json!({"name": "a", "kind": "webhook"}));
        let e = s.prepare(&no_env).unwrap_err();
        assert!(
            e.contains("needs url") && e.contains("KILN_NOTIFY_A_URL"),
            "{e}"
        );
        let mut s = parse(json!({"name": "my-hook", "kind": "webhook"}));
        s.prepare(&|k| (k == "KILN_NOTIFY_MY_HOOK_URL").then(|| "http://127.0.0.1:9/".into()))
            .unwrap();
        assert_eq!(s.url.as_deref(), Some("http://127.0.0.1:9/"));
        let mut s = parse(
            json!({"name": "a", "kind": "slack", "url": "https://h/x", "events": ["build.exploded"]}),
        );
        assert!(s.prepare(&no_env).unwrap_err().contains("unknown event"));
        let mut s = parse(
            json!({"name": "m", "kind": "mqtt", "broker": "mqtt://127.0.0.1:1883", "topic_prefix": "k"}),
        );
        s.prepare(&no_env).unwrap();
        assert_eq!(
            (s.url.as_deref(), s.prefix.as_deref()),
            (Some("mqtt://127.0.0.1:1883"), Some("k"))
        );
        let mut s = parse(
            json!({"name": "e", "kind": "email", "smtp": "127.0.0.1:2525", "from": "k@x", "to": ["a@x"]}),
        );
        s.prepare(&no_env).unwrap();
        assert_eq!(
            (s.server.as_deref(), s.port),
            (Some("127.0.0.1"), Some(2525))
        );
        let mut s = parse(json!({"name": "i", "kind": "irc", "server": "h", "nick": "kiln"}));
        assert_eq!(
            s.prepare(&no_env).unwrap_err(),
            "an irc sink needs channels"
        );
        assert!(serde_json::from_value::<SinkConfig>(
            json!({"name": "a", "kind": "slack", "bogus": 1})
        )
        .is_err());
    }

    #[test]
    fn secrets_from_files() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("u");
        std::fs::write(&f, "https://hooks.example/T\n").unwrap();
        let mut s = parse(json!({"name": "a", "kind": "slack", "url_file": f}));
        s.prepare(&no_env).unwrap();
        assert_eq!(s.url.as_deref(), Some("https://hooks.example/T"));
        assert_eq!(s.url_file, None);
        let mut s =
            parse(json!({"name": "a", "kind": "slack", "url": "https://x/", "url_file": f}));
        assert_eq!(
            s.prepare(&no_env).unwrap_err(),
            "url and url_file are both set"
        );
    }

    #[test]
    fn filters() {
        let s = parse(serde_json::json!({
            "name": "a", "kind": "slack", "url": "https://h/x",
            "events": ["build.failed"], "targets": ["c9-*"]
        }));
        assert!(s.takes("build.failed", Some("c9-x")));
        assert!(!s.takes("build.failed", Some("c10")));
        assert!(!s.takes("build.succeeded", Some("c9-x")));
        assert!(!s.takes("worker.lost", None));
        assert!(s.takes("test", Some("c10")));
    }
}
