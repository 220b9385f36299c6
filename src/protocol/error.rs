use thiserror::Error;

/// Why a binary message is not a valid CAMP frame.
///
/// Every variant names what was wrong so that it can be sent back to the peer
/// verbatim in an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The message is shorter than the fixed part of its frame type.
    #[error("truncated {kind} frame: {len} bytes, at least {need} required")]
    Truncated {
        /// Frame type name (or `frame` when even the type byte is missing).
        kind: &'static str,
        /// Length of the message received.
        len: usize,
        /// Minimum length of that frame type.
        need: usize,
    },
    /// A fixed-size frame carries trailing bytes.
    #[error("{kind} frame must be exactly {need} bytes, got {len}")]
    WrongLength {
        /// Frame type name.
        kind: &'static str,
        /// Length of the message received.
        len: usize,
        /// The exact length of that frame type.
        need: usize,
    },
    /// The type byte names no frame of CAMP.Base or CAMP.Transaction.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A payload is larger than [`MAX_PAYLOAD`](super::MAX_PAYLOAD).
    #[error("{kind} payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Frame type name.
        kind: &'static str,
        /// Payload length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction name is longer than [`MAX_NAME`](super::MAX_NAME).
    #[error("transaction name of {0} bytes exceeds the limit of 1024 bytes")]
    NameTooLong(usize),
    /// A text field is not valid UTF-8.
    #[error("{0} text is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A PING_PONG payload other than `ping` or `pong`.
    #[error("ping payload must be \"ping\" or \"pong\"")]
    BadPing,
    /// TX_START behaviour byte other than 0 (push) or 1 (pull).
    #[error("unknown transaction behaviour {0}")]
    BadBehaviour(u8),
    /// TX_START size below -1, or -1 (unknown) with the PULL behaviour.
    #[error("invalid transaction size {size} for {behaviour}")]
    BadSize {
        /// The announced size.
        size: i64,
        /// The announced behaviour.
        behaviour: &'static str,
    },
}
