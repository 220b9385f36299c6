//! [`WasmPlugin`]: one loaded version of a WebAssembly plugin, seen by the
//! pipeline as an [`Extension`].
//!
//! The component is compiled once; calls run on a pool of instances (one
//! `Store` each), checked out for one call and returned after it, so a call
//! costs no instantiation and sessions cost nothing. At most
//! `max_instances` exist; a call that finds them all busy waits its turn
//! (first come, first served, without holding a thread); the healthy path
//! takes no lock. Per-session state lives in the
//! host's session store.
//!
//! Every guest call is async and runs under the time budget of
//! [`budget`](super::budget): it yields to the runtime every tick, so a slow
//! hook delays only its own session. A trap, a timeout or a limit discards
//! the instance (a fresh one is made on demand). Failures are accounted
//! **per session**: a session whose messages keep making the plugin fail
//! backs off on its own (its calls fail fast with
//! [`HookError::Unavailable`] and its policy applies), while every other
//! session keeps a working plugin.
//!
//! Before a version is accepted it passes a trial: instantiation,
//! `on-register`, and one call of each hook it declares (and of both
//! session notifications) against a synthetic session with an empty
//! payload. After it replaces another version it is on probation: see
//! [`WasmPlugin::probation`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::bindings::latest::camp::extension::types::{Action, HookSet as WitHookSet, Payload};
use super::bindings::{CURRENT_WIT_VERSION, latest, v0_1};
use super::budget;
use super::config::PluginConfig;
use super::output::GuestOutput;
use super::state::{HostLimits, InstanceState, Limiter, SessionSlot};
use crate::extension::{
    Extension, FailurePolicy, Hook, HookError, HookFuture, HookSet, Message, NotifyFuture, Verdict,
};
use crate::protocol::MAX_PAYLOAD;
use crate::session::Session;

/// Consecutive failures of one session after which that session backs off.
const BACKOFF_AFTER: u32 = 3;
/// The first back-off; it doubles with every failure after that.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Sessions whose failures are remembered at once (only failing sessions
/// are; one that succeeds or closes is forgotten). Past this, failures of
/// further sessions are still handled by the policy, without back-off.
const MAX_FAILING_SESSIONS: usize = 65_536;
/// Time budget of lifecycle calls (`name`, `hooks`, `on-register`, …),
/// which may do one-time work such as compiling patterns.
const LIFECYCLE_DEADLINE: Duration = Duration::from_secs(1);
/// The longest name a plugin may give itself (`name()`), in bytes; longer
/// names are cut.
const MAX_GUEST_NAME: usize = 256;
/// The session id of the trial's synthetic session.
pub const TRIAL_SESSION: u64 = 0;
/// Distinct sessions that must see a failure, with failures outnumbering
/// successes, for a version on probation to be rolled back.
pub const ROLLBACK_SESSIONS: usize = 3;

/// Why an instance could not be made or a lifecycle call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// The component does not fit the `camp:extension/plugin` world or
    /// instantiation trapped.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// A WASI capability from the configuration could not be granted.
    #[error("cannot grant capability: {0}")]
    Capability(String),
    /// `name`, `hooks`, `on-register` or `on-unregister` trapped or ran out
    /// of time or memory.
    #[error("{call} failed: {error}")]
    Call {
        /// The export.
        call: &'static str,
        /// What happened.
        error: HookError,
    },
    /// `on-register` refused the configuration.
    #[error("on-register refused: {0}")]
    Refused(String),
    /// A declared hook failed its trial call (synthetic session, empty
    /// payload) before the version went live.
    #[error("trial call of {call} failed: {error}")]
    Trial {
        /// The export.
        call: &'static str,
        /// What happened.
        error: HookError,
    },
}

/// A pre-linked component, for the WIT version it was built against.
pub(crate) enum PluginPre {
    /// `camp:extension@0.2.x` (0.2.0 and 0.2.1 share the bindings: see
    /// [`bindings`](super::bindings)).
    Latest(latest::PluginPre<InstanceState>),
    /// `camp:extension@0.1.0`.
    V0_1(v0_1::PluginPre<InstanceState>),
}

impl PluginPre {
    /// The WIT package version the component was built against: the
    /// version of the `camp:extension` interfaces it imports (a plugin
    /// built against 0.2.0 imports `camp:extension/host@0.2.0` even though
    /// the 0.2.1 definitions serve it), or the bindings' version if it
    /// imports none.
    fn version(&self, engine: &Engine) -> String {
        let (component, fallback) = match self {
            PluginPre::Latest(pre) => (pre.instance_pre().component(), CURRENT_WIT_VERSION),
            PluginPre::V0_1(pre) => (pre.instance_pre().component(), "0.1.0"),
        };
        component
            .component_type()
            .imports(engine)
            .find_map(|(name, _)| {
                let rest = name.strip_prefix("camp:extension/")?;
                let (_, version) = rest.split_once('@')?;
                Some(version.to_string())
            })
            .unwrap_or_else(|| fallback.to_string())
    }

    /// Instantiates into `store` (async: start functions may run).
    async fn instantiate(&self, store: &mut Store<InstanceState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            PluginPre::Latest(pre) => Bindings::Latest(pre.instantiate_async(store).await?),
            PluginPre::V0_1(pre) => Bindings::V0_1(pre.instantiate_async(store).await?),
        })
    }
}

/// The typed exports of an instance, for its WIT version.
enum Bindings {
    /// `camp:extension@0.2.x`.
    Latest(latest::Plugin),
    /// `camp:extension@0.1.0`.
    V0_1(v0_1::Plugin),
}

/// A 0.1.0 action in the current types (the variants are the same).
fn action_from_v0_1(action: v0_1::camp::extension::types::Action) -> Action {
    use v0_1::camp::extension::types::{Action as A, Payload as P};
    match action {
        A::Pass => Action::Pass,
        A::Drop => Action::Drop,
        A::Replace(P::Utf8(s)) => Action::Replace(Payload::Utf8(s)),
        A::Replace(P::Binary(b)) => Action::Replace(Payload::Binary(b)),
        A::Replace(P::Error(s)) => Action::Replace(Payload::Error(s)),
    }
}

/// 0.1.0 hook flags in the current type; a 0.1.0 plugin cannot declare
/// the session notifications, so it gets both (as it always did).
fn hooks_from_v0_1(flags: v0_1::camp::extension::types::HookSet) -> WitHookSet {
    use v0_1::camp::extension::types::HookSet as Old;
    [
        (Old::BEFORE_SEND_UTF8, WitHookSet::BEFORE_SEND_UTF8),
        (Old::BEFORE_SEND_BINARY, WitHookSet::BEFORE_SEND_BINARY),
        (Old::BEFORE_SEND_ERROR, WitHookSet::BEFORE_SEND_ERROR),
        (Old::ON_RECEIVE_UTF8, WitHookSet::ON_RECEIVE_UTF8),
        (Old::ON_RECEIVE_BINARY, WitHookSet::ON_RECEIVE_BINARY),
        (Old::ON_RECEIVE_ERROR, WitHookSet::ON_RECEIVE_ERROR),
    ]
    .into_iter()
    .filter(|(old, _)| flags.contains(*old))
    .fold(
        WitHookSet::SESSION_OPENED | WitHookSet::SESSION_CLOSED,
        |set, (_, new)| set | new,
    )
}

/// One instance of the plugin: its store and its exports.
struct Instance {
    /// The store (its data holds the WASI context, limits and the session
    /// of the call in progress).
    store: Store<InstanceState>,
    /// Typed exports.
    bindings: Bindings,
    /// The store's time budget account (the same `Arc` as in its data,
    /// held here so a call borrows it beside the store without a clone).
    meter: Arc<budget::CallMeter>,
}

/// What a call that waited for an instance got.
enum Waited {
    /// A returned instance.
    Instance(Pooled),
    /// A reserved place for a new one.
    Place,
}

/// An instance as the pool holds it: boxed, so checking it out and in
/// moves a pointer, not the store and a dozen typed exports.
type Pooled = Box<Instance>;

/// The `borrow<session>` handed to hooks (see [`SessionSlot`]).
fn session_handle() -> Resource<SessionSlot> {
    Resource::new_borrow(0)
}

/// One export call, with its arguments.
enum Call<'m> {
    /// `name()`.
    Name,
    /// `hooks()`.
    Hooks,
    /// `on-register(config)`.
    OnRegister(&'m str),
    /// `on-unregister()`.
    OnUnregister,
    /// `session-opened(session)`.
    Opened,
    /// `session-closed(session)`.
    Closed,
    /// A message hook.
    Hook(Hook, &'m Message),
}

impl Call<'_> {
    /// The export's name, for errors and logs.
    fn name(&self) -> &'static str {
        match self {
            Call::Name => "name",
            Call::Hooks => "hooks",
            Call::OnRegister(_) => "on-register",
            Call::OnUnregister => "on-unregister",
            Call::Opened => "session-opened",
            Call::Closed => "session-closed",
            Call::Hook(hook, _) => hook.name(),
        }
    }
}

/// What an export returned.
enum Reply {
    /// From `name()`.
    Name(String),
    /// From `hooks()`.
    Hooks(WitHookSet),
    /// From `on-register`.
    Registered(Result<(), String>),
    /// From a notification or `on-unregister`.
    Done,
    /// From a message hook.
    Action(Action),
}

/// Calls one export (async: the store yields every tick).
async fn invoke(
    bindings: &Bindings,
    store: &mut Store<InstanceState>,
    call: &Call<'_>,
) -> wasmtime::Result<Reply> {
    match bindings {
        Bindings::Latest(b) => invoke_version!(b, store, call, |a| a, |h| h),
        Bindings::V0_1(b) => invoke_version!(b, store, call, action_from_v0_1, hooks_from_v0_1),
    }
}

/// The body of [`invoke`] for one WIT version's bindings `$b`, with the
/// conversions of its `action` and `hook-set` into the current types.
macro_rules! invoke_version {
    ($b:expr, $store:expr, $call:expr, $action:expr, $hooks:expr) => {{
        let (bindings, store, call) = ($b, $store, $call);
        let s = session_handle;
        let action = $action;
        let hooks = $hooks;
        Ok(match call {
            Call::Name => Reply::Name(bindings.call_name(store).await?),
            Call::Hooks => Reply::Hooks(hooks(bindings.call_hooks(store).await?)),
            Call::OnRegister(config) => {
                Reply::Registered(bindings.call_on_register(store, config).await?)
            }
            Call::OnUnregister => {
                bindings.call_on_unregister(store).await?;
                Reply::Done
            }
            Call::Opened => {
                bindings.call_session_opened(store, s()).await?;
                Reply::Done
            }
            Call::Closed => {
                bindings.call_session_closed(store, s()).await?;
                Reply::Done
            }
            Call::Hook(hook, message) => Reply::Action(action(match (hook, message) {
                (Hook::BeforeSendUtf8, Message::Utf8(t)) => {
                    bindings.call_before_send_utf8(store, s(), t).await?
                }
                (Hook::BeforeSendBinary, Message::Binary(b)) => {
                    bindings.call_before_send_binary(store, s(), b).await?
                }
                (Hook::BeforeSendError, Message::Error(t)) => {
                    bindings.call_before_send_error(store, s(), t).await?
                }
                (Hook::OnReceiveUtf8, Message::Utf8(t)) => {
                    bindings.call_on_receive_utf8(store, s(), t).await?
                }
                (Hook::OnReceiveBinary, Message::Binary(b)) => {
                    bindings.call_on_receive_binary(store, s(), b).await?
                }
                (Hook::OnReceiveError, Message::Error(t)) => {
                    bindings.call_on_receive_error(store, s(), t).await?
                }
                _ => {
                    return Err(wasmtime::format_err!(
                        "{} message given to the {} hook",
                        message.kind(),
                        hook.name()
                    ));
                }
            })),
        })
    }};
}
use invoke_version;

/// Failure bookkeeping of one session, for its back-off.
#[derive(Default)]
struct Health {
    /// Failures since the session's last success.
    consecutive: u32,
    /// The session's calls fail fast until then.
    backoff_until: Option<Instant>,
}

/// The sessions that are failing now.
#[derive(Default)]
struct Failing {
    /// How many entries `sessions` has (read without the lock: zero is the
    /// healthy fast path).
    count: AtomicUsize,
    /// Back-off state by session id.
    sessions: Mutex<HashMap<u64, Health>>,
}

/// Counters of a version on probation (just swapped in).
#[derive(Default)]
struct ProbationCounts {
    /// Successful hook calls.
    successes: u64,
    /// Failed hook calls.
    failures: u64,
    /// Sessions that saw a failure.
    sessions: HashSet<u64>,
    /// The last failure.
    last_error: Option<String>,
}

/// A version's standing on probation, for the folder's rollback decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probation {
    /// Not on probation.
    Off,
    /// On probation, nothing decided yet.
    Pending,
    /// Failed on at least [`ROLLBACK_SESSIONS`] sessions with failures
    /// outnumbering successes: roll back. Carries the counts and the last
    /// error.
    Failed(String),
}

/// Static facts about a loaded plugin version, fixed at load.
#[derive(Debug, Clone)]
pub struct PluginMeta {
    /// The pipeline name (the file stem).
    pub name: String,
    /// The name the plugin gives itself (`name()` export).
    pub guest_name: String,
    /// SHA-256 of the component bytes.
    pub hash: String,
    /// The `camp:extension` version it was built against (`0.2.1`,
    /// `0.2.0`, `0.1.0`): the version of the interfaces it imports.
    pub wit_version: String,
    /// The message hooks it declared.
    pub hooks: HookSet,
    /// Whether it declared `session-opened` (always, for 0.1.0 plugins).
    pub session_opened: bool,
    /// Whether it declared `session-closed` (always, for 0.1.0 plugins).
    pub session_closed: bool,
    /// Its configuration.
    pub config: PluginConfig,
}

/// Hex digits of the content hash that name a plugin version in metrics,
/// logs and the admin view (48 bits: collisions among one plugin's
/// versions are out of reach).
pub const VERSION_DIGITS: usize = 12;

impl PluginMeta {
    /// The version's short name: the first `VERSION_DIGITS` (12) hex digits
    /// of its content hash.
    pub fn version(&self) -> &str {
        &self.hash[..VERSION_DIGITS.min(self.hash.len())]
    }
}

/// A loaded WebAssembly plugin version.
pub struct WasmPlugin {
    /// Facts fixed at load.
    meta: PluginMeta,
    /// Pre-linked component: instantiating is cheap.
    pre: PluginPre,
    /// The engine (for stores).
    engine: Engine,
    /// The plugin name as shared string for store data.
    name: Arc<str>,
    /// Idle instances: a lock-free queue (as many slots as
    /// `max_instances`, so a returned instance always fits).
    idle: crossbeam_queue::ArrayQueue<Pooled>,
    /// Instances in existence (at most `max_instances`: a new one is
    /// made only by raising this below the cap).
    live: AtomicUsize,
    /// Calls waiting for an instance (all `max_instances` busy).
    waiting: AtomicUsize,
    /// Wakes a waiting call when an instance is returned or a place for a
    /// new one frees up.
    returned: tokio::sync::Notify,
    /// Sessions that are failing, for per-session back-off.
    failing: Failing,
    /// Set while on probation.
    on_probation: AtomicBool,
    /// Probation counters.
    probation: Mutex<ProbationCounts>,
    /// Set once the plugin was unregistered: returned instances retire.
    retired: AtomicBool,
    /// Instances discarded after a failure (for the admin view and tests).
    discarded: AtomicU64,
    /// Bytes of guest output dropped over `output_bytes_per_call`.
    output_dropped: Arc<AtomicU64>,
    /// Keeps the host (and its epoch ticker) alive while this plugin is.
    _host: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("meta", &self.meta)
            .finish()
    }
}

/// Locks a mutex, ignoring poisoning (the guarded data stays consistent:
/// every critical section here is a few field updates).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a future to completion from synchronous code, wherever that code
/// runs: on this thread when it is outside any async runtime, otherwise on
/// a thread of its own (blocking inside a runtime would panic), with
/// wasmtime-wasi's runtime for timers and I/O. Used for loading, which is a
/// blocking operation by contract.
fn block_on_guest<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return wasmtime_wasi::runtime::in_tokio(future);
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("camp-plugin-load".into())
            .spawn_scoped(scope, || wasmtime_wasi::runtime::in_tokio(future))
            .expect("spawn a plugin load thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The most of a failed call's stderr quoted in its error, in bytes.
const MAX_TRAP_STDERR: usize = 512;

/// The message of a trap: what the guest said before it trapped (a Rust
/// panic's message, a Python exception) first, then the trap itself
/// without wasmtime's wasm backtrace (logged at debug level instead: it
/// names functions by index and offset, useless to most readers).
fn explain_trap(err: &wasmtime::Error, stderr: Option<String>) -> String {
    tracing::debug!("guest trap with its wasm backtrace: {err:#}");
    let trap = match err.downcast_ref::<Trap>() {
        // Its display reads `wasm trap: …`.
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    match (stderr, err.downcast_ref::<Trap>()) {
        (Some(said), Some(Trap::UnreachableCodeReached)) if said.contains("panicked at") => {
            format!("the guest panicked: {said} ({trap})")
        }
        (Some(said), _) => format!("{trap}; the guest wrote to stderr: {said}"),
        (None, _) => trap,
    }
}

/// The pipeline's hook set from the WIT flags.
fn hook_set(flags: WitHookSet) -> HookSet {
    let pairs = [
        (WitHookSet::BEFORE_SEND_UTF8, Hook::BeforeSendUtf8),
        (WitHookSet::BEFORE_SEND_BINARY, Hook::BeforeSendBinary),
        (WitHookSet::BEFORE_SEND_ERROR, Hook::BeforeSendError),
        (WitHookSet::ON_RECEIVE_UTF8, Hook::OnReceiveUtf8),
        (WitHookSet::ON_RECEIVE_BINARY, Hook::OnReceiveBinary),
        (WitHookSet::ON_RECEIVE_ERROR, Hook::OnReceiveError),
    ];
    pairs
        .into_iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .fold(HookSet::NONE, |set, (_, hook)| set.with(hook))
}

impl Instance {
    /// Classifies a failed call of this instance.
    fn classify(&self, err: wasmtime::Error, config: &PluginConfig, budget: Duration) -> HookError {
        let data = self.store.data();
        if data.limiter.exceeded {
            HookError::MemoryLimit(config.memory_limit_bytes)
        } else if data.limiter.table_exceeded {
            HookError::Limit(format!(
                "a table would grow past max_table_elements = {}",
                config.max_table_elements
            ))
        } else if let Some(what) = &data.limit_hit {
            HookError::Limit(what.clone())
        } else if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            HookError::Timeout(budget)
        } else {
            HookError::Trap(explain_trap(
                &err,
                data.output.stderr_excerpt(MAX_TRAP_STDERR),
            ))
        }
    }

    /// Runs one export under `budget` with `session` as the call's
    /// session, then logs what the guest printed. Failures are classified.
    async fn run(
        &mut self,
        plugin: &str,
        config: &PluginConfig,
        budget: Duration,
        session: Option<&Session>,
        call: Call<'_>,
    ) -> Result<Reply, HookError> {
        let data = self.store.data_mut();
        data.current = session.cloned();
        data.sends.clear();
        data.limit_hit = None;
        data.limiter.exceeded = false;
        data.limiter.table_exceeded = false;
        self.store.set_epoch_deadline(1);
        let result = {
            let guest = std::pin::pin!(invoke(&self.bindings, &mut self.store, &call));
            budget::run(&self.meter, budget, guest).await
        };
        // Classified before the output is flushed: a trap's error quotes
        // what the guest wrote to stderr.
        let result = result.map_err(|e| self.classify(e, config, budget));
        let data = self.store.data_mut();
        data.current = None;
        data.output.flush(plugin, session.map(Session::id));
        // What the call sent takes effect only if it succeeded.
        let sends = std::mem::take(&mut data.sends);
        if let (Ok(_), Some(session)) = (&result, session) {
            for message in sends {
                session.send_from_extension(message);
            }
        }
        result
    }
}

impl WasmPlugin {
    /// Makes a plugin from a pre-linked component: creates the first
    /// instance (running `on-register`), reads `name()` and `hooks()`, and
    /// runs the trial. Any failure refuses the load. Blocking.
    pub(crate) fn new(
        host: Arc<dyn std::any::Any + Send + Sync>,
        engine: Engine,
        pre: PluginPre,
        name: String,
        hash: String,
        config: PluginConfig,
    ) -> Result<WasmPlugin, InstanceError> {
        let max_instances = config.max_instances;
        let mut plugin = WasmPlugin {
            meta: PluginMeta {
                name: name.clone(),
                guest_name: String::new(),
                hash,
                wit_version: pre.version(&engine),
                hooks: HookSet::NONE,
                session_opened: false,
                session_closed: false,
                config,
            },
            pre,
            engine,
            name: name.into(),
            idle: crossbeam_queue::ArrayQueue::new(max_instances.max(1)),
            live: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            returned: tokio::sync::Notify::new(),
            failing: Failing::default(),
            on_probation: AtomicBool::new(false),
            probation: Mutex::default(),
            retired: AtomicBool::new(false),
            discarded: AtomicU64::new(0),
            output_dropped: Arc::default(),
            _host: host,
        };
        let (guest_name, flags, first) = block_on_guest(plugin.trial())?;
        plugin.meta.guest_name = guest_name;
        plugin.meta.hooks = hook_set(flags);
        plugin.meta.session_opened = flags.contains(WitHookSet::SESSION_OPENED);
        plugin.meta.session_closed = flags.contains(WitHookSet::SESSION_CLOSED);
        plugin.live.store(1, Ordering::Relaxed);
        // Cannot fail: the queue has room for `max_instances` (≥ 1).
        let _ = plugin.idle.push(first);
        Ok(plugin)
    }

    /// The trial: instantiate (with `on-register`), `name`, `hooks`, then
    /// each declared hook and notification once against a synthetic
    /// session with an empty payload. Returns the instance for the pool.
    async fn trial(&self) -> Result<(String, WitHookSet, Pooled), InstanceError> {
        let mut first = self.instantiate().await?;
        let failed = |call: &'static str| move |error| InstanceError::Call { call, error };
        let guest_name = match self.lifecycle(&mut first, Call::Name).await {
            // Shown in logs and the admin view: a name, not a payload.
            Ok(Reply::Name(name)) => super::output::cut_at(&name, MAX_GUEST_NAME).into_owned(),
            Ok(_) => unreachable!("name() returns a name"),
            Err(e) => return Err(failed("name")(e)),
        };
        let flags = match self.lifecycle(&mut first, Call::Hooks).await {
            Ok(Reply::Hooks(flags)) => flags,
            Ok(_) => unreachable!("hooks() returns flags"),
            Err(e) => return Err(failed("hooks")(e)),
        };
        let (session, _outbox) = Session::detached(TRIAL_SESSION);
        // What the plugin logs or prints now is about this synthetic
        // session: say so, or an operator sees a session 0 nobody opened.
        tracing::info!(
            plugin = &*self.name,
            session = TRIAL_SESSION,
            "trial: each declared hook once on a synthetic session with an empty message"
        );
        let config = &self.meta.config;
        let trial = |call: &'static str| move |error| InstanceError::Trial { call, error };
        let notifications = [
            (WitHookSet::SESSION_OPENED, Call::Opened),
            (WitHookSet::SESSION_CLOSED, Call::Closed),
        ];
        for (_, call) in notifications
            .into_iter()
            .filter(|(flag, _)| flags.contains(*flag))
        {
            let name = call.name();
            first
                .run(&self.name, config, config.deadline(), Some(&session), call)
                .await
                .map_err(trial(name))?;
        }
        for hook in hook_set(flags).iter() {
            let mut message = match hook {
                Hook::BeforeSendUtf8 | Hook::OnReceiveUtf8 => Message::Utf8(String::new()),
                Hook::BeforeSendBinary | Hook::OnReceiveBinary => {
                    Message::Binary(bytes::Bytes::new())
                }
                Hook::BeforeSendError | Hook::OnReceiveError => Message::Error(String::new()),
            };
            let reply = first
                .run(
                    &self.name,
                    config,
                    config.deadline(),
                    Some(&session),
                    Call::Hook(hook, &message),
                )
                .await;
            let result = match reply {
                Ok(Reply::Action(action)) => apply(action, &mut message).map(drop),
                Ok(_) => unreachable!("hooks return actions"),
                Err(e) => Err(e),
            };
            result.map_err(trial(hook.name()))?;
        }
        Ok((guest_name, flags, first))
    }

    /// Facts about this version.
    pub fn meta(&self) -> &PluginMeta {
        &self.meta
    }

    /// Instances discarded after failures so far.
    pub fn discarded_instances(&self) -> u64 {
        self.discarded.load(Ordering::Relaxed)
    }

    /// Instances currently alive.
    pub fn live_instances(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Calls waiting now for an instance (all `max_instances` busy).
    pub fn waiting_calls(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Sessions in back-off or with recent failures now.
    pub fn failing_sessions(&self) -> usize {
        self.failing.count.load(Ordering::Relaxed)
    }

    /// Bytes of guest stdout/stderr dropped over `output_bytes_per_call`.
    pub fn output_dropped_bytes(&self) -> u64 {
        self.output_dropped.load(Ordering::Relaxed)
    }

    /// Puts this version on probation: from now on its hook results are
    /// counted for [`probation`](WasmPlugin::probation).
    pub fn start_probation(&self) {
        *lock(&self.probation) = ProbationCounts::default();
        self.on_probation.store(true, Ordering::Release);
    }

    /// Ends the probation (the version stays or was rolled back).
    pub fn end_probation(&self) {
        self.on_probation.store(false, Ordering::Release);
    }

    /// The standing on probation: [`Probation::Failed`] once at least
    /// [`ROLLBACK_SESSIONS`] sessions saw a failure and failures outnumber
    /// successes.
    pub fn probation(&self) -> Probation {
        if !self.on_probation.load(Ordering::Acquire) {
            return Probation::Off;
        }
        let counts = lock(&self.probation);
        if counts.sessions.len() >= ROLLBACK_SESSIONS && counts.failures > counts.successes {
            Probation::Failed(format!(
                "{} failures and {} successes on {} sessions since it went live; last: {}",
                counts.failures,
                counts.successes,
                counts.sessions.len(),
                counts.last_error.as_deref().unwrap_or("-")
            ))
        } else {
            Probation::Pending
        }
    }

    /// Builds the WASI context the configuration grants: stdout and stderr
    /// captured into log lines, nothing else unless configured.
    fn wasi(&self, output: &GuestOutput) -> Result<wasmtime_wasi::WasiCtx, InstanceError> {
        let caps = &self.meta.config.capabilities;
        let mut builder = WasiCtxBuilder::new();
        for name in &caps.env {
            if let Ok(value) = std::env::var(name) {
                builder.env(name, value);
            }
        }
        if caps.inherit_stdio {
            builder.inherit_stdio();
        } else {
            builder.stdout(output.stream(0)).stderr(output.stream(1));
        }
        for dir in &caps.preopen {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| InstanceError::Capability(format!("{}: {e:#}", dir.host.display())))?;
        }
        Ok(builder.build())
    }

    /// Creates a fresh instance and runs `on-register` on it.
    async fn instantiate(&self) -> Result<Pooled, InstanceError> {
        let config = &self.meta.config;
        let output = GuestOutput::new(config.output_bytes_per_call, self.output_dropped.clone());
        let state = InstanceState {
            plugin: self.name.clone(),
            table: ResourceTable::new(),
            current: None,
            wasi: self.wasi(&output)?,
            limiter: Limiter::new(config.memory_limit_bytes, config.max_table_elements),
            meter: Arc::default(),
            output,
            limits: HostLimits {
                store_keys: config.session_store_keys,
                store_bytes: config.session_store_bytes,
                sends_per_call: config.sends_per_call,
            },
            sends: Vec::new(),
            limit_hit: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        budget::install(&mut store);
        store.set_epoch_deadline(1);
        // Instantiation runs the component's start functions: same budget
        // as lifecycle calls.
        let meter = store.data().meter.clone();
        let bindings = {
            let instantiating = std::pin::pin!(self.pre.instantiate(&mut store));
            budget::run(&meter, LIFECYCLE_DEADLINE, instantiating).await
        }
        .map_err(|e| InstanceError::Instantiate(format!("{e:#}")))?;
        let mut instance = Box::new(Instance {
            store,
            bindings,
            meter,
        });
        let config_text = self.meta.config.config.clone();
        match self
            .lifecycle(&mut instance, Call::OnRegister(&config_text))
            .await
        {
            Ok(Reply::Registered(Ok(()))) => Ok(instance),
            Ok(Reply::Registered(Err(refusal))) => Err(InstanceError::Refused(refusal)),
            Ok(_) => unreachable!("on-register returns a result"),
            Err(error) => Err(InstanceError::Call {
                call: "on-register",
                error,
            }),
        }
    }

    /// Runs a lifecycle export with the lifecycle time budget.
    async fn lifecycle(&self, instance: &mut Instance, call: Call<'_>) -> Result<Reply, HookError> {
        instance
            .run(
                &self.name,
                &self.meta.config,
                LIFECYCLE_DEADLINE,
                None,
                call,
            )
            .await
    }

    /// Fails fast while `session` backs off.
    fn check_backoff(&self, session: &Session) -> Result<(), HookError> {
        if self.failing.count.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let sessions = lock(&self.failing.sessions);
        match sessions.get(&session.id()) {
            Some(Health {
                consecutive,
                backoff_until: Some(until),
            }) if Instant::now() < *until => Err(HookError::Unavailable(format!(
                "backing off for session {} after {consecutive} consecutive failures",
                session.id()
            ))),
            _ => Ok(()),
        }
    }

    /// Records a failed call of `session`; starts or extends its back-off.
    fn record_failure(&self, session: &Session, hook: &str, err: &HookError) {
        if self.on_probation.load(Ordering::Acquire) {
            let mut counts = lock(&self.probation);
            counts.failures += 1;
            counts.sessions.insert(session.id());
            counts.last_error = Some(format!("{hook}: {err}"));
        }
        let mut sessions = lock(&self.failing.sessions);
        if sessions.len() >= MAX_FAILING_SESSIONS && !sessions.contains_key(&session.id()) {
            return;
        }
        let health = sessions.entry(session.id()).or_default();
        health.consecutive += 1;
        if health.consecutive >= BACKOFF_AFTER {
            let exp = (health.consecutive - BACKOFF_AFTER).min(16);
            let pause = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
            health.backoff_until = Some(Instant::now() + pause);
            tracing::warn!(
                plugin = &*self.name,
                session = session.id(),
                hook,
                failures = health.consecutive,
                "session backs off this plugin for {pause:?} after: {err}"
            );
        }
        self.failing.count.store(sessions.len(), Ordering::Release);
    }

    /// Records a successful call: the session's back-off ends.
    fn record_success(&self, session: &Session) {
        if self.on_probation.load(Ordering::Acquire) {
            lock(&self.probation).successes += 1;
        }
        self.forget(session);
    }

    /// Forgets `session`'s failures.
    fn forget(&self, session: &Session) {
        if self.failing.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut sessions = lock(&self.failing.sessions);
        sessions.remove(&session.id());
        self.failing.count.store(sessions.len(), Ordering::Release);
    }

    /// Takes an idle instance or makes a new one, waiting (without a
    /// thread) while `max_instances` are busy.
    ///
    /// The healthy path is lock-free: one atomic load and a pop from the
    /// idle queue (checking in is a push and a [`Notify::notify_one`]
    /// that finds no waiter). Calls that find every instance busy wait in
    /// [`Notify`]'s first-come queue, and while any is waiting a newcomer
    /// queues behind it rather than taking the next returned instance.
    /// Nothing is awaited on the healthy path: an awaited permit spent the
    /// task's cooperative budget and made sessions yield every few calls
    /// (a third of the pipeline's echo throughput went to one-frame
    /// writes).
    ///
    /// [`Notify`]: tokio::sync::Notify
    /// [`Notify::notify_one`]: tokio::sync::Notify::notify_one
    async fn checkout(&self) -> Result<Pooled, HookError> {
        if self.waiting.load(Ordering::SeqCst) == 0
            && let Some(instance) = self.idle.pop()
        {
            return Ok(instance);
        }
        if !self.reserve_place() {
            match self.wait_for_instance().await {
                Waited::Instance(instance) => return Ok(instance),
                Waited::Place => {}
            }
        }
        // A place is reserved: make the instance.
        match self.instantiate().await {
            Ok(instance) => Ok(instance),
            Err(e) => {
                self.release_place();
                Err(HookError::Unavailable(format!(
                    "cannot create an instance: {e}"
                )))
            }
        }
    }

    /// Waits until an instance is returned or a place for a new one frees
    /// up, counted in `waiting` meanwhile (also if the call is dropped).
    async fn wait_for_instance(&self) -> Waited {
        /// Uncounts the waiting call however it ends.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            // Registered before looking, so a return in between wakes it.
            let mut returned = std::pin::pin!(self.returned.notified());
            returned.as_mut().enable();
            if let Some(instance) = self.idle.pop() {
                return Waited::Instance(instance);
            }
            if self.reserve_place() {
                return Waited::Place;
            }
            returned.await;
        }
    }

    /// Reserves a place for a new instance if fewer than `max_instances`
    /// exist.
    fn reserve_place(&self) -> bool {
        let max = self.meta.config.max_instances;
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back the place of an instance that no longer exists, and
    /// wakes a waiting call to use it.
    fn release_place(&self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.returned.notify_one();
    }

    /// Returns a healthy instance to the pool (or retires it).
    async fn checkin(&self, mut instance: Pooled) {
        if self.retired.load(Ordering::Acquire) {
            self.retire(&mut instance).await;
            self.release_place();
        } else if self.idle.push(instance).is_err() {
            // Not reached: at most `max_instances` exist, and the queue
            // holds as many.
            self.release_place();
        } else {
            self.returned.notify_one();
        }
    }

    /// Drops a broken instance; a new one is made on demand.
    fn discard(&self, instance: Pooled, session: Option<&Session>, what: &str, err: &HookError) {
        drop(instance);
        self.release_place();
        self.discarded.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            plugin = &*self.name,
            session = session.map(Session::id),
            hook = what,
            "instance discarded after: {err}"
        );
    }

    /// Runs `on-unregister` on an instance that is being dropped.
    async fn retire(&self, instance: &mut Instance) {
        if let Err(e) = self.lifecycle(instance, Call::OnUnregister).await {
            tracing::warn!(plugin = &*self.name, "on-unregister failed: {e}");
        }
    }

    /// One hook call: back-off check, checkout, call, checkin or discard,
    /// accounting.
    async fn call_hook(
        &self,
        hook: Hook,
        session: &Session,
        message: &mut Message,
    ) -> Result<Verdict, HookError> {
        self.check_backoff(session)?;
        let mut instance = self.checkout().await?;
        let config = &self.meta.config;
        let reply = instance
            .run(
                &self.name,
                config,
                config.deadline(),
                Some(session),
                Call::Hook(hook, &*message),
            )
            .await;
        let result = match reply {
            Ok(Reply::Action(action)) => {
                let applied = apply(action, message);
                // The instance is fine even if its answer was not.
                self.checkin(instance).await;
                applied
            }
            Ok(_) => unreachable!("hooks return actions"),
            Err(err) => {
                self.discard(instance, Some(session), hook.name(), &err);
                Err(err)
            }
        };
        match &result {
            Ok(_) => self.record_success(session),
            Err(err) => self.record_failure(session, hook.name(), err),
        }
        result
    }

    /// Runs a session notification; failures are logged and count towards
    /// the session's back-off (there is no message to apply a policy to).
    async fn notify(&self, session: &Session, call: Call<'_>) {
        if self.check_backoff(session).is_err() {
            return;
        }
        let what = call.name();
        let mut instance = match self.checkout().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(
                    plugin = &*self.name,
                    session = session.id(),
                    hook = what,
                    "{e}"
                );
                return;
            }
        };
        let config = &self.meta.config;
        match instance
            .run(&self.name, config, config.deadline(), Some(session), call)
            .await
        {
            Ok(_) => self.checkin(instance).await,
            Err(err) => {
                self.discard(instance, Some(session), what, &err);
                self.record_failure(session, what, &err);
            }
        }
    }
}

/// Applies an action to the message; a replacement of the wrong kind or
/// over the payload limit is refused (the message stays unchanged).
fn apply(action: Action, message: &mut Message) -> Result<Verdict, HookError> {
    match action {
        Action::Pass => Ok(Verdict::Pass),
        Action::Drop => Ok(Verdict::Drop),
        Action::Replace(payload) => {
            let len = match &payload {
                Payload::Utf8(s) | Payload::Error(s) => s.len(),
                Payload::Binary(b) => b.len(),
            };
            if len > MAX_PAYLOAD {
                return Err(HookError::Invalid(format!(
                    "replacement of {len} bytes exceeds the {MAX_PAYLOAD}-byte payload limit"
                )));
            }
            match (payload, message) {
                (Payload::Utf8(new), Message::Utf8(old))
                | (Payload::Error(new), Message::Error(old)) => {
                    *old = new;
                }
                (Payload::Binary(new), Message::Binary(old)) => *old = new.into(),
                (payload, message) => {
                    let kind = match payload {
                        Payload::Utf8(_) => "utf8",
                        Payload::Binary(_) => "binary",
                        Payload::Error(_) => "error",
                    };
                    return Err(HookError::Invalid(format!(
                        "replacement of kind {kind} for a {} message",
                        message.kind()
                    )));
                }
            }
            Ok(Verdict::Pass)
        }
    }
}

impl Extension for WasmPlugin {
    fn name(&self) -> &str {
        &self.meta.name
    }

    fn version(&self) -> &str {
        self.meta.version()
    }

    fn hooks(&self) -> HookSet {
        self.meta.hooks
    }

    fn failure_policy(&self) -> FailurePolicy {
        self.meta.config.failure_policy
    }

    fn session_opened<'a>(&'a self, session: &'a Session) -> NotifyFuture<'a> {
        Box::pin(async move {
            if self.meta.session_opened {
                self.notify(session, Call::Opened).await;
            }
        })
    }

    fn session_closed<'a>(&'a self, session: &'a Session) -> NotifyFuture<'a> {
        Box::pin(async move {
            if self.meta.session_closed {
                self.notify(session, Call::Closed).await;
            }
            self.forget(session);
        })
    }

    fn call<'a>(
        &'a self,
        hook: Hook,
        session: &'a Session,
        message: &'a mut Message,
    ) -> HookFuture<'a> {
        Box::pin(self.call_hook(hook, session, message))
    }

    fn unregistered(&self) {
        self.retired.store(true, Ordering::Release);
        let idle: Vec<Pooled> = std::iter::from_fn(|| self.idle.pop()).collect();
        self.live.fetch_sub(idle.len(), Ordering::SeqCst);
        // Their places are free: a call waiting for one takes it.
        self.returned.notify_waiters();
        tracing::info!(plugin = &*self.name, hash = %self.meta.hash, "plugin version retired");
        if idle.is_empty() {
            return;
        }
        // `on-unregister` runs guest code: on a thread of its own, so the
        // caller (possibly an async worker) is never blocked by it. Calls
        // still in flight finish on their instances, which retire when
        // they are returned.
        let name = self.name.clone();
        let config = self.meta.config.clone();
        let host = self._host.clone();
        let spawned = std::thread::Builder::new()
            .name("camp-plugin-retire".into())
            .spawn(move || {
                let _host = host;
                wasmtime_wasi::runtime::in_tokio(async {
                    for mut instance in idle {
                        let call = Call::OnUnregister;
                        if let Err(e) = instance
                            .run(&name, &config, LIFECYCLE_DEADLINE, None, call)
                            .await
                        {
                            tracing::warn!(plugin = &*name, "on-unregister failed: {e}");
                        }
                    }
                })
            });
        if let Err(e) = spawned {
            tracing::warn!(plugin = &*self.name, "cannot retire instances: {e}");
        }
    }
}
