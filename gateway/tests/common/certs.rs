//! A throw-away certificate for `localhost` and 127.0.0.1 (made at test time; no key is
//! committed), its files, and a rustls client that trusts it.

use rustls::client::Resumption;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

pub struct Certs {
    pub dir: PathBuf,
    pub cert: rcgen::Certificate,
}

impl Certs {
    /// An ECDSA P-256 self-signed certificate in `cert.pem`/`key.pem` of a fresh directory.
    pub fn new(tag: &str) -> Certs {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pg-certs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Certs { dir, cert }
    }

    /// A file in the directory, as a string argument.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// A client that trusts this certificate, with a session cache of its own.
    pub fn client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::in_memory_sessions(64);
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
