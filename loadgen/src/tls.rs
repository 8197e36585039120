//! The TLS client for `https://` / `wss://` targets: trusts `--ca`, or anything with
//! `--insecure`; one session cache for every client, sized for all of them, so a client
//! that comes back resumes.
//!
//! rustls' own cache keeps at most 8 TLS 1.3 tickets per server name, and every client of
//! a run dials the same name: with more than a few clients most would find none and make
//! a full handshake. [`TicketPool`] keeps as many as there are clients (twice that: a
//! server sends two per handshake), newest first.

use crate::cli::CommonArgs;
use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, SignatureScheme};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The client config `--ca` / `--insecure` ask for, and its ticket pool; `None` when
/// neither is given.
pub fn client_config(
    args: &CommonArgs,
    clients: u64,
) -> anyhow::Result<Option<(Arc<ClientConfig>, Arc<TicketPool>)>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let mut config = match (&args.ca, args.insecure) {
        (Some(_), true) => bail!("--ca and --insecure exclude each other"),
        (None, false) => {
            if args.tls {
                bail!("--tls needs --ca FILE or --insecure");
            }
            return Ok(None);
        }
        (Some(ca), false) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("read --ca {}", ca.display()))?
            {
                roots.add(c.with_context(|| format!("parse --ca {}", ca.display()))?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let pool = Arc::new(TicketPool::new((2 * clients).clamp(256, 4 << 20) as usize));
    config.resumption = if args.tls_no_resume {
        rustls::client::Resumption::disabled()
    } else {
        rustls::client::Resumption::store(pool.clone())
    };
    Ok(Some((Arc::new(config), pool)))
}

/// TLS 1.3 tickets by server name, up to `cap` in all (the oldest dropped first); the
/// rest (key-exchange hints, TLS 1.2 sessions) in rustls' own cache.
pub struct TicketPool {
    cap: usize,
    tickets: Mutex<(
        usize,
        HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>,
    )>,
    rest: ClientSessionMemoryCache,
    /// Handshakes that found a ticket to offer.
    pub offered: AtomicU64,
}

impl std::fmt::Debug for TicketPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketPool")
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl TicketPool {
    pub fn new(cap: usize) -> TicketPool {
        TicketPool {
            cap: cap.max(1),
            tickets: Mutex::new((0, HashMap::new())),
            rest: ClientSessionMemoryCache::new(256),
            offered: AtomicU64::new(0),
        }
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.rest.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.rest.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.rest.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.rest.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.rest.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut g = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_name) = &mut *g;
        by_name.entry(server_name).or_default().push_back(value);
        *total += 1;
        if *total > self.cap {
            // Drop the oldest ticket of the longest list.
            if let Some(list) = by_name.values_mut().max_by_key(|l| l.len()) {
                list.pop_front();
                *total -= 1;
            }
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut g = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_name) = &mut *g;
        let t = by_name.get_mut(server_name)?.pop_back()?;
        *total -= 1;
        self.offered.fetch_add(1, Ordering::Relaxed);
        Some(t)
    }
}

/// `--insecure`: every certificate is taken (handshake signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
