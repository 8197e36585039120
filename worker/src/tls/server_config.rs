//! The worker's rustls server configuration: the certificate chain and key from
//! `--tls-cert`/`--tls-key` (PEM), TLS 1.3 and 1.2, ALPN http/1.1, no early data, and
//! reloaded from the same files on SIGHUP (new handshakes use the new certificate; open
//! connections keep their session).

use super::tickets::FleetTickets;
use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The certificate files and the configuration built from them.
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    /// Kept across reloads, so tickets issued before a reload still resume; holds the
    /// fleet's keys once a gateway sent them.
    tickets: Arc<FleetTickets>,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsFiles> {
        let tickets = FleetTickets::new()?;
        let config = build(cert, key, tickets.clone())?;
        Ok(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            tickets,
            current: RwLock::new(config),
        })
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The ticketer of every handshake (fleet keys go in here).
    pub fn tickets(&self) -> &Arc<FleetTickets> {
        &self.tickets
    }

    /// Reads the files again; on any error the current certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = build(&self.cert, &self.key, self.tickets.clone())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }
}

fn build(cert: &Path, key: &Path, tickets: Arc<FleetTickets>) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read --tls-cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse --tls-cert {}", cert.display()))?;
    if chain.is_empty() {
        bail!("--tls-cert {}: no certificate in it", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("read --tls-key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not make a usable certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The record layer after the handshake is ours (see records.rs).
    config.enable_secret_extraction = true;
    config.max_early_data_size = 0;
    config.ticketer = tickets;
    // One ticket per handshake, not rustls' two: a push client holds one connection, and
    // every resumed handshake brings it a fresh ticket. Saves 2.5-3 µs of server CPU (the
    // second ticket's seal and key derivation) and ~200 B per handshake (tls-handshake,
    // benches/RESULTS.md "TLS").
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}
