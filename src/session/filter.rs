//! The seam between a session and whatever inspects its messages.
//!
//! The session calls a [`Filter`] for every UTF-8, binary and error message
//! it receives (before the application sees it) and sends (before it is
//! queued), and once when it opens and closes. The extension pipeline
//! implements it; the session knows nothing of extensions.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::Session;

/// A message: what the application sends and receives, and what filters
/// see and may rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A UTF8DATA payload.
    Utf8(String),
    /// A BINARYDATA payload: a view of the received frame (no copy) or of
    /// what the application sent.
    Binary(Bytes),
    /// An ERROR payload.
    Error(String),
}

impl Message {
    /// `utf8`, `binary` or `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Utf8(_) => "utf8",
            Message::Binary(_) => "binary",
            Message::Error(_) => "error",
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Utf8(s) | Message::Error(s) => s.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a filter decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The message (possibly rewritten in place) goes on.
    Pass,
    /// The message stops here: later extensions and the application (or the
    /// peer) never see it.
    Drop,
    /// The message stops here and the session closes: BYE, then a
    /// WebSocket close with `code` (4000 graceful, 4001 client error, 4002
    /// server error) and `reason`.
    Close {
        /// The close code.
        code: u16,
        /// The reason sent with BYE and the close frame.
        reason: String,
    },
}

/// Which way a message is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received from the peer, on its way to the application.
    Inbound,
    /// Sent by the application (or an extension), on its way to the peer.
    Outbound,
}

/// The future of a filter call.
pub type FilterFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a session calls for each message and at its start and end.
///
/// [`Filter::wants`] is asked first, without allocating: a filter with
/// nothing to do for a message (no extension declared its hook) costs one
/// call and no future.
pub trait Filter: Send + Sync + 'static {
    /// Whether [`Filter::filter`] must see this message.
    fn wants(&self, direction: Direction, message: &Message) -> bool;

    /// Decides about `message`, which it may rewrite in place.
    fn filter<'a>(
        &'a self,
        direction: Direction,
        session: &'a Session,
        message: &'a mut Message,
    ) -> FilterFuture<'a, Verdict>;

    /// The session finished its handshake.
    fn opened<'a>(&'a self, session: &'a Session) -> FilterFuture<'a, ()>;

    /// The session ended.
    fn closed<'a>(&'a self, session: &'a Session) -> FilterFuture<'a, ()>;
}

/// A filter that passes everything and wants nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFilter;

impl Filter for NoFilter {
    fn wants(&self, _: Direction, _: &Message) -> bool {
        false
    }

    fn filter<'a>(
        &'a self,
        _: Direction,
        _: &'a Session,
        _: &'a mut Message,
    ) -> FilterFuture<'a, Verdict> {
        Box::pin(std::future::ready(Verdict::Pass))
    }

    fn opened<'a>(&'a self, _: &'a Session) -> FilterFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn closed<'a>(&'a self, _: &'a Session) -> FilterFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}
