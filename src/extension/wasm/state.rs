//! What one plugin instance's `Store` holds, and the host functions the
//! plugin imports (`camp:extension/host`).

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::budget::{CallMeter, Metered};
use super::output::{GuestOutput, MAX_LOG_MESSAGE, cut_at};
use crate::extension::Message;
use crate::protocol::MAX_PAYLOAD;
use crate::session::Session;

/// The longest close reason a plugin may give, in bytes: with the `…` that
/// marks a cut, within a WebSocket close reason's 123 bytes.
const MAX_CLOSE_REASON: usize = 120;

/// The host side of the WIT `session` resource. Hooks only ever get a
/// borrow, valid for the duration of the call, of "the session of this
/// call", so the handle carries nothing: the session itself sits in
/// [`InstanceState`] while the call runs. That makes a call free of
/// resource-table work and allocation.
pub struct SessionSlot;

/// A [`StoreLimits`] that also remembers which growth was refused, so a
/// trap that follows can be reported as
/// [`HookError::MemoryLimit`](crate::extension::HookError::MemoryLimit) or
/// [`HookError::Limit`](crate::extension::HookError::Limit) rather than a
/// generic trap.
pub struct Limiter {
    /// The limits themselves.
    limits: StoreLimits,
    /// Set when a memory growth was refused.
    pub(crate) exceeded: bool,
    /// Set when a table growth was refused.
    pub(crate) table_exceeded: bool,
}

impl Limiter {
    /// A limiter capping linear memory at `memory_bytes` and each table at
    /// `table_elements`.
    pub fn new(memory_bytes: usize, table_elements: usize) -> Limiter {
        Limiter {
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .table_elements(table_elements)
                .build(),
            exceeded: false,
            table_exceeded: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.exceeded = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.table_growing(current, desired, maximum)?;
        if !allowed {
            self.table_exceeded = true;
        }
        Ok(allowed)
    }
}

/// Bounds on what one plugin may do to a session through the host
/// interface (from its `NAME.toml`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostLimits {
    /// Keys a session's store may hold after a plugin's `set`.
    pub store_keys: usize,
    /// Bytes (keys + values) a session's store may hold after a plugin's
    /// `set`.
    pub store_bytes: usize,
    /// `send-*` calls one hook call may make.
    pub sends_per_call: u32,
}

/// The data of one instance's `Store`.
pub struct InstanceState {
    /// The plugin's name, for log lines written by the guest.
    pub(crate) plugin: Arc<str>,
    /// Resources handed to the guest (WASI handles).
    pub(crate) table: ResourceTable,
    /// The session of the hook call in progress (`None` between calls).
    pub(crate) current: Option<Session>,
    /// The WASI context: empty unless the configuration grants capabilities.
    pub(crate) wasi: WasiCtx,
    /// Memory and table caps.
    pub(crate) limiter: Limiter,
    /// The time budget account of the call in progress.
    pub(crate) meter: Arc<CallMeter>,
    /// The guest's stdout and stderr.
    pub(crate) output: GuestOutput,
    /// Bounds on the host interface.
    pub(crate) limits: HostLimits,
    /// Messages sent by the call in progress: queued to the session when the
    /// call returns successfully, discarded when it fails (at most
    /// `sends_per_call`).
    pub(crate) sends: Vec<Message>,
    /// The bound the guest ran into in this call, if any (the call then
    /// traps and fails with [`HookError::Limit`](crate::extension::HookError::Limit)).
    pub(crate) limit_hit: Option<String>,
}

impl Metered for InstanceState {
    fn meter(&self) -> &CallMeter {
        &self.meter
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl InstanceState {
    /// The session behind a borrowed `session` handle: the session of the
    /// call in progress; outside a call it traps.
    fn session(&self, _handle: &Resource<SessionSlot>) -> wasmtime::Result<&Session> {
        self.current
            .as_ref()
            .ok_or_else(|| wasmtime::format_err!("session handle used outside of a hook call"))
    }

    /// Records that the guest ran into a bound and returns the trap that
    /// ends its call.
    fn limit(&mut self, what: String) -> wasmtime::Error {
        let err = wasmtime::format_err!("{what}");
        self.limit_hit = Some(what);
        err
    }

    /// Keeps one `send-*` of the call, within the per-call bound.
    fn count_send(&mut self) -> wasmtime::Result<()> {
        if self.sends.len() >= self.limits.sends_per_call as usize {
            let max = self.limits.sends_per_call;
            return Err(self.limit(format!(
                "more than sends_per_call = {max} session sends in one call"
            )));
        }
        Ok(())
    }
}

/// The origin of `monotonic-ms`.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Whether the server's log filter lets a plugin line at `level` through:
/// `host.log` drops the lines it refuses, and `host.log-enabled` answers
/// with it, so the two never disagree. A callsite check in this module
/// (the target of the lines `log` writes); the answer changes only if the
/// subscriber's filter does (never in the camp-server binary).
pub(crate) fn log_enabled(level: tracing::Level) -> bool {
    match level {
        tracing::Level::TRACE => tracing::enabled!(tracing::Level::TRACE),
        tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
        tracing::Level::INFO => tracing::enabled!(tracing::Level::INFO),
        tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
        tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
    }
}

/// The host interface, once; each WIT version's generated traits below
/// delegate here.
impl InstanceState {
    fn log(&mut self, level: tracing::Level, message: String) {
        // A level the server's log filter leaves out costs a callsite
        // check: no cut, no output budget, no formatting.
        if !log_enabled(level) {
            return;
        }
        let message = cut_at(&message, MAX_LOG_MESSAGE);
        if !self.output.admit_log(message.len()) {
            return;
        }
        let plugin = &*self.plugin;
        let session = self.current.as_ref().map(Session::id);
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, session, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, session, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, session, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, session, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin, session, "{message}"),
        }
    }

    fn monotonic_ms(&mut self) -> u64 {
        origin().elapsed().as_millis() as u64
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn session_id(&mut self, this: &Resource<SessionSlot>) -> wasmtime::Result<u64> {
        Ok(self.session(this)?.id())
    }

    fn session_remote_addr(
        &mut self,
        this: &Resource<SessionSlot>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.session(this)?.remote_addr().map(|a| a.to_string()))
    }

    fn session_get(
        &mut self,
        this: &Resource<SessionSlot>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.session(this)?.get(&key))
    }

    fn session_set(
        &mut self,
        this: &Resource<SessionSlot>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        let limits = self.limits;
        let written =
            self.session(this)?
                .set_within(key, value, limits.store_keys, limits.store_bytes);
        written.map_err(|full| self.limit(full))
    }

    fn session_remove(
        &mut self,
        this: &Resource<SessionSlot>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.session(this)?.remove(&key))
    }

    fn session_send(
        &mut self,
        this: &Resource<SessionSlot>,
        message: Message,
    ) -> wasmtime::Result<()> {
        if self.session(this)?.in_extension_send() {
            return Err(
                self.limit("a message sent by a plugin cannot send further messages".into())
            );
        }
        if message.len() > MAX_PAYLOAD {
            return Err(self.limit(format!(
                "a send of {} bytes, over the {MAX_PAYLOAD}-byte payload limit",
                message.len()
            )));
        }
        self.count_send()?;
        self.sends.push(message);
        Ok(())
    }

    fn session_close(
        &mut self,
        this: &Resource<SessionSlot>,
        reason: String,
    ) -> wasmtime::Result<()> {
        // A close reason travels in a BYE frame and a WebSocket close
        // (at most 123 bytes): longer ones are cut.
        self.session(this)?
            .close(cut_at(&reason, MAX_CLOSE_REASON).into_owned());
        Ok(())
    }
}

/// Implements one WIT version's `host` and `types` traits by delegating to
/// the methods above; `$extra` are the host functions of that version
/// beyond 0.1.0's (they may use `level` to convert a WIT level).
macro_rules! host_interface {
    ($version:ident $(, $($extra:tt)+)?) => {
        mod $version {
            use wasmtime::component::Resource;

            use super::super::bindings::$version::camp::extension::{host, types};
            use super::{InstanceState, SessionSlot};
            use crate::extension::Message;

            impl types::Host for InstanceState {}

            /// A WIT level as a `tracing` level.
            fn level(level: types::Level) -> tracing::Level {
                match level {
                    types::Level::Trace => tracing::Level::TRACE,
                    types::Level::Debug => tracing::Level::DEBUG,
                    types::Level::Info => tracing::Level::INFO,
                    types::Level::Warn => tracing::Level::WARN,
                    types::Level::Error => tracing::Level::ERROR,
                }
            }

            impl host::Host for InstanceState {
                fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
                    InstanceState::log(self, self::level(level), message);
                    Ok(())
                }

                $($($extra)+)?

                fn monotonic_ms(&mut self) -> wasmtime::Result<u64> {
                    Ok(InstanceState::monotonic_ms(self))
                }

                fn now_ms(&mut self) -> wasmtime::Result<u64> {
                    Ok(InstanceState::now_ms(self))
                }
            }

            impl host::HostSession for InstanceState {
                fn id(&mut self, this: Resource<SessionSlot>) -> wasmtime::Result<u64> {
                    self.session_id(&this)
                }

                fn remote_addr(
                    &mut self,
                    this: Resource<SessionSlot>,
                ) -> wasmtime::Result<Option<String>> {
                    self.session_remote_addr(&this)
                }

                fn get(
                    &mut self,
                    this: Resource<SessionSlot>,
                    key: String,
                ) -> wasmtime::Result<Option<String>> {
                    self.session_get(&this, key)
                }

                fn set(
                    &mut self,
                    this: Resource<SessionSlot>,
                    key: String,
                    value: String,
                ) -> wasmtime::Result<()> {
                    self.session_set(&this, key, value)
                }

                fn remove(
                    &mut self,
                    this: Resource<SessionSlot>,
                    key: String,
                ) -> wasmtime::Result<Option<String>> {
                    self.session_remove(&this, key)
                }

                fn send_utf8(
                    &mut self,
                    this: Resource<SessionSlot>,
                    text: String,
                ) -> wasmtime::Result<()> {
                    self.session_send(&this, Message::Utf8(text))
                }

                fn send_binary(
                    &mut self,
                    this: Resource<SessionSlot>,
                    data: Vec<u8>,
                ) -> wasmtime::Result<()> {
                    self.session_send(&this, Message::Binary(data.into()))
                }

                fn send_error(
                    &mut self,
                    this: Resource<SessionSlot>,
                    text: String,
                ) -> wasmtime::Result<()> {
                    self.session_send(&this, Message::Error(text))
                }

                fn close(
                    &mut self,
                    this: Resource<SessionSlot>,
                    reason: String,
                ) -> wasmtime::Result<()> {
                    self.session_close(&this, reason)
                }

                fn drop(&mut self, this: Resource<SessionSlot>) -> wasmtime::Result<()> {
                    // Only borrows are ever handed out and they carry
                    // nothing, so there is nothing to free.
                    let _ = this;
                    Ok(())
                }
            }
        }
    };
}

host_interface!(
    latest,
    fn log_enabled(&mut self, level: types::Level) -> wasmtime::Result<bool> {
        Ok(super::log_enabled(self::level(level)))
    }
);
host_interface!(v0_1);
