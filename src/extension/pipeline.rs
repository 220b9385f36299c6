//! The ordered list of extensions that every message passes through.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::{Extension, FailurePolicy, Hook, HookError, HookSet, Message, Verdict, clock};
use crate::metrics::{HOOK_BOUNDS, Histogram};
use crate::protocol::close;
use crate::session::{Direction, Filter, FilterFuture, Session};

/// Why the pipeline refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// `register` was given a name that is already registered.
    #[error("an extension named {0:?} is already registered")]
    DuplicateName(String),
}

/// Counters of one version of an extension (name and
/// [`version`](Extension::version)): a new version starts with fresh ones,
/// so its latency is never mixed with its predecessor's; re-registering
/// the same version (a configuration change) keeps them.
#[derive(Debug)]
pub struct ExtensionStats {
    /// Hook calls made.
    pub calls: AtomicU64,
    /// Messages the extension dropped (by verdict, not by failure).
    pub drops: AtomicU64,
    /// Hook calls that failed, by kind: trap, timeout, memory, limit,
    /// unavailable, invalid.
    pub failures: [AtomicU64; 6],
    /// Hook call latency.
    pub latency: Histogram,
    /// The last failure, with the hook it happened in.
    pub last_error: Mutex<Option<String>>,
}

impl Default for ExtensionStats {
    fn default() -> Self {
        ExtensionStats {
            calls: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            failures: Default::default(),
            latency: Histogram::new(HOOK_BOUNDS),
            last_error: Mutex::new(None),
        }
    }
}

impl ExtensionStats {
    /// Failure kinds in the order of [`ExtensionStats::failures`].
    pub const FAILURE_KINDS: [&'static str; 6] = [
        "trap",
        "timeout",
        "memory",
        "limit",
        "unavailable",
        "invalid",
    ];

    fn record_failure(&self, hook: Hook, err: &HookError) {
        let i = Self::FAILURE_KINDS
            .iter()
            .position(|k| *k == err.kind())
            .unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("{}: {err}", hook.name()));
    }

    /// Total failures of every kind.
    pub fn failure_count(&self) -> u64 {
        self.failures
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .sum()
    }
}

/// A snapshot of one registered extension, for listings and the admin view.
#[derive(Debug, Clone)]
pub struct ExtensionInfo {
    /// The extension's name.
    pub name: String,
    /// Its [`version`](Extension::version) (empty if it has none).
    pub version: String,
    /// Its sort key: extensions run by ascending order, then by name.
    pub order: i64,
    /// The hooks it implements.
    pub hooks: HookSet,
    /// What happens when it fails.
    pub policy: FailurePolicy,
    /// When this version was registered.
    pub registered_at: SystemTime,
    /// Its counters.
    pub stats: Arc<ExtensionStats>,
}

#[derive(Clone)]
struct Entry {
    extension: Arc<dyn Extension>,
    /// The extension's version when it was registered.
    version: Arc<str>,
    hooks: HookSet,
    order: i64,
    registered_at: SystemTime,
    stats: Arc<ExtensionStats>,
}

/// The ordered pipeline of extensions, shared by every session of a server.
///
/// Cheap to clone (all clones are the same pipeline). Changes are atomic:
/// a message takes a snapshot of the list when it enters the pipeline, so a
/// message already inside a hook finishes with the version it started with,
/// and the next message sees the new list. Nothing is lost or run twice.
#[derive(Clone, Default)]
pub struct Pipeline {
    entries: Arc<RwLock<Arc<[Entry]>>>,
    /// The union of the registered extensions' hooks ([`HookSet`] bits),
    /// so that a message no extension hooks costs one atomic load.
    hooks: Arc<AtomicU8>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.snapshot()
                    .iter()
                    .map(|e| e.extension.name().to_string()),
            )
            .finish()
    }
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    fn snapshot(&self) -> Arc<[Entry]> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update<R>(&self, f: impl FnOnce(&mut Vec<Entry>) -> R) -> R {
        let mut guard = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let mut list = guard.to_vec();
        let result = f(&mut list);
        list.sort_by(|a, b| (a.order, a.extension.name()).cmp(&(b.order, b.extension.name())));
        let hooks = list.iter().fold(0, |bits, e| bits | e.hooks.bits());
        *guard = list.into();
        self.hooks.store(hooks, Ordering::Release);
        result
    }

    /// Appends an extension (order 0, then by name). Refuses a duplicate name.
    pub fn register(&self, extension: Arc<dyn Extension>) -> Result<(), PipelineError> {
        let name = extension.name().to_string();
        self.update(|list| {
            if list.iter().any(|e| e.extension.name() == name) {
                return Err(PipelineError::DuplicateName(name));
            }
            list.push(Entry {
                hooks: extension.hooks(),
                version: extension.version().into(),
                extension,
                order: 0,
                registered_at: SystemTime::now(),
                stats: Arc::default(),
            });
            Ok(())
        })
    }

    /// Inserts `extension` with sort key `order`, or atomically replaces the
    /// registered extension of the same name (keeping its counters if it is
    /// the same [`version`](Extension::version)). The
    /// replaced version is told it was [`unregistered`](Extension::unregistered)
    /// after the swap and returned.
    pub fn upsert(&self, extension: Arc<dyn Extension>, order: i64) -> Option<Arc<dyn Extension>> {
        let old = self.swap(extension, order);
        if let Some(old) = &old {
            old.unregistered();
        }
        old
    }

    /// Like [`upsert`](Pipeline::upsert), but the replaced version is not
    /// told: the caller keeps it (e.g. to roll back to it) and calls
    /// [`unregistered`](Extension::unregistered) when done with it.
    pub fn swap(&self, extension: Arc<dyn Extension>, order: i64) -> Option<Arc<dyn Extension>> {
        self.update(|list| {
            let entry = Entry {
                hooks: extension.hooks(),
                version: extension.version().into(),
                extension: extension.clone(),
                order,
                registered_at: SystemTime::now(),
                stats: Arc::default(),
            };
            match list
                .iter_mut()
                .find(|e| e.extension.name() == extension.name())
            {
                Some(slot) => {
                    // Same version (a configuration change): same counters.
                    let stats = if slot.version == entry.version {
                        slot.stats.clone()
                    } else {
                        entry.stats.clone()
                    };
                    let old = std::mem::replace(slot, Entry { stats, ..entry });
                    Some(old.extension)
                }
                None => {
                    list.push(entry);
                    None
                }
            }
        })
    }

    /// Removes the extension called `name`, tells it, and returns it.
    pub fn unregister(&self, name: &str) -> Option<Arc<dyn Extension>> {
        let old = self.update(|list| {
            let i = list.iter().position(|e| e.extension.name() == name)?;
            Some(list.remove(i).extension)
        });
        if let Some(old) = &old {
            old.unregistered();
        }
        old
    }

    /// The extension called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Extension>> {
        self.snapshot()
            .iter()
            .find(|e| e.extension.name() == name)
            .map(|e| e.extension.clone())
    }

    /// The registered extensions in pipeline order.
    pub fn list(&self) -> Vec<ExtensionInfo> {
        self.snapshot()
            .iter()
            .map(|e| ExtensionInfo {
                name: e.extension.name().to_string(),
                version: e.version.to_string(),
                order: e.order,
                hooks: e.hooks,
                policy: e.extension.failure_policy(),
                registered_at: e.registered_at,
                stats: e.stats.clone(),
            })
            .collect()
    }

    /// Whether no extension is registered.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Runs `hook` of every extension that implements it, in order, on
    /// `message`. Every verdict counts: the first [`Verdict::Drop`] stops the
    /// message. A failing hook is logged with the extension's name, counted,
    /// and handled by its [`FailurePolicy`].
    ///
    /// An extension whose policy is [`FailurePolicy::CloseSession`] drops
    /// the message and asks `session` to close with 4002 (a session's own
    /// task gets [`Verdict::Close`] instead, through the [`Filter`] seam).
    pub async fn run(&self, hook: Hook, session: &Session, message: &mut Message) -> Verdict {
        match self.decide(hook, session, message).await {
            Verdict::Close { code, reason } => {
                session.close_with(code, reason);
                Verdict::Drop
            }
            verdict => verdict,
        }
    }

    /// [`Pipeline::run`], with a close asked for as [`Verdict::Close`].
    async fn decide(&self, hook: Hook, session: &Session, message: &mut Message) -> Verdict {
        let entries = self.snapshot();
        for entry in entries.iter().filter(|e| e.hooks.contains(hook)) {
            let started = std::time::Instant::now();
            let mut call = entry.extension.call(hook, session, message);
            // The first poll borrows `started` for the plugin's time
            // budget, which would otherwise read the clock again.
            let mut lend = Some(started);
            let result = std::future::poll_fn(|cx| match lend.take() {
                Some(now) => clock::lend(now, || call.as_mut().poll(cx)),
                None => call.as_mut().poll(cx),
            })
            .await;
            entry.stats.calls.fetch_add(1, Ordering::Relaxed);
            entry.stats.latency.observe(started.elapsed());
            match result {
                Ok(Verdict::Pass) => {}
                Ok(Verdict::Drop) => {
                    entry.stats.drops.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Drop;
                }
                Ok(close @ Verdict::Close { .. }) => {
                    entry.stats.drops.fetch_add(1, Ordering::Relaxed);
                    return close;
                }
                Err(err) => {
                    let policy = entry.extension.failure_policy();
                    entry.stats.record_failure(hook, &err);
                    tracing::warn!(
                        extension = entry.extension.name(),
                        hook = hook.name(),
                        session = session.id(),
                        policy = ?policy,
                        "extension failed: {err}"
                    );
                    match policy {
                        FailurePolicy::FailOpen => {}
                        FailurePolicy::FailClosed => return Verdict::Drop,
                        FailurePolicy::CloseSession => {
                            return Verdict::Close {
                                code: close::SERVER_ERROR,
                                reason: format!("extension {} failed", entry.extension.name()),
                            };
                        }
                    }
                }
            }
        }
        Verdict::Pass
    }

    /// Tells every extension that `session` opened.
    pub async fn session_opened(&self, session: &Session) {
        for entry in self.snapshot().iter() {
            entry.extension.session_opened(session).await;
        }
    }

    /// Tells every extension that `session` closed.
    pub async fn session_closed(&self, session: &Session) {
        for entry in self.snapshot().iter() {
            entry.extension.session_closed(session).await;
        }
    }
}

/// The pipeline is the session's filter: inbound messages go through the
/// `on_receive_*` hooks, outbound ones through `before_send_*`.
impl Filter for Pipeline {
    fn wants(&self, direction: Direction, message: &Message) -> bool {
        let hook = Hook::for_message(message, direction == Direction::Outbound);
        HookSet::from_bits(self.hooks.load(Ordering::Acquire)).contains(hook)
    }

    fn filter<'a>(
        &'a self,
        direction: Direction,
        session: &'a Session,
        message: &'a mut Message,
    ) -> FilterFuture<'a, Verdict> {
        let hook = Hook::for_message(message, direction == Direction::Outbound);
        Box::pin(self.decide(hook, session, message))
    }

    fn opened<'a>(&'a self, session: &'a Session) -> FilterFuture<'a, ()> {
        Box::pin(self.session_opened(session))
    }

    fn closed<'a>(&'a self, session: &'a Session) -> FilterFuture<'a, ()> {
        Box::pin(self.session_closed(session))
    }
}
