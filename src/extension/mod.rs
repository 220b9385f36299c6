//! Extensions: the hooks every message passes through.
//!
//! An [`Extension`] sees each UTF-8, binary and error message of every
//! session, before it is sent ([`Hook::BeforeSendUtf8`], …) and after it is
//! received ([`Hook::OnReceiveUtf8`], …). It may rewrite the message in place
//! and returns a [`Verdict`]. The server keeps extensions in an ordered
//! [`Pipeline`]: each extension sees the previous one's output, and the
//! first [`Verdict::Drop`] stops the message.
//!
//! Native Rust extensions implement the trait directly; WebAssembly plugins
//! implement it through the plugin host, so the session code knows one seam.
//!
//! ```
//! use camp_server::extension::{Extension, Hook, HookFuture, HookSet, Message, Pipeline, Verdict};
//! use camp_server::session::Session;
//! use std::sync::Arc;
//!
//! /// Upper-cases every text message a client sends.
//! struct Shout;
//!
//! impl Extension for Shout {
//!     fn name(&self) -> &str { "shout" }
//!     fn hooks(&self) -> HookSet { HookSet::NONE.with(Hook::OnReceiveUtf8) }
//!     fn call<'a>(&'a self, _: Hook, _: &'a Session, msg: &'a mut Message) -> HookFuture<'a> {
//!         if let Message::Utf8(text) = msg {
//!             *text = text.to_uppercase();
//!         }
//!         Box::pin(std::future::ready(Ok(Verdict::Pass)))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let pipeline = Pipeline::new();
//! pipeline.register(Arc::new(Shout)).unwrap();
//! let (session, _outbox) = Session::detached(1);
//! let mut msg = Message::Utf8("hello".into());
//! assert_eq!(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg).await, Verdict::Pass);
//! assert_eq!(msg, Message::Utf8("HELLO".into()));
//! # });
//! ```

pub(crate) mod clock;
mod pipeline;

use std::future::Future;
use std::pin::Pin;

/// Messages and verdicts are the session's: extensions implement the
/// session's [`Filter`](crate::session::Filter) seam through the
/// [`Pipeline`].
pub use crate::session::{Message, Verdict};
pub use pipeline::{ExtensionInfo, ExtensionStats, Pipeline, PipelineError};

use crate::session::Session;

/// One of the six message hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// An outgoing UTF-8 message, before it is queued.
    BeforeSendUtf8,
    /// An outgoing binary message, before it is queued.
    BeforeSendBinary,
    /// An outgoing error message, before it is queued.
    BeforeSendError,
    /// A received UTF-8 message, before the application sees it.
    OnReceiveUtf8,
    /// A received binary message, before the application sees it.
    OnReceiveBinary,
    /// A received error message, before the application sees it.
    OnReceiveError,
}

impl Hook {
    /// All hooks, in the order of their [`HookSet`] bits.
    pub const ALL: [Hook; 6] = [
        Hook::BeforeSendUtf8,
        Hook::BeforeSendBinary,
        Hook::BeforeSendError,
        Hook::OnReceiveUtf8,
        Hook::OnReceiveBinary,
        Hook::OnReceiveError,
    ];

    /// The hook's name in the WIT world, e.g. `before-send-utf8`.
    pub fn name(self) -> &'static str {
        match self {
            Hook::BeforeSendUtf8 => "before-send-utf8",
            Hook::BeforeSendBinary => "before-send-binary",
            Hook::BeforeSendError => "before-send-error",
            Hook::OnReceiveUtf8 => "on-receive-utf8",
            Hook::OnReceiveBinary => "on-receive-binary",
            Hook::OnReceiveError => "on-receive-error",
        }
    }

    /// The hook for a message going out (`outbound`) or coming in.
    pub fn for_message(message: &Message, outbound: bool) -> Hook {
        match (message, outbound) {
            (Message::Utf8(_), true) => Hook::BeforeSendUtf8,
            (Message::Binary(_), true) => Hook::BeforeSendBinary,
            (Message::Error(_), true) => Hook::BeforeSendError,
            (Message::Utf8(_), false) => Hook::OnReceiveUtf8,
            (Message::Binary(_), false) => Hook::OnReceiveBinary,
            (Message::Error(_), false) => Hook::OnReceiveError,
        }
    }

    /// Whether the hook runs on outgoing messages.
    pub fn is_outbound(self) -> bool {
        matches!(
            self,
            Hook::BeforeSendUtf8 | Hook::BeforeSendBinary | Hook::BeforeSendError
        )
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of hooks: which hooks an extension implements, so that the host
/// never copies a message into an extension that does not care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HookSet(u8);

impl HookSet {
    /// No hook.
    pub const NONE: HookSet = HookSet(0);
    /// All six hooks.
    pub const ALL: HookSet = HookSet(0b11_1111);

    /// The set with `hook` added.
    pub const fn with(self, hook: Hook) -> HookSet {
        HookSet(self.0 | (1 << hook as u8))
    }

    /// Whether `hook` is in the set.
    pub fn contains(self, hook: Hook) -> bool {
        self.0 & hook.bit() != 0
    }

    /// The set from its bit representation (bit i = `Hook::ALL[i]`); unknown
    /// bits are ignored.
    pub fn from_bits(bits: u8) -> HookSet {
        HookSet(bits & Self::ALL.0)
    }

    /// The bit representation (bit i = `Hook::ALL[i]`).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The hooks in the set.
    pub fn iter(self) -> impl Iterator<Item = Hook> {
        Hook::ALL.into_iter().filter(move |h| self.contains(*h))
    }
}

/// What the pipeline does when an extension's hook fails.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Drop the message (the safe default for filters).
    #[default]
    FailClosed,
    /// Let the message through unchanged, as if the extension passed it.
    FailOpen,
    /// Drop the message and close the session with 4002
    /// ([`Verdict::Close`]).
    CloseSession,
}

/// Why a hook call failed. The pipeline logs it with the extension's name
/// and the hook, counts it, and applies the extension's [`FailurePolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The extension trapped (a panic, `unreachable`, an out-of-bounds access).
    #[error("trapped: {0}")]
    Trap(String),
    /// The hook ran past its time budget and was interrupted.
    #[error("exceeded its time budget of {0:?}")]
    Timeout(std::time::Duration),
    /// The hook tried to grow memory past the extension's cap.
    #[error("exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The hook ran into another bound of its sandbox (table elements,
    /// session store, sends per call); the message names the bound and its
    /// configuration key.
    #[error("hit a limit: {0}")]
    Limit(String),
    /// The extension is backing off after repeated failures and was not called.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The extension returned something the host cannot use (e.g. a
    /// replacement of the wrong kind or over the payload limit).
    #[error("invalid result: {0}")]
    Invalid(String),
}

impl HookError {
    /// A short label for metrics: `trap`, `timeout`, `memory`, `limit`,
    /// `unavailable`, `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            HookError::Trap(_) => "trap",
            HookError::Timeout(_) => "timeout",
            HookError::MemoryLimit(_) => "memory",
            HookError::Limit(_) => "limit",
            HookError::Unavailable(_) => "unavailable",
            HookError::Invalid(_) => "invalid",
        }
    }
}

/// The future of a hook call: the verdict, or why the call failed.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<Verdict, HookError>> + Send + 'a>>;

/// The future of a session notification.
pub type NotifyFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// An extension: a named, ordered participant in every session's messages.
///
/// Hook calls are futures, awaited by the session's own task: an extension
/// that takes its time delays only the session whose message it holds, as
/// long as it yields (WebAssembly plugins yield every millisecond of
/// running; a native extension must not block the thread).
///
/// Implementations must be cheap to call concurrently from many sessions:
/// the pipeline calls `call` with `&self` from every session's task. State
/// that belongs to a session goes in the session's store
/// ([`Session::set`]/[`Session::get`]), which also survives a hot reload.
pub trait Extension: Send + Sync + 'static {
    /// Unique name within a pipeline.
    fn name(&self) -> &str;

    /// Which version of the extension this is, for metrics and the admin
    /// view: counters and the latency histogram are kept per name *and*
    /// version, so a replacement (say a Python port of a Rust plugin)
    /// never shares a histogram with the version it replaced. WebAssembly
    /// plugins give the first 12 hex digits of their content's SHA-256;
    /// empty (the default) for an extension without versions.
    fn version(&self) -> &str {
        ""
    }

    /// The hooks this extension implements; others are never called.
    fn hooks(&self) -> HookSet;

    /// What to do when [`call`](Extension::call) fails.
    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::FailClosed
    }

    /// A session finished its handshake (called for sessions opened after
    /// the extension was registered).
    fn session_opened<'a>(&'a self, _session: &'a Session) -> NotifyFuture<'a> {
        Box::pin(std::future::ready(()))
    }

    /// A session closed.
    fn session_closed<'a>(&'a self, _session: &'a Session) -> NotifyFuture<'a> {
        Box::pin(std::future::ready(()))
    }

    /// Runs one hook on `message`, which it may rewrite in place.
    fn call<'a>(
        &'a self,
        hook: Hook,
        session: &'a Session,
        message: &'a mut Message,
    ) -> HookFuture<'a>;

    /// The extension was removed from the pipeline (or replaced by a new
    /// version); calls already running may still finish.
    fn unregistered(&self) {}
}

pub mod wasm;
