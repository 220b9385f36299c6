//! A small SDK for camp-server plugins written in Rust.
//!
//! The WIT world (`wit/camp-extension.wit`) makes a plugin export all ten
//! functions. Most plugins care about one or two hooks, so this crate
//! offers the [`Plugin`] trait whose methods all have sensible defaults
//! (pass the message, accept any configuration) and a [`plugin!`] macro
//! that exports a type implementing it as the component's world.
//!
//! ```ignore
//! struct Shout;
//! impl camp_plugin::Plugin for Shout {
//!     fn name() -> String { "shout".into() }
//!     fn hooks() -> HookSet { HookSet::ON_RECEIVE_UTF8 }
//!     fn on_receive_utf8(_: &Session, text: String) -> Action {
//!         Action::Replace(Payload::Utf8(text.to_uppercase()))
//!     }
//! }
//! camp_plugin::plugin!(Shout);
//! ```
//!
//! [`log`] writes a line into the server's log; [`log_enabled`] says
//! whether a line at a level would be written, so a plugin formats only
//! lines someone will read (`if log_enabled(Level::Debug) { log(…,
//! &format!(…)) }`), and can leave out of [`Plugin::hooks`] the hooks that
//! would only log (`hooks` runs after `on_register`, so a level from the
//! configuration is known by then).
//!
//! Panics are logged through `host.log` at error level (as
//! `panic at FILE:LINE:COL: MESSAGE`) and then trap; the host also captures
//! stderr, where the standard panic message still goes. The SDK installs
//! this panic hook once per instance, when the instance is registered.

use std::marker::PhantomData;
use std::panic::PanicHookInfo;
use std::sync::Once;

/// The bindings generated from `wit/camp-extension.wit`.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__camp_export",
        default_bindings_module: "camp_plugin::bindings",
    });
}

use bindings::Guest;
pub use bindings::camp::extension::host::{Session, log, log_enabled, monotonic_ms, now_ms};
pub use bindings::camp::extension::types::{Action, HookSet, Level, Payload};

/// A plugin, with every hook defaulting to "pass" so an implementation
/// only writes the hooks it declares in [`Plugin::hooks`].
pub trait Plugin {
    /// The plugin's human-readable name.
    fn name() -> String;
    /// The hooks the host should call. Called once per load, after
    /// [`Plugin::on_register`] succeeded on the same instance.
    fn hooks() -> HookSet;
    /// Receives the `config` value of the plugin's TOML file; an error
    /// refuses the load.
    fn on_register(_config: String) -> Result<(), String> {
        Ok(())
    }
    /// The instance is being retired.
    fn on_unregister() {}
    /// A session finished its handshake.
    fn session_opened(_session: &Session) {}
    /// A session closed.
    fn session_closed(_session: &Session) {}
    /// An outgoing UTF-8 message.
    fn before_send_utf8(_session: &Session, _text: String) -> Action {
        Action::Pass
    }
    /// An outgoing binary message.
    fn before_send_binary(_session: &Session, _data: Vec<u8>) -> Action {
        Action::Pass
    }
    /// An outgoing error message.
    fn before_send_error(_session: &Session, _text: String) -> Action {
        Action::Pass
    }
    /// A received UTF-8 message.
    fn on_receive_utf8(_session: &Session, _text: String) -> Action {
        Action::Pass
    }
    /// A received binary message.
    fn on_receive_binary(_session: &Session, _data: Vec<u8>) -> Action {
        Action::Pass
    }
    /// A received error message.
    fn on_receive_error(_session: &Session, _text: String) -> Action {
        Action::Pass
    }
}

/// Installs (once per instance) a panic hook that logs the panic through
/// the host's `log` at error level, then runs the previous hook (by
/// default, the standard message on stderr).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            log(Level::Error, &panic_message(info));
            previous(info);
        }));
    });
}

/// `panic at FILE:LINE:COL: MESSAGE` for a panic.
fn panic_message(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "Box<dyn Any>"
    };
    match info.location() {
        Some(loc) => format!(
            "panic at {}:{}:{}: {message}",
            loc.file(),
            loc.line(),
            loc.column()
        ),
        None => format!("panic at <unknown>: {message}"),
    }
}

/// Bridges a [`Plugin`] to the generated world trait; used by [`plugin!`].
#[doc(hidden)]
pub struct Adapter<T>(PhantomData<T>);

impl<T: Plugin> Guest for Adapter<T> {
    fn name() -> String {
        T::name()
    }
    fn hooks() -> HookSet {
        T::hooks()
    }
    fn on_register(config: String) -> Result<(), String> {
        install_panic_hook();
        T::on_register(config)
    }
    fn on_unregister() {
        T::on_unregister()
    }
    fn session_opened(session: &Session) {
        T::session_opened(session)
    }
    fn session_closed(session: &Session) {
        T::session_closed(session)
    }
    fn before_send_utf8(session: &Session, text: String) -> Action {
        T::before_send_utf8(session, text)
    }
    fn before_send_binary(session: &Session, data: Vec<u8>) -> Action {
        T::before_send_binary(session, data)
    }
    fn before_send_error(session: &Session, text: String) -> Action {
        T::before_send_error(session, text)
    }
    fn on_receive_utf8(session: &Session, text: String) -> Action {
        T::on_receive_utf8(session, text)
    }
    fn on_receive_binary(session: &Session, data: Vec<u8>) -> Action {
        T::on_receive_binary(session, data)
    }
    fn on_receive_error(session: &Session, text: String) -> Action {
        T::on_receive_error(session, text)
    }
}

/// Exports `$t` (a type implementing [`Plugin`]) as this component's
/// `camp:extension/plugin` world. Use it once per plugin crate.
#[macro_export]
macro_rules! plugin {
    ($t:ty) => {
        type __CampPluginExport = $crate::Adapter<$t>;
        $crate::bindings::__camp_export!(__CampPluginExport with_types_in $crate::bindings);
    };
}
