//! The `embedded-tls` scenario's certificates: a broker certificate and a device CA with
//! one client certificate, made fresh for the run (rcgen) as `scripts/stack.sh` would
//! for a plant, so the TLS scenario measures the handshake-free steady state of a
//! mutually authenticated link.

use std::path::Path;

use anyhow::Context;
use bridge::config::EmbeddedTls;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rumqttc::{TlsConfiguration, Transport};

/// What a publisher needs to reach the listener: the CA it trusts, and its own
/// certificate and key (PEM).
#[derive(Clone)]
pub(super) struct ClientTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl ClientTls {
    pub(super) fn transport(&self) -> Transport {
        Transport::tls_with_config(TlsConfiguration::Simple {
            ca: self.ca.clone(),
            alpn: None,
            client_auth: Some((self.cert.clone(), self.key.clone())),
        })
    }
}

/// Writes the broker's files into `dir`; returns its settings and the publishers'.
pub(super) fn make(dir: &Path) -> anyhow::Result<(EmbeddedTls, ClientTls)> {
    let (broker_ca, broker_cert, broker_key) = signed("broker", "127.0.0.1")?;
    let (device_ca, device_cert, device_key) = signed("devices", "bench-publisher")?;
    let write = |name: &str, pem: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let broker = EmbeddedTls {
        cert: write("broker.pem", &broker_cert)?,
        key: write("broker.key", &broker_key)?,
        client_ca: write("devices-ca.pem", &device_ca)?,
    };
    let client = ClientTls {
        ca: broker_ca.into_bytes(),
        cert: device_cert.into_bytes(),
        key: device_key.into_bytes(),
    };
    Ok((broker, client))
}

/// A CA named `name` and a certificate for `subject` it signed: (CA, certificate, key).
fn signed(name: &str, subject: &str) -> anyhow::Result<(String, String, String)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)
        .with_context(|| format!("the {name} CA"))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![subject.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, subject);
    let cert = params
        .signed_by(&key, &ca)
        .with_context(|| format!("the {name} certificate"))?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}
