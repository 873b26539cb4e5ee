//! E-mail over SMTP (being written).

use std::path::PathBuf;

use crate::{Notice, NotifyError, Result};

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (loopback relays only).
    None,
    /// STARTTLS after connecting (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub server: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Kiln <kiln@example.org>`.
    pub from: String,
    /// Fixed recipients.
    pub to: Vec<String>,
}

pub struct Email {
    _cfg: EmailConfig,
}

impl Email {
    pub fn new(cfg: EmailConfig) -> Result<Email> {
        Ok(Email { _cfg: cfg })
    }

    /// Send one message to `to` plus `extra_to` (the submitter's address).
    pub async fn deliver(&self, _n: &Notice, _extra_to: &[String]) -> Result<String> {
        Err(NotifyError::Config(
            "the e-mail transport is not built yet".into(),
        ))
    }
}
