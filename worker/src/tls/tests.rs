//! The record layer and the session state machine against rustls' own client, in memory:
//! every suite of both versions, resumption, close_notify, tampering, a KeyUpdate.

use super::server_config::TlsFiles;
use super::session::{Failure, Step, Tls};
use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, SupportedCipherSuite};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

/// A socket that holds what the client sent and collects what the server writes.
#[derive(Default)]
struct Pipe {
    inp: VecDeque<u8>,
    out: Vec<u8>,
    eof: bool,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inp.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.inp.len());
        for (b, x) in buf.iter_mut().zip(self.inp.drain(..n)) {
            *b = x;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) struct TestCert {
    pub files: TlsFiles,
    pub der: CertificateDer<'static>,
    pub dir: std::path::PathBuf,
}

/// A self-signed ECDSA certificate for `localhost`, written as PEM files and loaded.
pub(crate) fn test_cert() -> TestCert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "pg-tls-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let files = TlsFiles::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    TestCert {
        files,
        der: cert.der().clone(),
        dir,
    }
}

fn client_config(cert: &TestCert, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let p = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..provider::default_provider()
    };
    let v = suite.version();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[v])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Client -> pipe.
fn send(client: &mut ClientConnection, pipe: &mut Pipe) {
    let mut buf = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut buf).unwrap();
    }
    pipe.inp.extend(buf);
}

/// Pipe output -> client; returns the plaintext the client could read.
fn receive(client: &mut ClientConnection, pipe: &mut Pipe) -> Vec<u8> {
    let bytes = std::mem::take(&mut pipe.out);
    let mut rd = &bytes[..];
    let mut plain = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Err(e) = client.process_new_packets() {
            panic!("client: {e}");
        }
        while let Ok(n) = client.reader().read(&mut chunk) {
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&chunk[..n]);
        }
        if rd.is_empty() {
            return plain;
        }
        client.read_tls(&mut rd).unwrap();
    }
}

/// Runs a handshake to its end; with TLS 1.3 the client's first request rides with its
/// Finished.
fn connect(cert: &TestCert, config: &Arc<ClientConfig>) -> (ClientConnection, Pipe, Tls, bool) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(config.clone(), name).unwrap();
    let mut server = Tls::accept(cert.files.config()).unwrap();
    let mut pipe = Pipe::default();
    let mut scratch = vec![0u8; 16 * 1024];
    let mut asked = false;
    for _ in 0..6 {
        if !client.is_handshaking() && !asked {
            asked = true;
            client
                .writer()
                .write_all(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap();
        }
        send(&mut client, &mut pipe);
        match server.handshake(&mut pipe, &mut scratch) {
            Step::Pending => {}
            Step::Established { resumed } => {
                receive(&mut client, &mut pipe);
                if !asked {
                    // TLS 1.2: the client speaks once it has the server's Finished.
                    client
                        .writer()
                        .write_all(b"GET / HTTP/1.1\r\n\r\n")
                        .unwrap();
                    send(&mut client, &mut pipe);
                }
                return (client, pipe, server, resumed);
            }
            Step::Failed(f) => panic!("handshake failed: {f:?}"),
        }
        receive(&mut client, &mut pipe);
    }
    panic!("handshake did not finish");
}

fn read_all(server: &mut Tls, pipe: &mut Pipe) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 7]; // small on purpose: plaintext is kept between reads
    loop {
        match server.read(pipe, &mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

const SUITES: [SupportedCipherSuite; 6] = [
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

#[test]
fn every_suite_carries_data_both_ways_after_the_secrets_move_over() {
    let cert = test_cert();
    for suite in SUITES {
        let config = client_config(&cert, suite);
        let (mut client, mut pipe, mut server, resumed) = connect(&cert, &config);
        assert!(!resumed, "{suite:?}");
        // The request that came with the client's Finished is readable.
        assert_eq!(
            read_all(&mut server, &mut pipe).unwrap(),
            b"GET / HTTP/1.1\r\n\r\n",
            "{suite:?}"
        );
        // Server -> client, several records (one write takes at most one record).
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut off = 0;
        while off < big.len() {
            off += server.write(&mut pipe, &big[off..]).unwrap();
        }
        assert_eq!(receive(&mut client, &mut pipe), big, "{suite:?}");
        // Client -> server again, then its close_notify is the end of the stream.
        client.writer().write_all(b"ping").unwrap();
        client.send_close_notify();
        send(&mut client, &mut pipe);
        assert_eq!(read_all(&mut server, &mut pipe).unwrap(), b"ping");
        assert_eq!(server.read(&mut pipe, &mut [0u8; 8]).unwrap(), 0);
        // Our close_notify reaches the client as a clean end.
        server.close_notify();
        server.flush(&mut pipe).unwrap();
        receive(&mut client, &mut pipe);
        assert!(
            matches!(client.reader().read(&mut [0u8; 8]), Ok(0)),
            "{suite:?}"
        );
    }
}

#[test]
fn a_second_connection_resumes_with_a_ticket() {
    let cert = test_cert();
    for suite in [SUITES[0], SUITES[3]] {
        let config = client_config(&cert, suite);
        let (_c, _p, _s, first) = connect(&cert, &config);
        let (mut client, mut pipe, mut server, second) = connect(&cert, &config);
        assert!(!first && second, "{suite:?}: full then resumed");
        assert_eq!(
            read_all(&mut server, &mut pipe).unwrap(),
            b"GET / HTTP/1.1\r\n\r\n"
        );
        server.write(&mut pipe, b"ok").unwrap();
        assert_eq!(receive(&mut client, &mut pipe), b"ok");
    }
}

#[test]
fn a_tampered_record_or_a_key_update_ends_the_session() {
    let cert = test_cert();
    let config = client_config(&cert, SUITES[0]);
    let (mut client, mut pipe, mut server, _) = connect(&cert, &config);
    read_all(&mut server, &mut pipe).unwrap();
    client.writer().write_all(b"hello").unwrap();
    send(&mut client, &mut pipe);
    let last = pipe.inp.len() - 1;
    pipe.inp[last] ^= 1;
    let e = read_all(&mut server, &mut pipe).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);

    let (mut client, mut pipe, mut server, _) = connect(&cert, &config);
    read_all(&mut server, &mut pipe).unwrap();
    client.refresh_traffic_keys().unwrap();
    send(&mut client, &mut pipe);
    let e = read_all(&mut server, &mut pipe).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn bytes_that_are_not_tls_fail_the_handshake_with_their_reason() {
    let cert = test_cert();
    let mut scratch = vec![0u8; 4096];
    for (bytes, want) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], Failure::PlainHttp),
        (&b"\x00\x01garbage"[..], Failure::NotTls),
        // A handshake record whose body is no ClientHello.
        (
            &b"\x16\x03\x01\x00\x04\x01\x00\x00\x00"[..],
            Failure::Refused,
        ),
    ] {
        let mut server = Tls::accept(cert.files.config()).unwrap();
        let mut pipe = Pipe::default();
        pipe.inp.extend(bytes);
        assert_eq!(
            server.handshake(&mut pipe, &mut scratch),
            Step::Failed(want)
        );
    }
    // A truncated ClientHello, then EOF.
    let mut server = Tls::accept(cert.files.config()).unwrap();
    let mut pipe = Pipe::default();
    pipe.inp.extend(b"\x16\x03\x01\x02\x00\x01\x00");
    assert_eq!(server.handshake(&mut pipe, &mut scratch), Step::Pending);
    pipe.eof = true;
    assert_eq!(
        server.handshake(&mut pipe, &mut scratch),
        Step::Failed(Failure::Eof)
    );
}

#[test]
fn an_established_session_is_small() {
    let cert = test_cert();
    let config = client_config(&cert, SUITES[0]);
    let (_c, mut pipe, mut server, _) = connect(&cert, &config);
    read_all(&mut server, &mut pipe).unwrap();
    let Tls::Open(_) = &server else {
        panic!("not established")
    };
    // Everything the session keeps between events lives inline (buffers are empty).
    assert!(
        std::mem::size_of::<Tls>() <= 256,
        "{}",
        std::mem::size_of::<Tls>()
    );
    assert_eq!(server.pending(), 0);
}

#[test]
fn a_reload_serves_the_new_certificate_and_a_bad_file_keeps_the_old() {
    let cert = test_cert();
    let first = cert.files.config();
    std::fs::write(cert.dir.join("cert.pem"), b"not a certificate").unwrap();
    assert!(cert.files.reload().is_err());
    assert!(Arc::ptr_eq(&first, &cert.files.config()));
    let other = test_cert();
    std::fs::copy(other.dir.join("cert.pem"), cert.dir.join("cert.pem")).unwrap();
    std::fs::copy(other.dir.join("key.pem"), cert.dir.join("key.pem")).unwrap();
    cert.files.reload().unwrap();
    let config = client_config(&other, SUITES[0]);
    let (_c, _p, _s, resumed) = connect(&cert, &config);
    assert!(!resumed);
}
