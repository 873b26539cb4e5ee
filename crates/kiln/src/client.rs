//! The CLI's HTTP client. Reads `KILN_URL` and `KILN_TOKEN` (or
//! `KILN_TOKEN_FILE`), and `KILN_CA` (the master's `ca/ca.crt`, to trust an
//! `https://` API), else `~/.config/kiln/client.toml`. Bodies are the
//! types of `kiln_api`, the ones the master serves.

use anyhow::{anyhow, bail, Context};
use kiln_api::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
    ca: Option<std::path::PathBuf>,
}

/// The HTTP client, trusting the master's CA besides the usual roots when
/// one is given.
fn http_client(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder();
    if let Some(p) = ca {
        let pem = std::fs::read(p).with_context(|| format!("reading CA file {}", p.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("CA file {} holds no PEM certificate", p.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().context("creating the HTTP client")
}

pub struct Client {
    pub base: String,
    token: Option<String>,
    pub http: reqwest::Client,
}

/// An error answer from the master.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Client> {
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: http_client(None)?,
        })
    }

    pub fn from_env() -> anyhow::Result<Client> {
        let file: ClientFile = match std::env::var_os("HOME") {
            Some(h) => {
                let p = std::path::Path::new(&h).join(".config/kiln/client.toml");
                match std::fs::read_to_string(&p) {
                    Ok(t) => toml::from_str(&t).with_context(|| format!("in {}", p.display()))?,
                    Err(_) => ClientFile::default(),
                }
            }
            None => ClientFile::default(),
        };
        let base = std::env::var("KILN_URL")
            .ok()
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token_file = std::env::var_os("KILN_TOKEN_FILE")
            .map(std::path::PathBuf::from)
            .or(file.token_file);
        let token = match (std::env::var("KILN_TOKEN").ok().or(file.token), token_file) {
            (Some(t), _) => Some(t),
            (None, Some(p)) => Some(
                std::fs::read_to_string(&p)
                    .with_context(|| format!("reading token file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let ca = std::env::var_os("KILN_CA")
            .map(std::path::PathBuf::from)
            .or(file.ca);
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: http_client(ca.as_deref())?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = self.auth(rb).send().await.map_err(|e| {
            let why = root(&e);
            let hint = if why.contains("certificate") {
                " (trust the master's CA: KILN_CA=<data>/ca/ca.crt, or `ca` in client.toml)"
            } else {
                ""
            };
            anyhow!("cannot reach the master at {}: {why}{hint}", self.base)
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => Err(ApiError {
                code: e.code,
                message: e.error,
            }
            .into()),
            Err(_) => bail!("the master answered {status}: {}", text.trim()),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let r = self.send(self.http.get(self.url(path))).await?;
        r.json().await.context("reading the master's answer")
    }

    /// GET with a query (a `kiln_api` query type).
    pub async fn get_with<Q: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> anyhow::Result<T> {
        let r = self
            .send(self.http.get(self.url(path)).query(query))
            .await?;
        r.json().await.context("reading the master's answer")
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let r = self.send(self.http.post(self.url(path)).json(body)).await?;
        r.json().await.context("reading the master's answer")
    }
}

fn root(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}
