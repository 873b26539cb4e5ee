//! MQTT: Reimzul's topics (being written).

use std::path::PathBuf;

use crate::{Notice, NotifyError, Result};

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Topic prefix (`kiln`): `PREFIX/builds/<target>/<state>`, `PREFIX/jobs/<arch>/<state>`.
    pub prefix: String,
    /// Also publish a retained "last state per package" message.
    pub retain_last: bool,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Client certificate and key (PEM), for brokers that want one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A running client (reconnects by itself).
pub struct Mqtt {
    _cfg: MqttConfig,
}

impl Mqtt {
    pub fn start(cfg: MqttConfig) -> Result<Mqtt> {
        Ok(Mqtt { _cfg: cfg })
    }

    /// Publish with QoS 1; `Ok` once the broker acknowledged.
    pub async fn deliver(&self, _n: &Notice) -> Result<String> {
        Err(NotifyError::Config(
            "the MQTT transport is not built yet".into(),
        ))
    }
}
