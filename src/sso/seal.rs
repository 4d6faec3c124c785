//! Sealing the conversation token into the rewritten `streamUrl`.
//!
//! A WebSocket handshake carries only the stream token `t=`, which Direct
//! Line does not accept on REST calls, yet the invoke flow must post as the
//! conversation. So when the proxy rewrites `streamUrl` it appends
//! `dlpx=<sealed>`: the conversation token and an expiry, encrypted and
//! authenticated with AES-256-GCM, bound to the conversation id (associated
//! data). Whichever replica takes the WebSocket opens it with the shared
//! key and strips it before forwarding the handshake. No shared store.
//!
//! Rotation: `sso.seal_keys` is a list; the first key seals, every key
//! opens. Add the new key second, roll out, move it first, roll out, then
//! drop the old one after the longest token lifetime (30 minutes).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The query parameter carrying the sealed context.
pub const PARAM: &str = "dlpx";
const VERSION: u8 = 1;
const KEY_LEN: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed context is malformed")]
    Malformed,
    #[error("sealed context does not open with any configured key")]
    Forged,
    #[error("sealed context has expired")]
    Expired,
    #[error("system randomness failed")]
    Random,
}

/// What a stream needs to act as the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamContext {
    /// The conversation token from the start or reconnect response.
    pub token: String,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(rename = "c")]
    context: StreamContext,
    #[serde(rename = "e")]
    expires: u64,
}

/// Checks a configured key; the error says what is allowed.
pub fn decode_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let allowed = "expected 32 random bytes in standard base64 (e.g. `openssl rand -base64 32`)";
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| allowed.to_string())?;
    bytes.try_into().map_err(|_| allowed.to_string())
}

pub struct Sealer {
    keys: Vec<LessSafeKey>,
    rng: SystemRandom,
    lifetime: Duration,
}

impl Sealer {
    /// From configured keys (already validated), or a fresh random key when
    /// none are configured (good for one replica only).
    pub fn new(configured: &[String], lifetime: Duration) -> Result<Sealer, SealError> {
        let rng = SystemRandom::new();
        let mut raw: Vec<[u8; KEY_LEN]> = configured
            .iter()
            .map(|k| decode_key(k).map_err(|_| SealError::Malformed))
            .collect::<Result<_, _>>()?;
        if raw.is_empty() {
            raw.push(process_key(&rng)?);
        }
        let keys = raw
            .iter()
            .map(|k| UnboundKey::new(&AES_256_GCM, k).map(LessSafeKey::new))
            .collect::<Result<_, _>>()
            .map_err(|_| SealError::Malformed)?;
        Ok(Sealer {
            keys,
            rng,
            lifetime,
        })
    }

    pub fn seal(
        &self,
        conversation_id: &str,
        context: &StreamContext,
    ) -> Result<String, SealError> {
        let sealed = Sealed {
            context: context.clone(),
            expires: now_secs() + self.lifetime.as_secs(),
        };
        let mut payload = serde_json::to_vec(&sealed).map_err(|_| SealError::Malformed)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let key = self.keys.first().ok_or(SealError::Malformed)?;
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(conversation_id.as_bytes()),
            &mut payload,
        )
        .map_err(|_| SealError::Malformed)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + payload.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&payload);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, conversation_id: &str, text: &str) -> Result<StreamContext, SealError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| SealError::Malformed)?;
        let (version, rest) = bytes.split_first().ok_or(SealError::Malformed)?;
        if *version != VERSION || rest.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Malformed)?;
        let sealed = self
            .keys
            .iter()
            .find_map(|key| {
                let mut buffer = ciphertext.to_vec();
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(conversation_id.as_bytes()),
                        &mut buffer,
                    )
                    .ok()?;
                serde_json::from_slice::<Sealed>(plain).ok()
            })
            .ok_or(SealError::Forged)?;
        if sealed.expires <= now_secs() {
            return Err(SealError::Expired);
        }
        Ok(sealed.context)
    }
}

/// One random key per process, so reloads without `seal_keys` keep opening
/// the contexts sealed before them.
fn process_key(rng: &SystemRandom) -> Result<[u8; KEY_LEN], SealError> {
    static KEY: OnceLock<[u8; KEY_LEN]> = OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(*key);
    }
    let mut key = [0u8; KEY_LEN];
    rng.fill(&mut key).map_err(|_| SealError::Random)?;
    Ok(*KEY.get_or_init(|| key))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; KEY_LEN])
    }

    fn context() -> StreamContext {
        StreamContext {
            token: "conversation-token".into(),
        }
    }

    #[test]
    fn sealed_context_opens_for_the_same_conversation() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let sealed = sealer.seal("conv-a", &context()).expect("seal");
        assert!(!sealed.contains("conversation-token"));
        assert_eq!(sealer.open("conv-a", &sealed), Ok(context()));
    }

    #[test]
    fn sealed_context_does_not_open_for_another_conversation() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let sealed = sealer.seal("conv-a", &context()).expect("seal");
        assert_eq!(sealer.open("conv-b", &sealed), Err(SealError::Forged));
    }

    #[test]
    fn another_replica_with_the_same_key_opens_it() {
        let a = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let b = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let sealed = a.seal("c", &context()).expect("seal");
        assert_eq!(b.open("c", &sealed), Ok(context()));
    }

    #[test]
    fn rotation_opens_with_any_key_and_seals_with_the_first() {
        let old = Sealer::new(&[key(1)], HOUR).expect("old");
        let rotated = Sealer::new(&[key(2), key(1)], HOUR).expect("rotated");
        let sealed_by_old = old.seal("c", &context()).expect("seal");
        assert_eq!(rotated.open("c", &sealed_by_old), Ok(context()));
        let sealed_by_new = rotated.seal("c", &context()).expect("seal");
        assert_eq!(old.open("c", &sealed_by_new), Err(SealError::Forged));
    }

    #[test]
    fn tampered_or_garbage_input_is_refused() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let mut sealed = sealer.seal("c", &context()).expect("seal").into_bytes();
        let last = sealed.len() - 2;
        sealed[last] = if sealed[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(sealed).expect("ascii");
        assert_eq!(sealer.open("c", &tampered), Err(SealError::Forged));
        assert_eq!(sealer.open("c", "!!!"), Err(SealError::Malformed));
        assert_eq!(sealer.open("c", ""), Err(SealError::Malformed));
    }

    #[test]
    fn without_configured_keys_a_process_key_survives_rebuilds() {
        let first = Sealer::new(&[], HOUR).expect("sealer");
        let rebuilt = Sealer::new(&[], HOUR).expect("sealer");
        let sealed = first.seal("c", &context()).expect("seal");
        assert_eq!(rebuilt.open("c", &sealed), Ok(context()));
    }

    #[test]
    fn expired_context_is_refused() {
        let sealer = Sealer::new(&[key(1)], Duration::ZERO).expect("sealer");
        let sealed = sealer.seal("c", &context()).expect("seal");
        assert_eq!(sealer.open("c", &sealed), Err(SealError::Expired));
    }

    #[test]
    fn key_must_be_32_bytes_of_base64() {
        assert!(decode_key(&key(3)).is_ok());
        assert!(decode_key("c2hvcnQ=").is_err());
        assert!(decode_key("not base64!").is_err());
    }
}
