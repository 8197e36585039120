//! `token`: HS256 subscriber tokens. Verification never panics and never accepts a token
//! whose signature is not the HMAC-SHA256, under the secret, of its signing input.

use crate::Input;
use aws_lc_rs::hmac;
use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

/// Any base64url spelling of the signature (padding, trailing bits): what matters is
/// whether its bytes are the MAC.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

pub fn token(data: &[u8]) {
    let mut input = Input::new(data);
    let secret = input.short_bytes().to_vec();
    let channel = String::from_utf8_lossy(input.short_bytes()).into_owned();
    let now = u64::from(input.u32());
    let token = if input.bool() {
        // A well-signed token for the channel, then edited: the edits must not survive.
        let exp = u64::from(input.u32());
        let mut t = protocol::token::sign(&secret, &channel, exp).into_bytes();
        let edits = input.u8() % 4;
        for _ in 0..edits {
            let at = input.u16() as usize % (t.len() + 1);
            match input.u8() % 3 {
                0 if at < t.len() => t[at] = input.u8(),
                1 => t.insert(at, input.u8()),
                _ if at < t.len() => {
                    t.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&t).into_owned()
    } else {
        String::from_utf8_lossy(input.rest()).into_owned()
    };
    let Ok(exp) = protocol::token::verify(&secret, &token, &channel, now) else {
        return;
    };
    assert!(exp > now, "an expired token accepted");
    let claims = protocol::token::decode(&secret, &token, now).expect("verify accepted it");
    assert_eq!(claims.channel, channel);
    let (input, sig) = token.rsplit_once('.').expect("a JWT has a signature part");
    let sig = LENIENT
        .decode(sig)
        .expect("an accepted signature is base64url");
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    assert!(
        hmac::verify(&key, input.as_bytes(), &sig).is_ok(),
        "accepted a token not signed with the secret: {token}"
    );
    let header = input.split('.').next().unwrap();
    let header = general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .or_else(|_| LENIENT.decode(header))
        .expect("an accepted header is base64url");
    let header: serde_json::Value = serde_json::from_slice(&header).expect("header is JSON");
    assert_eq!(header["alg"], "HS256");
}
