//! The CAMP v1 wire format: frame types, limits and the codec.
//!
//! This module is pure: no I/O, no async. One CAMP frame is one binary
//! WebSocket message; [`Frame::decode`] turns such a message into a typed
//! [`Frame`] and [`Frame::encode`] does the reverse, byte for byte as the
//! reference TypeScript implementation does (see the vectors in
//! `shared/vectors/camp-v1-frames.json`, checked by the tests below).
//!
//! ```
//! use camp_server::protocol::{Frame, Body};
//!
//! let frame = Frame::new(42, Body::Utf8 { ack: 1, text: "hi".into() });
//! let bytes = frame.encode();
//! assert_eq!(bytes.len(), 8 + 1 + 4 + 2);
//! assert_eq!(Frame::decode(bytes).unwrap(), frame);
//! ```

mod error;
mod frame;

pub use error::FrameError;
pub use frame::{Behaviour, Body, Frame, FrameType, PingPong};

/// Protocol version spoken by this implementation (ENDPOINT_INFO `version`).
pub const VERSION: u32 = 1;

/// Largest payload of a UTF8DATA, BINARYDATA, ERROR or TX_CHUNK frame.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Largest transaction name in TX_START, in bytes of UTF-8.
pub const MAX_NAME: usize = 1024;

/// Feature flag bit 0: the endpoint speaks the CAMP.Transaction namespace.
pub const FEATURE_TRANSACTIONS: u64 = 1;

/// Feature flags this implementation announces.
pub const FEATURES: u64 = FEATURE_TRANSACTIONS;

/// Largest frame the codec can produce or accept: a TX_CHUNK header plus a
/// full payload. Used to size the WebSocket layer's message limit.
pub const MAX_FRAME: usize = 21 + MAX_PAYLOAD;

/// WebSocket close codes defined by CAMP.
pub mod close {
    /// Graceful close (after BYE).
    pub const GRACEFUL: u16 = 4000;
    /// The peer violated the protocol (bad handshake, version mismatch).
    pub const CLIENT_ERROR: u16 = 4001;
    /// The server failed, or the peer used a feature it did not announce.
    pub const SERVER_ERROR: u16 = 4002;
}

#[cfg(test)]
pub(crate) mod proptests;
#[cfg(test)]
mod tests;
