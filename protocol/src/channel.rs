//! Channel names: 1-128 bytes of `[A-Za-z0-9_.:@-]`.

/// Longest channel name the contract allows, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than 128 bytes")]
    TooLong,
    #[error("channel name may only contain A-Z a-z 0-9 _ . : @ -")]
    BadChar,
}

/// Checks a channel name against the contract.
pub fn validate_channel(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
    {
        return Err(ChannelError::BadChar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_contract_alphabet() {
        assert_eq!(validate_channel("user:42@eu-1_a.b"), Ok(()));
        assert_eq!(validate_channel(&"a".repeat(128)), Ok(()));
    }

    #[test]
    fn refuses_the_rest() {
        assert_eq!(validate_channel(""), Err(ChannelError::Empty));
        assert_eq!(
            validate_channel(&"a".repeat(129)),
            Err(ChannelError::TooLong)
        );
        for bad in ["a b", "a/b", "ä", "a?b", "a%20", "a\n"] {
            assert_eq!(validate_channel(bad), Err(ChannelError::BadChar), "{bad:?}");
        }
    }
}
