//! TLS for an MQTT client, the one way every binary that connects to a broker configures
//! it (the agent to the embedded broker, the bridge to Mosquitto in client mode): which
//! CA signs the broker's certificate, and the client's own certificate when the broker
//! asks for one. rustls with ring: pure Rust and a little C, no OpenSSL, and a far smaller
//! binary than rustls' default aws-lc-rs.

use std::path::{Path, PathBuf};

use rumqttc::{TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

/// The `tls` table of an MQTT client's configuration (PEM files).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// The CA certificate(s) that sign the broker's certificate.
    pub ca: PathBuf,
    /// The client's certificate and key, for brokers that authenticate clients by TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A TLS file that could not be used; its text names the key (`{section}.tls.ca`, …).
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot read {}: {error}", path.display())]
pub struct MqttTlsError {
    pub key: String,
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl MqttTls {
    /// What is wrong with it as written (a certificate without its key). The files are
    /// not opened: `--check-config` runs where the configuration is written, the files
    /// live where it runs; [`MqttTls::transport`] names an unreadable one at start.
    pub fn problems(&self, section: &str) -> Vec<String> {
        if self.client_cert.is_some() != self.client_key.is_some() {
            vec![format!(
                "{section}.tls: client_cert and client_key go together"
            )]
        } else {
            Vec::new()
        }
    }

    /// The transport rumqttc connects with, the files read now (call at every
    /// connection, so renewed certificates are picked up).
    pub fn transport(&self, section: &str) -> Result<Transport, MqttTlsError> {
        let read = |key: String, path: &Path| {
            std::fs::read(path).map_err(|error| MqttTlsError {
                key,
                path: path.to_owned(),
                error,
            })
        };
        let ca = read(format!("{section}.tls.ca"), &self.ca)?;
        let client_auth = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((
                read(format!("{section}.tls.client_cert"), cert)?,
                read(format!("{section}.tls.client_key"), key)?,
            )),
            _ => None,
        };
        Ok(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_needs_its_key_and_an_unreadable_file_is_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "read, not parsed, here").unwrap();
        let half = MqttTls {
            ca: ca.clone(),
            client_cert: Some(dir.path().join("client.pem")),
            client_key: None,
        };
        assert_eq!(
            half.problems("mqtt"),
            ["mqtt.tls: client_cert and client_key go together"]
        );
        let missing_key = MqttTls {
            ca: ca.clone(),
            client_cert: Some(ca.clone()),
            client_key: Some(dir.path().join("gone.key")),
        };
        assert!(missing_key.problems("mqtt").is_empty());
        let Err(error) = missing_key.transport("mqtt") else {
            panic!("a missing key file was accepted");
        };
        assert_eq!(error.key, "mqtt.tls.client_key");
        assert!(
            error
                .to_string()
                .starts_with("mqtt.tls.client_key: cannot read"),
            "{error}"
        );
        let Err(error) = (MqttTls {
            ca: dir.path().join("gone.pem"),
            client_cert: None,
            client_key: None,
        })
        .transport("mqtt") else {
            panic!("a missing CA file was accepted");
        };
        assert_eq!(error.key, "mqtt.tls.ca");
    }
}
