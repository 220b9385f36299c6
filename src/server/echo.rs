//! The binary's application, public so that tests and embedders run the
//! same one.

use crate::session::{Message, Session, SessionEvent, SessionEvents};

/// The built-in application: every message that reaches it goes back to
/// its session, and every stream is streamed back with the same name and
/// behaviour (PUSH stays PUSH, PULL stays PULL).
pub async fn echo(session: Session, mut events: SessionEvents) {
    while let Some(event) = events.next().await {
        match event {
            // Nobody awaits the echo's ACK: posted without a receipt.
            SessionEvent::Message(m @ (Message::Utf8(_) | Message::Binary(_))) => session.post(m),
            // Debug, not info: a peer can send ERROR messages as fast as
            // any other, and a line each would let it fill the log.
            SessionEvent::Message(Message::Error(text)) => {
                tracing::debug!(sid = session.id(), "peer reported: {text}")
            }
            SessionEvent::Stream(stream) => {
                let options = stream.options();
                let transfer = session.relay(stream, options);
                let sid = session.id();
                tokio::spawn(async move {
                    if let Err(e) = transfer.await {
                        // Debug, not info: a peer can make every stream fail
                        // (limits refuse them: counted in
                        // camp_limits_hit_total, told to it in an ERROR
                        // frame), and one line each let it write 11 MB of
                        // log a second.
                        tracing::debug!(sid, "stream echo failed: {e}");
                    }
                });
            }
            SessionEvent::Stats(_) => {}
            SessionEvent::Closed(_) => break,
        }
    }
}
