//! WebSocket frame headers (RFC 6455 section 5.2), read so the relay can
//! forward frames as the bytes they came as, and the few frames the proxy
//! writes itself (a close, a rewritten text).

use thiserror::Error;

/// Largest header: 2 bytes, an 8-byte extended length, a 4-byte mask key.
pub const MAX_HEADER_BYTES: usize = 14;
/// RFC 6455 section 5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Result<Opcode, FrameError> {
        Ok(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            other => return Err(FrameError::ReservedOpcode(other)),
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A frame that breaks RFC 6455 as a peer without extensions must read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// No extension is ever negotiated through the proxy (section 5.2).
    #[error("reserved bits set")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// Section 5.5: control frames are never fragmented and carry at most
    /// 125 bytes.
    #[error("control frame fragmented or over 125 bytes")]
    BadControlFrame,
    /// Section 5.2: the most significant bit of a 64-bit length is 0.
    #[error("payload length over 2^63")]
    BadLength,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    /// Bytes before the payload.
    pub header_len: usize,
    pub payload_len: u64,
}

impl Header {
    /// `Ok(None)` while `bytes` do not hold the whole header yet.
    pub fn parse(bytes: &[u8]) -> Result<Option<Header>, FrameError> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let fin = first & 0x80 != 0;
        let opcode = Opcode::from_bits(first & 0x0F)?;
        let masked = second & 0x80 != 0;
        let (length_bytes, short_length) = match second & 0x7F {
            126 => (2, None),
            127 => (8, None),
            length => (0, Some(u64::from(length))),
        };
        let header_len = 2 + length_bytes + if masked { 4 } else { 0 };
        if bytes.len() < header_len {
            return Ok(None);
        }
        let payload_len = match short_length {
            Some(length) => length,
            None => {
                let mut be = [0u8; 8];
                be[8 - length_bytes..].copy_from_slice(&bytes[2..2 + length_bytes]);
                u64::from_be_bytes(be)
            }
        };
        if payload_len >> 63 != 0 {
            return Err(FrameError::BadLength);
        }
        if opcode.is_control() && (!fin || payload_len > MAX_CONTROL_PAYLOAD) {
            return Err(FrameError::BadControlFrame);
        }
        let mask = masked.then(|| {
            let at = 2 + length_bytes;
            [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]
        });
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }

    /// Header and payload together; saturates rather than wraps.
    pub fn frame_len(&self) -> u64 {
        (self.header_len as u64).saturating_add(self.payload_len)
    }
}

/// XORs `payload` with the mask key (section 5.3), the same both ways.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
}

/// One whole frame the proxy writes itself. `mask` is set towards the
/// upstream, where the proxy is the client (section 5.1).
pub fn encode(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MAX_HEADER_BYTES + payload.len());
    frame.push(0x80 | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        length @ 0..=125 => frame.push(mask_bit | length as u8),
        length @ 126..=0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    let payload_start = frame.len() + if mask.is_some() { 4 } else { 0 };
    if let Some(key) = mask {
        frame.extend_from_slice(&key);
    }
    frame.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut frame[payload_start..], key);
    }
    frame
}

/// A close frame with `code` and a reason of at most 123 bytes.
pub fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload.truncate(MAX_CONTROL_PAYLOAD as usize);
    encode(Opcode::Close, &payload, mask)
}

/// A fresh mask key for a frame the proxy sends upstream. Section 10.3
/// wants it unpredictable; if the system's generator fails, any key is
/// still a valid frame.
pub fn fresh_mask() -> [u8; 4] {
    let mut key = [0u8; 4];
    let _ = getrandom::fill(&mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_form_round_trips() {
        for length in [0usize, 1, 125, 126, 0xFFFF, 0x1_0000, 300_000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let payload = vec![b'x'; length];
                let frame = encode(Opcode::Binary, &payload, mask);
                let header = Header::parse(&frame).expect("valid").expect("whole");
                assert_eq!(header.payload_len, length as u64);
                assert_eq!(header.mask, mask);
                assert_eq!(header.frame_len(), frame.len() as u64);
                let mut body = frame[header.header_len..].to_vec();
                if let Some(key) = mask {
                    apply_mask(&mut body, key);
                }
                assert_eq!(body, payload);
            }
        }
    }

    #[test]
    fn a_partial_header_asks_for_more() {
        let frame = encode(Opcode::Text, &[b'a'; 70_000], Some([9, 9, 9, 9]));
        for cut in 0..14 {
            assert_eq!(Header::parse(&frame[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(Header::parse(&frame[..14]).expect("valid").is_some());
    }

    #[test]
    fn rule_breaking_headers_are_refused() {
        assert_eq!(Header::parse(&[0xC1, 0x00]), Err(FrameError::ReservedBits));
        assert_eq!(
            Header::parse(&[0x83, 0x00]),
            Err(FrameError::ReservedOpcode(3))
        );
        assert_eq!(
            Header::parse(&[0x09, 0x00]),
            Err(FrameError::BadControlFrame),
            "fragmented ping"
        );
        assert_eq!(
            Header::parse(&[0x89, 126, 0, 126]),
            Err(FrameError::BadControlFrame),
            "ping over 125 bytes"
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(Header::parse(&huge), Err(FrameError::BadLength));
    }

    #[test]
    fn a_close_frame_carries_code_and_reason() {
        let frame = close(1009, "message too big", None);
        assert_eq!(frame[0], 0x88);
        assert_eq!(&frame[2..4], &1009u16.to_be_bytes());
        assert_eq!(&frame[4..], b"message too big");
        let long = close(1000, &"r".repeat(300), None);
        assert_eq!(long.len(), 2 + 125);
    }
}
