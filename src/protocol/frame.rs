//! Frame types and their byte layout.

use bytes::{BufMut, Bytes, BytesMut};

use super::{FrameError, MAX_NAME, MAX_PAYLOAD};

/// One CAMP frame: the session id every frame starts with, and a typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The session id (`sid`), the first eight bytes of every frame.
    pub sid: u64,
    /// What the frame says.
    pub body: Body,
}

/// The type byte of a frame (byte 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// CAMP.Base ENDPOINT_INFO.
    EndpointInfo = 0xff,
    /// CAMP.Base BYE.
    Bye = 0xfe,
    /// CAMP.Base ACK.
    Ack = 0xfd,
    /// CAMP.Base ERROR.
    Error = 0xfc,
    /// CAMP.Base PING_PONG.
    PingPong = 0xfb,
    /// CAMP.Base UTF8DATA.
    Utf8 = 0xfa,
    /// CAMP.Base BINARYDATA.
    Binary = 0xf9,
    /// CAMP.Transaction TX_START.
    TxStart = 0x00,
    /// CAMP.Transaction TX_CHUNK.
    TxChunk = 0x01,
    /// CAMP.Transaction TX_FINISH.
    TxFinish = 0x02,
    /// CAMP.Transaction TX_FETCH.
    TxFetch = 0x03,
    /// CAMP.Transaction TX_CANCEL.
    TxCancel = 0x04,
}

impl FrameType {
    /// Every frame type, for metrics and tests.
    pub const ALL: [FrameType; 12] = [
        FrameType::EndpointInfo,
        FrameType::Bye,
        FrameType::Ack,
        FrameType::Error,
        FrameType::PingPong,
        FrameType::Utf8,
        FrameType::Binary,
        FrameType::TxStart,
        FrameType::TxChunk,
        FrameType::TxFinish,
        FrameType::TxFetch,
        FrameType::TxCancel,
    ];

    /// The type for a type byte, if CAMP defines one.
    pub fn from_byte(byte: u8) -> Option<FrameType> {
        FrameType::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    /// The specification's name of the frame type, e.g. `UTF8DATA`.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::EndpointInfo => "ENDPOINT_INFO",
            FrameType::Bye => "BYE",
            FrameType::Ack => "ACK",
            FrameType::Error => "ERROR",
            FrameType::PingPong => "PING_PONG",
            FrameType::Utf8 => "UTF8DATA",
            FrameType::Binary => "BINARYDATA",
            FrameType::TxStart => "TX_START",
            FrameType::TxChunk => "TX_CHUNK",
            FrameType::TxFinish => "TX_FINISH",
            FrameType::TxFetch => "TX_FETCH",
            FrameType::TxCancel => "TX_CANCEL",
        }
    }

    /// Whether the namespace is CAMP.Transaction (needs the feature flag).
    pub fn is_transaction(self) -> bool {
        (self as u8) <= 0x04
    }
}

/// The PING_PONG payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingPong {
    /// `ping`: the receiver answers with `pong`.
    Ping,
    /// `pong`: the answer to a `ping`; never answered.
    Pong,
}

/// How a transaction's bytes flow (TX_START `behaviour`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// The sender sends chunks on its own (byte 0).
    Push,
    /// The sender waits for TX_FETCH ranges (byte 1); needs a known size.
    Pull,
}

impl Behaviour {
    /// Lower-case name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Push => "push",
            Behaviour::Pull => "pull",
        }
    }
}

/// The body of a frame: everything after `sid`, by type.
///
/// `ack` fields are the sender's ack ids for ACK-tracked frames; the receiver
/// answers each with [`Body::Ack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Announces the endpoint's protocol version and feature flags.
    EndpointInfo {
        /// Ack id.
        ack: u32,
        /// Protocol version (1).
        version: u32,
        /// Feature flags; bit 0 = transactions.
        features: u64,
    },
    /// The sender is going away.
    Bye {
        /// Ack id.
        ack: u32,
        /// Why; empty when the frame carries none.
        reason: String,
    },
    /// Acknowledges the ACK-tracked frame with this ack id.
    Ack {
        /// The ack id being acknowledged.
        acked: u32,
    },
    /// An application or protocol error message.
    Error {
        /// Ack id.
        ack: u32,
        /// The error text.
        message: String,
    },
    /// Heartbeat.
    Ping(PingPong),
    /// A text message.
    Utf8 {
        /// Ack id.
        ack: u32,
        /// The text.
        text: String,
    },
    /// A binary message.
    Binary {
        /// Ack id.
        ack: u32,
        /// The bytes (a zero-copy slice of the received message).
        data: Bytes,
    },
    /// Opens a transaction (stream).
    TxStart {
        /// Ack id.
        ack: u32,
        /// Sender-chosen transaction id, unique within the session.
        tx_id: u32,
        /// Total size in bytes, or -1 when unknown (PUSH only).
        size: i64,
        /// PUSH or PULL.
        behaviour: Behaviour,
        /// Stream name; empty means `anonymous`.
        name: String,
    },
    /// A piece of a transaction's bytes. Not ACK-tracked.
    TxChunk {
        /// Transaction id.
        tx_id: u32,
        /// Byte position of the first byte of `data` in the stream.
        offset: u64,
        /// The bytes (a zero-copy slice of the received message).
        data: Bytes,
    },
    /// All of a transaction's bytes have been sent.
    TxFinish {
        /// Ack id.
        ack: u32,
        /// Transaction id.
        tx_id: u32,
    },
    /// Asks a PULL sender for the half-open byte range `[start, end)`.
    TxFetch {
        /// Ack id.
        ack: u32,
        /// Transaction id.
        tx_id: u32,
        /// First byte wanted.
        start: u64,
        /// One past the last byte wanted; past the size means to the end.
        end: u64,
    },
    /// Stops a transaction, from either side.
    TxCancel {
        /// Ack id.
        ack: u32,
        /// Transaction id.
        tx_id: u32,
    },
}

impl Body {
    /// The frame type of this body.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Body::EndpointInfo { .. } => FrameType::EndpointInfo,
            Body::Bye { .. } => FrameType::Bye,
            Body::Ack { .. } => FrameType::Ack,
            Body::Error { .. } => FrameType::Error,
            Body::Ping(_) => FrameType::PingPong,
            Body::Utf8 { .. } => FrameType::Utf8,
            Body::Binary { .. } => FrameType::Binary,
            Body::TxStart { .. } => FrameType::TxStart,
            Body::TxChunk { .. } => FrameType::TxChunk,
            Body::TxFinish { .. } => FrameType::TxFinish,
            Body::TxFetch { .. } => FrameType::TxFetch,
            Body::TxCancel { .. } => FrameType::TxCancel,
        }
    }

    /// The ack id of an ACK-tracked frame; `None` for ACK, PING_PONG and
    /// TX_CHUNK, which are not tracked.
    pub fn ack(&self) -> Option<u32> {
        match self {
            Body::EndpointInfo { ack, .. }
            | Body::Bye { ack, .. }
            | Body::Error { ack, .. }
            | Body::Utf8 { ack, .. }
            | Body::Binary { ack, .. }
            | Body::TxStart { ack, .. }
            | Body::TxFinish { ack, .. }
            | Body::TxFetch { ack, .. }
            | Body::TxCancel { ack, .. } => Some(*ack),
            Body::Ack { .. } | Body::Ping(_) | Body::TxChunk { .. } => None,
        }
    }

    /// Sets the ack id of an ACK-tracked frame (no effect on the others).
    pub fn set_ack(&mut self, id: u32) {
        match self {
            Body::EndpointInfo { ack, .. }
            | Body::Bye { ack, .. }
            | Body::Error { ack, .. }
            | Body::Utf8 { ack, .. }
            | Body::Binary { ack, .. }
            | Body::TxStart { ack, .. }
            | Body::TxFinish { ack, .. }
            | Body::TxFetch { ack, .. }
            | Body::TxCancel { ack, .. } => *ack = id,
            Body::Ack { .. } | Body::Ping(_) | Body::TxChunk { .. } => {}
        }
    }
}

/// Offset of the first byte after `sid` and `type`.
const HEADER: usize = 9;

impl Frame {
    /// A frame for session `sid`.
    pub fn new(sid: u64, body: Body) -> Frame {
        Frame { sid, body }
    }

    /// Length of the encoded frame in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER
            + match &self.body {
                Body::EndpointInfo { .. } => 16,
                Body::Bye { reason, .. } => 4 + reason.len(),
                Body::Ack { .. } => 4,
                Body::Error { message, .. } => 4 + message.len(),
                Body::Ping(_) => 4,
                Body::Utf8 { text, .. } => 4 + text.len(),
                Body::Binary { data, .. } => 4 + data.len(),
                Body::TxStart { name, .. } => 17 + name.len(),
                Body::TxChunk { data, .. } => 12 + data.len(),
                Body::TxFinish { .. } | Body::TxCancel { .. } => 8,
                Body::TxFetch { .. } => 24,
            }
    }

    /// Serializes the frame exactly as the reference implementation does.
    ///
    /// Encoding does not enforce the payload limits; the session checks them
    /// before a frame is queued so that the caller gets the error.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        buf.put_u64(self.sid);
        buf.put_u8(self.body.frame_type() as u8);
        match &self.body {
            Body::EndpointInfo {
                ack,
                version,
                features,
            } => {
                buf.put_u32(*ack);
                buf.put_u32(*version);
                buf.put_u64(*features);
            }
            Body::Bye { ack, reason } => {
                buf.put_u32(*ack);
                buf.put_slice(reason.as_bytes());
            }
            Body::Ack { acked } => buf.put_u32(*acked),
            Body::Error { ack, message } => {
                buf.put_u32(*ack);
                buf.put_slice(message.as_bytes());
            }
            Body::Ping(p) => buf.put_slice(match p {
                PingPong::Ping => b"ping",
                PingPong::Pong => b"pong",
            }),
            Body::Utf8 { ack, text } => {
                buf.put_u32(*ack);
                buf.put_slice(text.as_bytes());
            }
            Body::Binary { ack, data } => {
                buf.put_u32(*ack);
                buf.put_slice(data);
            }
            Body::TxStart {
                ack,
                tx_id,
                size,
                behaviour,
                name,
            } => {
                buf.put_u32(*ack);
                buf.put_u32(*tx_id);
                buf.put_i64(*size);
                buf.put_u8(match behaviour {
                    Behaviour::Push => 0,
                    Behaviour::Pull => 1,
                });
                buf.put_slice(name.as_bytes());
            }
            Body::TxChunk {
                tx_id,
                offset,
                data,
            } => {
                buf.put_u32(*tx_id);
                buf.put_u64(*offset);
                buf.put_slice(data);
            }
            Body::TxFinish { ack, tx_id } | Body::TxCancel { ack, tx_id } => {
                buf.put_u32(*ack);
                buf.put_u32(*tx_id);
            }
            Body::TxFetch {
                ack,
                tx_id,
                start,
                end,
            } => {
                buf.put_u32(*ack);
                buf.put_u32(*tx_id);
                buf.put_u64(*start);
                buf.put_u64(*end);
            }
        }
        debug_assert_eq!(buf.len(), self.encoded_len());
        buf.freeze()
    }

    /// Parses one binary WebSocket message. Never panics; binary payloads
    /// are zero-copy slices of `msg`.
    pub fn decode(msg: Bytes) -> Result<Frame, FrameError> {
        let len = msg.len();
        if len < HEADER {
            return Err(FrameError::Truncated {
                kind: "frame",
                len,
                need: HEADER,
            });
        }
        let sid = be_u64(&msg, 0);
        let ty = FrameType::from_byte(msg[8]).ok_or(FrameError::UnknownType(msg[8]))?;
        let kind = ty.name();
        let at_least = |need: usize| {
            if len < need {
                Err(FrameError::Truncated { kind, len, need })
            } else {
                Ok(())
            }
        };
        let exactly = |need: usize| {
            if len < need {
                Err(FrameError::Truncated { kind, len, need })
            } else if len > need {
                Err(FrameError::WrongLength { kind, len, need })
            } else {
                Ok(())
            }
        };
        let payload = |from: usize| -> Result<Bytes, FrameError> {
            let data = msg.slice(from..);
            if data.len() > MAX_PAYLOAD {
                return Err(FrameError::PayloadTooLarge {
                    kind,
                    len: data.len(),
                    max: MAX_PAYLOAD,
                });
            }
            Ok(data)
        };
        let text = |from: usize| -> Result<String, FrameError> {
            let data = payload(from)?;
            String::from_utf8(data.to_vec()).map_err(|_| FrameError::InvalidUtf8(kind))
        };
        let body = match ty {
            FrameType::EndpointInfo => {
                exactly(25)?;
                Body::EndpointInfo {
                    ack: be_u32(&msg, 9),
                    version: be_u32(&msg, 13),
                    features: be_u64(&msg, 17),
                }
            }
            FrameType::Bye => {
                at_least(13)?;
                Body::Bye {
                    ack: be_u32(&msg, 9),
                    reason: text(13)?,
                }
            }
            FrameType::Ack => {
                exactly(13)?;
                Body::Ack {
                    acked: be_u32(&msg, 9),
                }
            }
            FrameType::Error => {
                at_least(13)?;
                Body::Error {
                    ack: be_u32(&msg, 9),
                    message: text(13)?,
                }
            }
            FrameType::PingPong => {
                exactly(13).map_err(|_| FrameError::BadPing)?;
                match &msg[9..13] {
                    b"ping" => Body::Ping(PingPong::Ping),
                    b"pong" => Body::Ping(PingPong::Pong),
                    _ => return Err(FrameError::BadPing),
                }
            }
            FrameType::Utf8 => {
                at_least(13)?;
                Body::Utf8 {
                    ack: be_u32(&msg, 9),
                    text: text(13)?,
                }
            }
            FrameType::Binary => {
                at_least(13)?;
                Body::Binary {
                    ack: be_u32(&msg, 9),
                    data: payload(13)?,
                }
            }
            FrameType::TxStart => {
                at_least(26)?;
                let size = be_u64(&msg, 17) as i64;
                let behaviour = match msg[25] {
                    0 => Behaviour::Push,
                    1 => Behaviour::Pull,
                    other => return Err(FrameError::BadBehaviour(other)),
                };
                if size < -1 || (size == -1 && behaviour == Behaviour::Pull) {
                    return Err(FrameError::BadSize {
                        size,
                        behaviour: behaviour.name(),
                    });
                }
                let name = &msg[26..];
                if name.len() > MAX_NAME {
                    return Err(FrameError::NameTooLong(name.len()));
                }
                Body::TxStart {
                    ack: be_u32(&msg, 9),
                    tx_id: be_u32(&msg, 13),
                    size,
                    behaviour,
                    name: String::from_utf8(name.to_vec())
                        .map_err(|_| FrameError::InvalidUtf8(kind))?,
                }
            }
            FrameType::TxChunk => {
                at_least(21)?;
                Body::TxChunk {
                    tx_id: be_u32(&msg, 9),
                    offset: be_u64(&msg, 13),
                    data: payload(21)?,
                }
            }
            FrameType::TxFinish => {
                exactly(17)?;
                Body::TxFinish {
                    ack: be_u32(&msg, 9),
                    tx_id: be_u32(&msg, 13),
                }
            }
            FrameType::TxFetch => {
                exactly(33)?;
                Body::TxFetch {
                    ack: be_u32(&msg, 9),
                    tx_id: be_u32(&msg, 13),
                    start: be_u64(&msg, 17),
                    end: be_u64(&msg, 25),
                }
            }
            FrameType::TxCancel => {
                exactly(17)?;
                Body::TxCancel {
                    ack: be_u32(&msg, 9),
                    tx_id: be_u32(&msg, 13),
                }
            }
        };
        Ok(Frame { sid, body })
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("length checked"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("length checked"))
}
