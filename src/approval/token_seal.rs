//! The approver's access token at rest. A grant keeps the OP's access token so the
//! replica that forwards the approved call can hand it to a tool server that asks for
//! it (`upstreams[].approval_token`). It is stored sealed: AES-256-GCM under a key
//! derived from `approvals.state_key`, with the approval's own store key as associated
//! data, so a sealed token opens only for the approval it came with and a store reader
//! without the state key learns nothing.

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha2::Sha256;

const NONCE_LEN: usize = 12;
/// Longest access token kept (longer ones are not sealed, so never forwarded).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Seals and opens access tokens for one gateway (replicas share the state key).
pub struct TokenSeal {
    key: RandomizedNonceKey,
}

impl TokenSeal {
    pub fn new(state_key: &[u8]) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(state_key).expect("HMAC takes any key length");
        mac.update(b"ciba-gate access-token seal v1");
        let derived = mac.finalize().into_bytes();
        TokenSeal {
            key: RandomizedNonceKey::new(&AES_256_GCM, &derived)
                .expect("a 32-byte key fits AES-256-GCM"),
        }
    }

    /// `token` sealed for the approval stored under `record_key` (base64url of nonce,
    /// ciphertext and tag); `None` for an empty or oversized token.
    pub fn seal(&self, record_key: &str, token: &str) -> Option<String> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let mut sealed = token.as_bytes().to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(record_key.as_bytes()), &mut sealed)
            .ok()?;
        let mut out = nonce.as_ref().to_vec();
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The token sealed for `record_key`; `None` when it was sealed for another
    /// approval, altered, or sealed under another key.
    pub fn open(&self, record_key: &str, sealed: &str) -> Option<SecretString> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(record_key.as_bytes()), &mut in_out)
            .ok()?;
        let text = std::str::from_utf8(plain).ok()?;
        Some(SecretString::from(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_sealed_token_opens_only_for_its_approval_and_key() {
        let seal = TokenSeal::new(b"0123456789abcdef0123456789abcdef");
        let sealed = seal.seal("fp-1", "access-token-value").unwrap();
        assert!(!sealed.contains("access-token-value"));
        assert_eq!(
            seal.open("fp-1", &sealed).unwrap().expose_secret(),
            "access-token-value"
        );
        assert!(seal.open("fp-2", &sealed).is_none(), "another approval");
        let other = TokenSeal::new(b"fedcba9876543210fedcba9876543210");
        assert!(other.open("fp-1", &sealed).is_none(), "another state key");
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            seal.open("fp-1", std::str::from_utf8(&altered).unwrap())
                .is_none()
        );
        assert!(seal.open("fp-1", "short").is_none());
        assert!(seal.seal("fp-1", "").is_none());
    }

    #[test]
    fn two_seals_of_one_token_differ() {
        let seal = TokenSeal::new(b"0123456789abcdef0123456789abcdef");
        assert_ne!(seal.seal("fp", "t"), seal.seal("fp", "t"));
    }
}
