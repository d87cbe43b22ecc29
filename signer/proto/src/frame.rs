//! Framing: `magic | version | length | postcard payload`.
//!
//! ```text
//! offset 0  4 octets  magic "CSTL"
//! offset 4  2 octets  protocol version, little-endian
//! offset 6  4 octets  payload length, little-endian, <= MAX_PAYLOAD
//! offset 10 length    postcard-encoded RequestFrame / ResponseFrame
//! ```
//!
//! The length is checked against [`MAX_PAYLOAD`] before anything is
//! allocated, and a payload must be consumed exactly: trailing bytes are an
//! error. Any framing error closes that one connection.

use std::io::{Read, Write};

use serde::{Serialize, de::DeserializeOwned};

pub const MAGIC: [u8; 4] = *b"CSTL";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 10;
/// Hard upper bound of one payload. Large CRLs are sent in several requests
/// (`StageCrlEntries`) and read back in parts (`ReadCrl`).
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The first four octets are not "CSTL": not a castellan peer.
    BadMagic,
    /// The peer speaks another protocol version.
    UnsupportedVersion(u16),
    /// The announced payload is larger than [`MAX_PAYLOAD`].
    TooLarge(u32),
    /// The input ended before the frame did.
    Truncated,
    /// The payload is not a valid postcard encoding of the expected type.
    Malformed(String),
    /// The payload decoded but bytes were left over.
    TrailingBytes(usize),
    /// The connection ended cleanly between frames.
    Closed,
    Io(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadMagic => write!(f, "not a castellan frame (bad magic)"),
            FrameError::UnsupportedVersion(v) => write!(
                f,
                "unsupported protocol version {v} (this side speaks {VERSION}); run the same castellan release on both sides"
            ),
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} octets exceeds the limit of {MAX_PAYLOAD}")
            }
            FrameError::Truncated => write!(f, "frame truncated"),
            FrameError::Malformed(e) => write!(f, "malformed payload: {e}"),
            FrameError::TrailingBytes(n) => write!(f, "{n} trailing octets after the payload"),
            FrameError::Closed => write!(f, "connection closed"),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Checks a header and returns the payload length it announces.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    if header[0..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len as usize)
}

/// Encodes one message as a complete frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    let mut out =
        postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_PAYLOAD)
        .ok_or(FrameError::TooLarge(u32::try_from(len).unwrap_or(u32::MAX)))?;
    out[6..10].copy_from_slice(&len32.to_le_bytes());
    Ok(out)
}

/// Decodes a payload (without header); the whole payload must be consumed.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decodes one complete frame held in memory; the buffer must hold exactly
/// one frame.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<T, FrameError> {
    let header: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = parse_header(header)?;
    let body = &buf[HEADER_LEN..];
    if body.len() < len {
        return Err(FrameError::Truncated);
    }
    if body.len() > len {
        return Err(FrameError::TrailingBytes(body.len() - len));
    }
    decode_payload(body)
}

/// Reads one frame's payload from a stream. `Closed` when the stream ends
/// cleanly before a new frame starts.
pub fn read_payload<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e.to_string())),
        }
    }
    let len = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e.to_string()),
    })?;
    Ok(payload)
}

/// Reads and decodes one frame from a stream.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    decode_payload(&read_payload(r)?)
}

/// Encodes and writes one frame to a stream.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let buf = encode_frame(msg)?;
    w.write_all(&buf).map_err(|e| FrameError::Io(e.to_string()))
}
