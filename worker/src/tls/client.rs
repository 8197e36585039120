//! The TLS client of `https://` gateway links: the gateway's certificate is checked against
//! `--gateway-ca` (or the system's roots) for the URL's host or `--gateway-tls-name`.

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use std::path::Path;
use std::sync::Arc;

/// The client configuration every TLS link of this worker uses.
pub fn link_client_config(ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("read --gateway-ca {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parse --gateway-ca {}", path.display()))?;
            if certs.is_empty() {
                bail!("--gateway-ca {}: no certificate in it", path.display());
            }
            for c in certs {
                roots
                    .add(c)
                    .with_context(|| format!("--gateway-ca {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("no system CA certificates found for https:// gateways; give --gateway-ca");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A reconnecting link resumes (it reconnects after every gateway restart or hiccup).
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    Ok(Arc::new(config))
}

/// The name a gateway's certificate is checked for.
pub fn server_name(host: &str, override_name: Option<&str>) -> anyhow::Result<ServerName<'static>> {
    let name = override_name.unwrap_or(host);
    ServerName::try_from(name.to_owned())
        .with_context(|| format!("{name:?} is not a TLS server name"))
}
