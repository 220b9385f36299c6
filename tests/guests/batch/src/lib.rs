//! `batch`: a test-only guest (world `camp-bench:batch/batch`, `batch.wit`
//! beside this crate) exporting each hook once per message and once per
//! batch, for `benches/batch.rs`, which measures whether batching a
//! session's ready messages into one call would pay.

wit_bindgen::generate!({
    path: "batch.wit",
    world: "batch",
});

use camp_bench::batch::types::Payload;

/// The `scan-utf8` verdict: counts `!` over every byte.
fn scan(text: &str) -> Action {
    match text.bytes().filter(|&b| b == b'!').count() {
        0 => Action::Pass,
        1 => Action::Drop,
        n => Action::Replace(Payload::Utf8(n.to_string())),
    }
}

/// The exported type.
struct Batch;

impl Guest for Batch {
    fn on_receive_utf8(_session_id: u64, _text: String) -> Action {
        Action::Pass
    }

    fn on_receive_utf8_batch(_session_id: u64, texts: Vec<String>) -> Vec<Action> {
        texts.iter().map(|_| Action::Pass).collect()
    }

    fn on_receive_utf8_session(_session: &Session, _text: String) -> Action {
        Action::Pass
    }

    fn on_receive_utf8_session_batch(_session: &Session, texts: Vec<String>) -> Vec<Action> {
        texts.iter().map(|_| Action::Pass).collect()
    }

    fn scan_utf8(_session_id: u64, text: String) -> Action {
        scan(&text)
    }

    fn scan_utf8_batch(_session_id: u64, texts: Vec<String>) -> Vec<Action> {
        texts.iter().map(|t| scan(t)).collect()
    }
}

export!(Batch);
