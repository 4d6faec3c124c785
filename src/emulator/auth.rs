//! Secrets and tokens: who may call what.
//!
//! Tokens are opaque random strings that only mean something to this
//! emulator's memory, like real Direct Line tokens mean nothing to clients.
//! Stream tokens (the `t=` of a `streamUrl`) are a separate kind so that a
//! proxy which wrongly uses them on REST calls is caught with a 403.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{HeaderMap, header};

use super::error::ApiError;

/// How long a `streamUrl` may wait before the client connects with it.
pub const STREAM_TOKEN_TTL: Duration = Duration::from_secs(60);

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A conversation token: REST calls on one conversation.
    Conversation,
    /// A stream token: only the WebSocket handshake of one conversation.
    Stream,
}

/// What the emulator remembers about one issued token.
#[derive(Debug, Clone)]
pub struct Grant {
    pub conversation_id: String,
    /// Set when the token was generated with `user.id`: Direct Line then
    /// overwrites `from.id` of everything posted with this token.
    pub user_id: Option<String>,
    pub expires: Instant,
    pub kind: TokenKind,
}

impl Grant {
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.expires
    }
}

/// The authenticated caller of a REST request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The Direct Line secret: full access to every conversation.
    Secret,
    /// A conversation token, bound to one conversation.
    Token { token: String, grant: Grant },
}

impl Caller {
    /// The user id the credential forces onto posted activities, if any.
    pub fn bound_user(&self) -> Option<&str> {
        match self {
            Caller::Secret => None,
            Caller::Token { grant, .. } => grant.user_id.as_deref(),
        }
    }

    /// Rejects a token issued for another conversation with 403.
    pub fn check_conversation(&self, conversation_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Token { grant, .. } if grant.conversation_id != conversation_id => Err(
                ApiError::forbidden("Token is not valid for this conversation"),
            ),
            _ => Ok(()),
        }
    }
}

/// All tokens ever issued (expired ones are kept so they can be told apart
/// from unknown ones: `TokenExpired` versus a plain 403).
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: HashMap<String, Grant>,
}

impl TokenStore {
    /// Mints a new random token for the grant.
    pub fn issue(&mut self, grant: Grant) -> String {
        let prefix = match grant.kind {
            TokenKind::Conversation => "ct",
            TokenKind::Stream => "st",
        };
        let token = format!("{prefix}.{}", random_id(40));
        self.tokens.insert(token.clone(), grant);
        token
    }

    pub fn lookup(&self, token: &str) -> Option<&Grant> {
        self.tokens.get(token)
    }
}

/// Extracts the bearer credential; 401 when it is missing or malformed.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("Missing Authorization header"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Malformed Authorization header"))?;
    let (scheme, credential) = text
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("Malformed Authorization header"))?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(ApiError::unauthorized(
            "Authorization must be 'Bearer <secret or token>'",
        ));
    }
    Ok(credential)
}

/// Authenticates a REST call: the secret, or a live conversation token.
pub fn authenticate(
    headers: &HeaderMap,
    secret: &str,
    store: &TokenStore,
) -> Result<Caller, ApiError> {
    let credential = bearer(headers)?;
    if credential == secret {
        return Ok(Caller::Secret);
    }
    let grant = store
        .lookup(credential)
        .ok_or_else(|| ApiError::forbidden("Unknown secret or token"))?;
    if grant.kind == TokenKind::Stream {
        return Err(ApiError::forbidden(
            "A stream token is only valid for the WebSocket handshake",
        ));
    }
    if grant.is_expired() {
        return Err(ApiError::token_expired());
    }
    Ok(Caller::Token {
        token: credential.to_string(),
        grant: grant.clone(),
    })
}

/// A random string of `len` characters from `[A-Za-z0-9]`.
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    random_bytes(&mut bytes);
    bytes
        .iter()
        .map(|byte| ALPHABET[usize::from(*byte) % ALPHABET.len()] as char)
        .collect()
}

/// Fills `bytes` from the OS, or from [`fallback_fill`] if it has none.
pub fn random_bytes(bytes: &mut [u8]) {
    if getrandom::fill(bytes).is_err() {
        fallback_fill(bytes);
    }
}

/// Used only if the OS has no randomness: unique enough for a test emulator.
fn fallback_fill(bytes: &mut [u8]) {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    for (i, byte) in bytes.iter_mut().enumerate() {
        let mut hasher = state.build_hasher();
        hasher.write_usize(i);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        *byte = hasher.finish() as u8;
    }
}
