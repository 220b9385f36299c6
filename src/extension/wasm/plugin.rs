//! [`WasmPlugin`]: one loaded version of a WebAssembly plugin, seen by the
//! pipeline as an [`Extension`].
//!
//! The component is compiled once; calls run on a pool of instances (one
//! `Store` each), checked out for one call and returned after it, so a call
//! costs no instantiation and sessions cost nothing. Per-session state lives
//! in the host's session store. A trap, a timeout or a memory overflow
//! discards the instance (a fresh one is made on demand); repeated failures
//! put the plugin into a back-off during which calls fail fast with
//! [`HookError::Unavailable`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::bindings::camp::extension::types::{Action, HookSet as WitHookSet, Payload};
use super::bindings::{Plugin as Bindings, PluginPre};
use super::config::PluginConfig;
use super::host::TICK;
use super::state::{InstanceState, Limiter, SessionSlot};
use crate::extension::{Extension, FailurePolicy, Hook, HookError, HookSet, Message, Verdict};
use crate::protocol::MAX_PAYLOAD;
use crate::session::Session;

/// Consecutive failures after which a plugin backs off.
const BACKOFF_AFTER: u32 = 3;
/// The first back-off; it doubles with every failure after that.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Time budget of lifecycle calls (`name`, `hooks`, `on-register`, …),
/// which may do one-time work such as compiling patterns.
const LIFECYCLE_DEADLINE: Duration = Duration::from_secs(1);

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
}

/// One instance of the plugin: its store and its exports.
struct Instance {
    /// The store (its data holds the WASI context, limits and the session
    /// of the call in progress).
    store: Store<InstanceState>,
    /// Typed exports.
    bindings: Bindings,
}

/// The `borrow<session>` handed to hooks (see [`SessionSlot`]).
fn session_handle() -> Resource<SessionSlot> {
    Resource::new_borrow(0)
}

/// Idle instances and how many exist.
struct Pool {
    /// Instances ready for a call.
    idle: Vec<Instance>,
    /// Instances in existence (idle + checked out + being made).
    live: usize,
    /// Callers waiting for an instance (so returning one only signals the
    /// condition variable, a system call, when someone waits).
    waiting: usize,
}

/// Failure bookkeeping for back-off.
#[derive(Default)]
struct Health {
    /// Failures since the last success.
    consecutive: u32,
    /// Calls fail fast until then.
    backoff_until: Option<Instant>,
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
    /// The hooks it declared.
    pub hooks: HookSet,
    /// Its configuration.
    pub config: PluginConfig,
}

/// A loaded WebAssembly plugin version.
pub struct WasmPlugin {
    /// Facts fixed at load.
    meta: PluginMeta,
    /// Pre-linked component: instantiating is cheap.
    pre: PluginPre<InstanceState>,
    /// The engine (for stores).
    engine: Engine,
    /// The plugin name as shared string for store data.
    name: Arc<str>,
    /// Epoch ticks per hook call.
    deadline_ticks: u64,
    /// Idle instances.
    pool: Mutex<Pool>,
    /// Signalled when an instance is returned or discarded.
    returned: Condvar,
    /// Back-off state.
    health: Mutex<Health>,
    /// Whether the last call failed (a lock-free fast path for the common,
    /// healthy case).
    failing: AtomicBool,
    /// Set once the plugin was unregistered: returned instances retire.
    retired: AtomicBool,
    /// Instances discarded after a failure (for the admin view and tests).
    discarded: AtomicU64,
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

/// The epoch ticks for a time budget (at least one).
fn ticks(budget: Duration) -> u64 {
    (budget.as_micros().div_ceil(TICK.as_micros()) as u64).max(1)
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
    fn classify(&self, err: wasmtime::Error, deadline: Duration, memory: usize) -> HookError {
        if self.store.data().limiter.exceeded {
            HookError::MemoryLimit(memory)
        } else if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            HookError::Timeout(deadline)
        } else {
            HookError::Trap(format!("{err:#}"))
        }
    }
}

impl WasmPlugin {
    /// Makes a plugin from a pre-linked component: creates the first
    /// instance, reads `name()` and `hooks()` and runs `on-register`. Any
    /// failure refuses the load.
    pub(crate) fn new(
        host: Arc<dyn std::any::Any + Send + Sync>,
        engine: Engine,
        pre: PluginPre<InstanceState>,
        name: String,
        hash: String,
        config: PluginConfig,
    ) -> Result<WasmPlugin, InstanceError> {
        let deadline_ticks = ticks(config.deadline());
        let mut plugin = WasmPlugin {
            meta: PluginMeta {
                name: name.clone(),
                guest_name: String::new(),
                hash,
                hooks: HookSet::NONE,
                config,
            },
            pre,
            engine,
            name: name.into(),
            deadline_ticks,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                live: 0,
                waiting: 0,
            }),
            returned: Condvar::new(),
            health: Mutex::new(Health::default()),
            failing: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            discarded: AtomicU64::new(0),
            _host: host,
        };
        let mut first = plugin.instantiate()?;
        let guest_name = plugin.lifecycle(&mut first, "name", |b, s| b.call_name(s))?;
        let flags = plugin.lifecycle(&mut first, "hooks", |b, s| b.call_hooks(s))?;
        plugin.meta.guest_name = guest_name;
        plugin.meta.hooks = hook_set(flags);
        let pool = plugin.pool.get_mut().unwrap_or_else(|e| e.into_inner());
        pool.live = 1;
        pool.idle.push(first);
        Ok(plugin)
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
        lock(&self.pool).live
    }

    /// Builds the WASI context the configuration grants (empty by default).
    fn wasi(&self) -> Result<wasmtime_wasi::WasiCtx, InstanceError> {
        let caps = &self.meta.config.capabilities;
        let mut builder = WasiCtxBuilder::new();
        for name in &caps.env {
            if let Ok(value) = std::env::var(name) {
                builder.env(name, value);
            }
        }
        if caps.inherit_stdio {
            builder.inherit_stdio();
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
    fn instantiate(&self) -> Result<Instance, InstanceError> {
        let state = InstanceState {
            plugin: self.name.clone(),
            table: ResourceTable::new(),
            current: None,
            wasi: self.wasi()?,
            limiter: Limiter::new(self.meta.config.memory_limit_bytes),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks(LIFECYCLE_DEADLINE));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| InstanceError::Instantiate(format!("{e:#}")))?;
        let mut instance = Instance { store, bindings };
        let config = self.meta.config.config.clone();
        self.lifecycle(&mut instance, "on-register", |b, s| {
            b.call_on_register(s, &config)
        })?
        .map_err(InstanceError::Refused)?;
        Ok(instance)
    }

    /// Runs a lifecycle export with the lifecycle time budget.
    fn lifecycle<R>(
        &self,
        instance: &mut Instance,
        call: &'static str,
        f: impl FnOnce(&Bindings, &mut Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> Result<R, InstanceError> {
        instance.store.set_epoch_deadline(ticks(LIFECYCLE_DEADLINE));
        f(&instance.bindings, &mut instance.store).map_err(|e| InstanceError::Call {
            call,
            error: instance.classify(e, LIFECYCLE_DEADLINE, self.meta.config.memory_limit_bytes),
        })
    }

    /// Fails fast while backing off.
    fn check_backoff(&self) -> Result<(), HookError> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        let health = lock(&self.health);
        match health.backoff_until {
            Some(until) if Instant::now() < until => Err(HookError::Unavailable(format!(
                "backing off after {} consecutive failures",
                health.consecutive
            ))),
            _ => Ok(()),
        }
    }

    /// Records a failed call; starts or extends the back-off.
    fn record_failure(&self, hook: &str, err: &HookError) {
        let mut health = lock(&self.health);
        self.failing.store(true, Ordering::Release);
        health.consecutive += 1;
        if health.consecutive >= BACKOFF_AFTER {
            let exp = (health.consecutive - BACKOFF_AFTER).min(16);
            let pause = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
            health.backoff_until = Some(Instant::now() + pause);
            tracing::warn!(
                plugin = &*self.name,
                hook,
                failures = health.consecutive,
                "plugin backs off for {pause:?} after: {err}"
            );
        }
    }

    /// Records a successful call: the back-off ends.
    fn record_success(&self) {
        if self.failing.load(Ordering::Acquire) {
            let mut health = lock(&self.health);
            *health = Health::default();
            self.failing.store(false, Ordering::Release);
        }
    }

    /// Takes an idle instance, makes a new one if under the cap, or waits
    /// for one to be returned: up to two deadlines, long enough for a call
    /// in progress to finish or be interrupted.
    fn checkout(&self) -> Result<Instance, HookError> {
        let wait_until = Instant::now() + 2 * self.meta.config.deadline();
        let mut pool = lock(&self.pool);
        loop {
            if let Some(instance) = pool.idle.pop() {
                return Ok(instance);
            }
            if pool.live < self.meta.config.max_instances {
                pool.live += 1;
                drop(pool);
                return self.instantiate().map_err(|e| {
                    self.release_slot(lock(&self.pool));
                    HookError::Unavailable(format!("cannot create an instance: {e}"))
                });
            }
            let now = Instant::now();
            if now >= wait_until {
                return Err(HookError::Unavailable(format!(
                    "all {} instances busy",
                    self.meta.config.max_instances
                )));
            }
            pool.waiting += 1;
            pool = self
                .returned
                .wait_timeout(pool, wait_until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            pool.waiting -= 1;
        }
    }

    /// Forgets one instance (discarded or retired) and wakes a waiter, who
    /// may now make a new one.
    fn release_slot(&self, mut pool: MutexGuard<'_, Pool>) {
        pool.live -= 1;
        if pool.waiting > 0 {
            self.returned.notify_one();
        }
    }

    /// Returns a healthy instance to the pool (or retires it).
    fn checkin(&self, mut instance: Instance) {
        if self.retired.load(Ordering::Acquire) {
            self.retire(&mut instance);
            self.release_slot(lock(&self.pool));
        } else {
            let mut pool = lock(&self.pool);
            pool.idle.push(instance);
            if pool.waiting > 0 {
                self.returned.notify_one();
            }
        }
    }

    /// Drops a broken instance; a new one is made on demand.
    fn discard(&self, hook: &str, err: &HookError) {
        self.discarded.fetch_add(1, Ordering::Relaxed);
        self.release_slot(lock(&self.pool));
        tracing::warn!(
            plugin = &*self.name,
            hook,
            "instance discarded after: {err}"
        );
    }

    /// Runs `on-unregister` on an instance that is being dropped.
    fn retire(&self, instance: &mut Instance) {
        if let Err(e) = self.lifecycle(instance, "on-unregister", |b, s| b.call_on_unregister(s)) {
            tracing::warn!(plugin = &*self.name, "{e}");
        }
    }

    /// Runs one hook on `instance`: sets the call's session, lowers the
    /// message, calls, clears the session and applies the action.
    fn run_hook(
        &self,
        instance: &mut Instance,
        hook: Hook,
        session: &Session,
        message: &mut Message,
    ) -> Result<Verdict, HookError> {
        let config = &self.meta.config;
        let Instance { store, bindings } = instance;
        store.set_epoch_deadline(self.deadline_ticks);
        store.data_mut().current = Some(session.clone());
        let borrow = session_handle();
        let result = match (hook, &*message) {
            (Hook::BeforeSendUtf8, Message::Utf8(t)) => {
                bindings.call_before_send_utf8(&mut *store, borrow, t)
            }
            (Hook::BeforeSendBinary, Message::Binary(b)) => {
                bindings.call_before_send_binary(&mut *store, borrow, b)
            }
            (Hook::BeforeSendError, Message::Error(t)) => {
                bindings.call_before_send_error(&mut *store, borrow, t)
            }
            (Hook::OnReceiveUtf8, Message::Utf8(t)) => {
                bindings.call_on_receive_utf8(&mut *store, borrow, t)
            }
            (Hook::OnReceiveBinary, Message::Binary(b)) => {
                bindings.call_on_receive_binary(&mut *store, borrow, b)
            }
            (Hook::OnReceiveError, Message::Error(t)) => {
                bindings.call_on_receive_error(&mut *store, borrow, t)
            }
            _ => {
                store.data_mut().current = None;
                return Err(HookError::Invalid(format!(
                    "{} message given to the {} hook",
                    message.kind(),
                    hook.name()
                )));
            }
        };
        store.data_mut().current = None;
        let action = result
            .map_err(|e| instance.classify(e, config.deadline(), config.memory_limit_bytes))?;
        apply(action, message)
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
                (Payload::Binary(new), Message::Binary(old)) => *old = new,
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

    fn hooks(&self) -> HookSet {
        self.meta.hooks
    }

    fn failure_policy(&self) -> FailurePolicy {
        self.meta.config.failure_policy
    }

    fn session_opened(&self, session: &Session) {
        self.notify(session, "session-opened", |b, s, r| {
            b.call_session_opened(s, r)
        });
    }

    fn session_closed(&self, session: &Session) {
        self.notify(session, "session-closed", |b, s, r| {
            b.call_session_closed(s, r)
        });
    }

    fn call(
        &self,
        hook: Hook,
        session: &Session,
        message: &mut Message,
    ) -> Result<Verdict, HookError> {
        self.check_backoff()?;
        let mut instance = self.checkout()?;
        match self.run_hook(&mut instance, hook, session, message) {
            Ok(verdict) => {
                self.checkin(instance);
                self.record_success();
                Ok(verdict)
            }
            Err(err @ HookError::Invalid(_)) => {
                // The instance is fine; the plugin's answer was not.
                self.checkin(instance);
                self.record_failure(hook.name(), &err);
                Err(err)
            }
            Err(err) => {
                drop(instance);
                self.discard(hook.name(), &err);
                self.record_failure(hook.name(), &err);
                Err(err)
            }
        }
    }

    fn unregistered(&self) {
        self.retired.store(true, Ordering::Release);
        let idle = std::mem::take(&mut lock(&self.pool).idle);
        let count = idle.len();
        for mut instance in idle {
            self.retire(&mut instance);
        }
        lock(&self.pool).live -= count;
        tracing::info!(plugin = &*self.name, hash = %self.meta.hash, "plugin version retired");
    }
}

impl WasmPlugin {
    /// Runs a session notification; failures are logged, not propagated
    /// (there is no message to apply a policy to).
    fn notify(
        &self,
        session: &Session,
        what: &'static str,
        f: impl FnOnce(
            &Bindings,
            &mut Store<InstanceState>,
            Resource<SessionSlot>,
        ) -> wasmtime::Result<()>,
    ) {
        if self.check_backoff().is_err() {
            return;
        }
        let mut instance = match self.checkout() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(plugin = &*self.name, hook = what, "{e}");
                return;
            }
        };
        instance.store.set_epoch_deadline(self.deadline_ticks);
        instance.store.data_mut().current = Some(session.clone());
        let result = f(&instance.bindings, &mut instance.store, session_handle());
        instance.store.data_mut().current = None;
        match result {
            Ok(()) => self.checkin(instance),
            Err(e) => {
                let config = &self.meta.config;
                let err = instance.classify(e, config.deadline(), config.memory_limit_bytes);
                drop(instance);
                self.discard(what, &err);
                self.record_failure(what, &err);
            }
        }
    }
}
