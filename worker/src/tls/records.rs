//! The record layer of an established TLS session, once rustls has handed over its
//! traffic secrets (`dangerous_extract_secrets`, the contract rustls offers kTLS).
//!
//! What an idle connection keeps is two keys, two IVs and two sequence numbers (~110 B)
//! instead of rustls' whole connection (6.3-6.5 KB of heap per idle connection with
//! aws-lc-rs, measured). The AEAD key schedule is expanded per record (~170 ns with
//! AES-NI, measured), which is small beside a delivery. TLS 1.3 and TLS 1.2, AES-GCM and
//! ChaCha20-Poly1305 (the suites of rustls' aws-lc-rs provider). What this layer does
//! not do after the handshake: a TLS 1.3 KeyUpdate or a TLS 1.2 renegotiation from the
//! client ends the connection (the client reconnects and resumes); the server never
//! needs either for the record counts of a push connection.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};
use zeroize::Zeroize;

/// Largest plaintext in one record (RFC 8446 5.1).
pub const MAX_PLAIN: usize = 16 * 1024;
/// Record header: type, version, length.
pub const HEADER: usize = 5;
/// Largest record accepted from a client: plaintext + the most expansion TLS 1.2 allows.
pub const MAX_RECORD: usize = HEADER + MAX_PLAIN + 2048;
const TAG: usize = 16;

pub const APPLICATION_DATA: u8 = 23;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;

/// Why a record could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record too large")]
    TooLarge,
    #[error("record failed authentication")]
    BadRecord,
    #[error("unexpected record type {0}")]
    Unexpected(u8),
    #[error("cipher suite not handled after the handshake")]
    Unsupported,
    #[error("sequence numbers exhausted")]
    Exhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20,
}

impl Suite {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20 => &aead::CHACHA20_POLY1305,
        }
    }

    /// TLS 1.2 GCM sends the last 8 bytes of the nonce in every record.
    fn explicit_nonce(self, v13: bool) -> usize {
        if !v13 && self != Suite::Chacha20 {
            8
        } else {
            0
        }
    }
}

/// One direction: key, IV and the next sequence number.
struct Direction {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Direction {
    fn new(
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> Result<(Suite, Direction), RecordError> {
        let (suite, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Suite::Chacha20, key, iv),
            _ => return Err(RecordError::Unsupported),
        };
        let mut d = Direction {
            key: [0; 32],
            iv: [0; 12],
            seq,
        };
        let k = key.as_ref();
        if k.len() != suite.algorithm().key_len() || iv.as_ref().len() != 12 {
            return Err(RecordError::Unsupported);
        }
        d.key[..k.len()].copy_from_slice(k);
        d.iv.copy_from_slice(iv.as_ref());
        Ok((suite, d))
    }

    fn key(&self, suite: Suite) -> LessSafeKey {
        let alg = suite.algorithm();
        let key = UnboundKey::new(alg, &self.key[..alg.key_len()]).expect("key length checked");
        LessSafeKey::new(key)
    }

    /// The IV with the sequence number mixed into its last 8 bytes.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn advance(&mut self) -> Result<(), RecordError> {
        self.seq = self.seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(())
    }
}

/// An established session's two directions.
pub struct Records {
    suite: Suite,
    v13: bool,
    tx: Direction,
    rx: Direction,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("suite", &self.suite)
            .field("v13", &self.v13)
            .finish_non_exhaustive()
    }
}

/// The length of the record at the start of `buf` (header included), once its header is
/// there.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = HEADER + u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > MAX_RECORD {
        return Err(RecordError::TooLarge);
    }
    Ok(Some(len))
}

impl Records {
    pub fn new(
        secrets: ExtractedSecrets,
        version: ProtocolVersion,
    ) -> Result<Records, RecordError> {
        let v13 = match version {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return Err(RecordError::Unsupported),
        };
        let (suite, tx) = Direction::new(secrets.tx.0, &secrets.tx.1)?;
        let (rx_suite, rx) = Direction::new(secrets.rx.0, &secrets.rx.1)?;
        if suite != rx_suite {
            return Err(RecordError::Unsupported);
        }
        Ok(Records { suite, v13, tx, rx })
    }

    /// Appends `plain` (at most [`MAX_PLAIN`] bytes) to `out` as one record of type `ty`.
    pub fn seal(&mut self, ty: u8, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        debug_assert!(plain.len() <= MAX_PLAIN);
        let explicit = self.suite.explicit_nonce(self.v13);
        let nonce = self.tx.nonce();
        let start = out.len();
        let body_len = explicit + plain.len() + usize::from(self.v13) + TAG;
        let outer = if self.v13 { APPLICATION_DATA } else { ty };
        out.extend_from_slice(&[outer, 3, 3]);
        out.extend_from_slice(&(body_len as u16).to_be_bytes());
        out.extend_from_slice(&nonce[12 - explicit..]);
        let text = out.len();
        out.extend_from_slice(plain);
        let aad = if self.v13 {
            let mut a = [0u8; 13];
            a[..HEADER].copy_from_slice(&out[start..start + HEADER]);
            out.push(ty);
            (a, HEADER)
        } else {
            (tls12_aad(self.tx.seq, ty, plain.len()), 13)
        };
        let key = self.tx.key(self.suite);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad.0[..aad.1]),
                &mut out[text..],
            )
            .map_err(|_| RecordError::BadRecord)?;
        out.extend_from_slice(tag.as_ref());
        self.tx.advance()
    }

    /// Opens the whole record `rec` in place. Returns its (inner) content type and where its
    /// plaintext lies in `rec`.
    pub fn open(&mut self, rec: &mut [u8]) -> Result<(u8, std::ops::Range<usize>), RecordError> {
        let explicit = self.suite.explicit_nonce(self.v13);
        if rec.len() < HEADER + explicit + TAG + usize::from(self.v13) {
            return Err(RecordError::BadRecord);
        }
        let outer = rec[0];
        let mut nonce = self.rx.nonce();
        let text = HEADER + explicit;
        let aad = if self.v13 {
            if outer != APPLICATION_DATA {
                return Err(RecordError::Unexpected(outer));
            }
            let mut a = [0u8; 13];
            a[..HEADER].copy_from_slice(&rec[..HEADER]);
            (a, HEADER)
        } else {
            if explicit > 0 {
                nonce[4..].copy_from_slice(&rec[HEADER..text]);
            }
            (tls12_aad(self.rx.seq, outer, rec.len() - text - TAG), 13)
        };
        let key = self.rx.key(self.suite);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad.0[..aad.1]),
                &mut rec[text..],
            )
            .map_err(|_| RecordError::BadRecord)?;
        let mut len = plain.len();
        self.rx.advance()?;
        if !self.v13 {
            return Ok((outer, text..text + len));
        }
        // TLS 1.3: zero padding, then the real content type.
        while len > 0 && rec[text + len - 1] == 0 {
            len -= 1;
        }
        if len == 0 {
            return Err(RecordError::BadRecord);
        }
        Ok((rec[text + len - 1], text..text + len - 1))
    }
}

/// TLS 1.2 additional data: seq, type, version, plaintext length.
fn tls12_aad(seq: u64, ty: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = ty;
    a[9] = 3;
    a[10] = 3;
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}
