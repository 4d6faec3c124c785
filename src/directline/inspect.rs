//! The inspection step every text frame from the bot passes through.
//!
//! Today it is the identity: the frame goes out as the same bytes, without a
//! parse or a copy (`Utf8Bytes` is reference-counted). Server-side SSO hooks
//! in here: it will look for OAuth cards and may hold or rewrite a frame.

use tokio_tungstenite::tungstenite::Utf8Bytes;

pub fn bot_text(text: Utf8Bytes) -> Utf8Bytes {
    text
}
