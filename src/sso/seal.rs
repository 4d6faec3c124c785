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
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::SEAL_KEY_LEN as KEY_LEN;

const VERSION: u8 = 1;
/// Derives the fingerprint key from a sealing key, so one key never serves two purposes.
const FINGERPRINT_LABEL: &[u8] = b"directline-proxy owner fingerprint v1";

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

/// What a stream needs to act as the conversation, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamContext {
    /// The conversation token from the start or reconnect response.
    pub token: String,
    /// Who started (or reconnected) the conversation, when the proxy could
    /// tell: a decision runs only for a stream opened by the same person.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// The conversation's owner as the proxy knew it when it sealed the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// The bound user id (`directline.user_id_header`).
    #[serde(rename = "u")]
    User(String),
    /// A keyed fingerprint of the provider's inputs (the session cookie...)
    /// that the start request carried; see [`Sealer::fingerprint`].
    #[serde(rename = "f")]
    Inputs(String),
}

/// Which configured key opened a context (0 is the key that seals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(usize);

impl KeyId {
    /// The key new contexts are sealed with.
    pub const SEALING: KeyId = KeyId(0);
}

/// An opened context and the key that opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub context: StreamContext,
    pub key: KeyId,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(rename = "c")]
    context: StreamContext,
    #[serde(rename = "e")]
    expires: u64,
}

pub struct Sealer {
    keys: Vec<LessSafeKey>,
    /// One per sealing key, derived from it: fingerprints made with a key
    /// are checked with the same one, so rotation keeps them comparable.
    fingerprint_keys: Vec<hmac::Key>,
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
            .map(|k| crate::config::decode_seal_key(k).map_err(|_| SealError::Malformed))
            .collect::<Result<_, _>>()?;
        if raw.is_empty() {
            raw.push(process_key(&rng)?);
        }
        let keys = raw
            .iter()
            .map(|k| UnboundKey::new(&AES_256_GCM, k).map(LessSafeKey::new))
            .collect::<Result<_, _>>()
            .map_err(|_| SealError::Malformed)?;
        let fingerprint_keys = raw
            .iter()
            .map(|k| {
                let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), FINGERPRINT_LABEL);
                hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
            })
            .collect();
        Ok(Sealer {
            keys,
            fingerprint_keys,
            rng,
            lifetime,
        })
    }

    /// A keyed digest of the provider's inputs in a user's request (the
    /// headers it reads), or `None` when there are none. Keyed, so that it
    /// says nothing about a cookie to whoever sees it. Cookies are compared
    /// as a set of pairs: an h2 request may split them over several header
    /// fields, a WebSocket upgrade joins them in one, in any order.
    pub fn fingerprint(&self, key: KeyId, inputs: &HeaderMap) -> Option<String> {
        if inputs.is_empty() {
            return None;
        }
        let mut context = hmac::Context::with_key(self.fingerprint_keys.get(key.0)?);
        let mut names: Vec<&http::HeaderName> = inputs.keys().collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for name in names {
            let value = canonical_value(name, inputs);
            context.update(name.as_str().as_bytes());
            context.update(b":");
            context.update(&(value.len() as u64).to_be_bytes());
            context.update(&value);
        }
        Some(URL_SAFE_NO_PAD.encode(context.sign().as_ref()))
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

    pub fn open(&self, conversation_id: &str, text: &str) -> Result<Opened, SealError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| SealError::Malformed)?;
        let (version, rest) = bytes.split_first().ok_or(SealError::Malformed)?;
        if *version != VERSION || rest.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Malformed)?;
        let (key, sealed) = self
            .keys
            .iter()
            .enumerate()
            .find_map(|(index, key)| {
                let mut buffer = ciphertext.to_vec();
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(conversation_id.as_bytes()),
                        &mut buffer,
                    )
                    .ok()?;
                serde_json::from_slice::<Sealed>(plain)
                    .ok()
                    .map(|sealed| (KeyId(index), sealed))
            })
            .ok_or(SealError::Forged)?;
        if sealed.expires <= now_secs() {
            return Err(SealError::Expired);
        }
        Ok(Opened {
            context: sealed.context,
            key,
        })
    }
}

/// A header's values as one byte string: cookie pairs sorted and
/// de-duplicated, other headers' values in order, comma-separated.
fn canonical_value(name: &http::HeaderName, inputs: &HeaderMap) -> Vec<u8> {
    let values = inputs.get_all(name).iter().map(|v| v.as_bytes());
    if name == http::header::COOKIE {
        let mut pairs: Vec<&[u8]> = values
            .flat_map(|v| v.split(|b| *b == b';'))
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty())
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs.join(&b"; "[..])
    } else {
        values.collect::<Vec<_>>().join(&b", "[..])
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
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; KEY_LEN])
    }

    fn context() -> StreamContext {
        StreamContext {
            token: "conversation-token".into(),
            owner: Some(Owner::User("dl_owner".into())),
        }
    }

    fn opened(
        sealer: &Sealer,
        conversation: &str,
        sealed: &str,
    ) -> Result<StreamContext, SealError> {
        sealer.open(conversation, sealed).map(|o| o.context)
    }

    #[test]
    fn sealed_context_opens_for_the_same_conversation() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let sealed = sealer.seal("conv-a", &context()).expect("seal");
        assert!(!sealed.contains("conversation-token"));
        assert_eq!(opened(&sealer, "conv-a", &sealed), Ok(context()));
    }

    #[test]
    fn sealed_context_does_not_open_for_another_conversation() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let sealed = sealer.seal("conv-a", &context()).expect("seal");
        assert_eq!(opened(&sealer, "conv-b", &sealed), Err(SealError::Forged));
    }

    #[test]
    fn another_replica_with_the_same_key_opens_it() {
        let a = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let b = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let sealed = a.seal("c", &context()).expect("seal");
        assert_eq!(opened(&b, "c", &sealed), Ok(context()));
    }

    #[test]
    fn rotation_opens_with_any_key_and_seals_with_the_first() {
        let old = Sealer::new(&[key(1)], HOUR).expect("old");
        let rotated = Sealer::new(&[key(2), key(1)], HOUR).expect("rotated");
        let sealed_by_old = old.seal("c", &context()).expect("seal");
        assert_eq!(opened(&rotated, "c", &sealed_by_old), Ok(context()));
        let sealed_by_new = rotated.seal("c", &context()).expect("seal");
        assert_eq!(opened(&old, "c", &sealed_by_new), Err(SealError::Forged));
    }

    #[test]
    fn tampered_or_garbage_input_is_refused() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let mut sealed = sealer.seal("c", &context()).expect("seal").into_bytes();
        let last = sealed.len() - 2;
        sealed[last] = if sealed[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(sealed).expect("ascii");
        assert_eq!(opened(&sealer, "c", &tampered), Err(SealError::Forged));
        assert_eq!(opened(&sealer, "c", "!!!"), Err(SealError::Malformed));
        assert_eq!(opened(&sealer, "c", ""), Err(SealError::Malformed));
    }

    #[test]
    fn without_configured_keys_a_process_key_survives_rebuilds() {
        let first = Sealer::new(&[], HOUR).expect("sealer");
        let rebuilt = Sealer::new(&[], HOUR).expect("sealer");
        let sealed = first.seal("c", &context()).expect("seal");
        assert_eq!(opened(&rebuilt, "c", &sealed), Ok(context()));
    }

    #[test]
    fn expired_context_is_refused() {
        let sealer = Sealer::new(&[key(1)], Duration::ZERO).expect("sealer");
        let sealed = sealer.seal("c", &context()).expect("seal");
        assert_eq!(opened(&sealer, "c", &sealed), Err(SealError::Expired));
    }

    #[test]
    fn the_owner_travels_sealed_and_a_context_without_one_still_opens() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let sealed = sealer.seal("c", &context()).expect("seal");
        assert!(!sealed.contains("dl_owner"));
        let anonymous = StreamContext {
            token: "t".into(),
            owner: None,
        };
        let sealed = sealer.seal("c", &anonymous).expect("seal");
        assert_eq!(opened(&sealer, "c", &sealed), Ok(anonymous));
    }

    #[test]
    fn fingerprints_tell_inputs_apart_and_survive_rotation() {
        let mut cookie = HeaderMap::new();
        cookie.insert("cookie", "session=victim".parse().expect("value"));
        let mut other = HeaderMap::new();
        other.insert("cookie", "session=attacker".parse().expect("value"));
        let old = Sealer::new(&[key(1)], HOUR).expect("old");
        let rotated = Sealer::new(&[key(2), key(1)], HOUR).expect("rotated");
        let made = old.fingerprint(KeyId::SEALING, &cookie).expect("some");
        assert!(!made.contains("victim"));
        assert_ne!(Some(made.clone()), old.fingerprint(KeyId::SEALING, &other));
        let sealed = old
            .seal(
                "c",
                &StreamContext {
                    token: "t".into(),
                    owner: Some(Owner::Inputs(made.clone())),
                },
            )
            .expect("seal");
        let reopened = rotated.open("c", &sealed).expect("opens");
        assert_eq!(rotated.fingerprint(reopened.key, &cookie), Some(made));
        assert_eq!(old.fingerprint(KeyId::SEALING, &HeaderMap::new()), None);
    }

    #[test]
    fn cookies_split_or_reordered_have_one_fingerprint() {
        let sealer = Sealer::new(&[key(1)], HOUR).expect("sealer");
        let mut joined = HeaderMap::new();
        joined.insert("cookie", "a=1; session=v".parse().expect("value"));
        let mut split = HeaderMap::new();
        split.append("cookie", "session=v".parse().expect("value"));
        split.append("cookie", "a=1".parse().expect("value"));
        let mut other = HeaderMap::new();
        other.insert("cookie", "a=1; session=w".parse().expect("value"));
        let print = |h: &HeaderMap| sealer.fingerprint(KeyId::SEALING, h);
        assert_eq!(print(&joined), print(&split));
        assert_ne!(print(&joined), print(&other));
    }

    #[test]
    fn key_must_be_32_bytes_of_base64() {
        assert!(crate::config::decode_seal_key(&key(3)).is_ok());
        assert!(crate::config::decode_seal_key("c2hvcnQ=").is_err());
        assert!(crate::config::decode_seal_key("not base64!").is_err());
    }
}
