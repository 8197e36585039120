//! Subscriber tokens: HS256 JWTs with claims `channel` and `exp` (unix seconds), signed by
//! an application backend with the subscriber secret and checked by the worker.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims pushgate reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub channel: String,
    pub exp: u64,
}

/// Why a token was refused. [`TokenError::status`] gives the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token is required")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is malformed or wrongly signed")]
    Invalid,
    #[error("the token's algorithm is not HS256")]
    WrongAlgorithm,
    #[error("the token is for another channel")]
    WrongChannel,
}

impl TokenError {
    /// 403 for a valid token on the wrong channel, 401 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::WrongChannel => 403,
            _ => 401,
        }
    }

    /// Short machine-readable code for JSON errors and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Expired => "token_expired",
            TokenError::Invalid => "token_invalid",
            TokenError::WrongAlgorithm => "token_bad_alg",
            TokenError::WrongChannel => "token_wrong_channel",
        }
    }
}

/// Signs a token for `channel` valid until `exp` (unix seconds), as an application backend
/// (or loadgen) does.
pub fn sign(secret: &[u8], channel: &str, exp: u64) -> String {
    let claims = Claims {
        channel: channel.to_owned(),
        exp,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}

/// Checks `token` and returns its claims; `now` is unix seconds.
pub fn decode(secret: &[u8], token: &str, now: u64) -> Result<Claims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
    if header.alg != Algorithm::HS256 {
        return Err(TokenError::WrongAlgorithm);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the caller's clock, so tests can move time.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                _ => TokenError::Invalid,
            })?;
    if data.claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(data.claims)
}

/// Checks `token` for `channel`; `now` is unix seconds. Returns the token's `exp`.
pub fn verify(secret: &[u8], token: &str, channel: &str, now: u64) -> Result<u64, TokenError> {
    let claims = decode(secret, token, now)?;
    if claims.channel != channel {
        return Err(TokenError::WrongChannel);
    }
    Ok(claims.exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64_helpers::*;

    const SECRET: &[u8] = b"s3cret";

    #[test]
    fn good_token_passes() {
        let t = sign(SECRET, "c1", 1000);
        assert_eq!(verify(SECRET, &t, "c1", 999), Ok(1000));
    }

    #[test]
    fn refusals() {
        let t = sign(SECRET, "c1", 1000);
        assert_eq!(verify(SECRET, &t, "c1", 1000), Err(TokenError::Expired));
        assert_eq!(verify(SECRET, &t, "c2", 10), Err(TokenError::WrongChannel));
        assert_eq!(verify(b"other", &t, "c1", 10), Err(TokenError::Invalid));
        assert_eq!(verify(SECRET, "", "c1", 10), Err(TokenError::Missing));
        assert_eq!(
            verify(SECRET, "garbage", "c1", 10),
            Err(TokenError::Invalid)
        );
        assert_eq!(TokenError::WrongChannel.status(), 403);
        assert_eq!(TokenError::Expired.status(), 401);
    }

    #[test]
    fn alg_none_and_others_are_refused() {
        let body = b64(br#"{"channel":"c1","exp":99999999999}"#);
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), body);
        assert!(verify(SECRET, &none, "c1", 10).is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                channel: "c1".into(),
                exp: 99999999999,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            verify(SECRET, &hs512, "c1", 10),
            Err(TokenError::WrongAlgorithm)
        );
    }

    mod base64_helpers {
        /// Unpadded base64url, enough to hand-build a token in a test.
        pub fn b64(input: &[u8]) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in input.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
                for i in 0..=chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
