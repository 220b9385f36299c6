//! `passthrough`: implements every hook and passes every message unchanged.
//! The benchmark's plugin: it measures the host's cost of one hook call
//! (checkout, copying the message into the guest, the call, the action).

use camp_plugin::{Action, HookSet, Plugin, Session};

/// The plugin type exported as the component.
struct Passthrough;

impl Plugin for Passthrough {
    fn name() -> String {
        "passthrough".into()
    }

    fn hooks() -> HookSet {
        HookSet::all()
    }

    fn on_receive_utf8(_session: &Session, _text: String) -> Action {
        Action::Pass
    }

    fn on_receive_binary(_session: &Session, _data: Vec<u8>) -> Action {
        Action::Pass
    }
}

camp_plugin::plugin!(Passthrough);
