//! Direct Line 3.0: routing, the REST relay, the WebSocket relay.

pub mod activity;
pub mod credentials;
pub mod frame;
pub mod inspect;
pub mod read_pool;
pub mod relay;
pub mod rest;
pub mod route;
pub mod stream;
pub mod stream_url;
pub mod token_endpoint;

/// Whether `bytes` hold a JSON object rather than another value, judged by
/// the first byte after whitespace. Needed beside serde's derived structs:
/// they read an array as well, positionally (`[[...]]` as
/// `{"activities":[...]}`), and only an object is a Direct Line body.
fn is_json_object(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().first() == Some(&b'{')
}
