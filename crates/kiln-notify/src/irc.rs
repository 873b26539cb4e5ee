//! IRC: one persistent connection per sink (being written).

use std::path::PathBuf;

use crate::{Notice, NotifyError, Result};

/// Where and as whom to connect (secrets already read from their files).
#[derive(Debug, Clone)]
pub struct IrcConfig {
    pub server: String,
    pub port: u16,
    pub tls: bool,
    /// Extra CA to trust (PEM), besides the system's roots.
    pub ca_file: Option<PathBuf>,
    pub nick: String,
    /// NickServ or SASL PLAIN password.
    pub password: Option<String>,
    /// Use SASL PLAIN with `password` (else NickServ IDENTIFY).
    pub sasl: bool,
    /// Channels to join and send to (`#name`).
    pub channels: Vec<String>,
}

/// A running connection (reconnects by itself).
pub struct Irc {
    _cfg: IrcConfig,
}

impl Irc {
    pub fn start(cfg: IrcConfig) -> Result<Irc> {
        Ok(Irc { _cfg: cfg })
    }

    /// Send the notice's line to every channel; `Ok` once written.
    pub async fn deliver(&self, _n: &Notice) -> Result<String> {
        Err(NotifyError::Config(
            "the IRC transport is not built yet".into(),
        ))
    }
}
