//! [`PluginDir`]: a folder of plugins kept in sync with the pipeline.
//!
//! The folder is reconciled as a whole ("level-triggered"): every scan
//! lists `*.wasm` files (hidden and temporary names ignored, symlinks
//! followed), loads those whose bytes or `NAME.toml` changed since the
//! last attempt, and unloads plugins whose file is gone. A `notify`
//! watcher on the folder (not on files, which editors, `cp`, `mv` and
//! Kubernetes' `..data` symlink swap all replace in different ways) only
//! triggers scans, after a short debounce; a periodic scan is the safety
//! net for missed events.
//!
//! If the folder cannot be watched (the per-user inotify limit is shared by
//! every process and container of the uid, and a full one fails with "Too
//! many open files"), [`PluginDir::watch`] does not fail: it logs a warning
//! naming the folder and the cause and follows the folder by polling, the
//! periodic scan running every [`DirOptions::poll_interval`] instead
//! (returned as [`WatchMode::Polling`]; `camp_plugin_watch_polling` is 1).
//!
//! Partial writes (an in-place `cp` of a large file) are handled by
//! waiting until a file's size, mtime and inode have been stable for a
//! settle time before reading it, re-checking after reading, trying bytes
//! that do not compile once more after another settle time before
//! reporting them (a slow writer may have paused), and letting a later
//! change retry a failed load. A version that fails to compile,
//! link, instantiate, register or pass its trial (one call of each
//! declared hook) is never swapped in: the old version keeps serving and
//! the error is kept for the admin view.
//!
//! A version that replaced another is on probation for
//! [`DirOptions::probation`]: the replaced version stays compiled and
//! instantiated meanwhile. If the new version fails on at least
//! [`ROLLBACK_SESSIONS`](super::ROLLBACK_SESSIONS) sessions with failures
//! outnumbering successes, the folder swaps the previous version back in
//! (no message is lost: calls in flight finish on the version they
//! started with), logs the reason, counts it in
//! `camp_plugin_rollbacks_total` and shows it in the admin view; the bad
//! file is not loaded again until it changes.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};

use super::cache::content_hash;
use super::config::PluginConfig;
use super::host::{HostError, LoadTimings, PluginHost};
use super::plugin::{Probation, WasmPlugin};
use crate::extension::{Extension, Pipeline};

/// Timing knobs of a watched folder.
#[derive(Debug, Clone)]
pub struct DirOptions {
    /// Quiet time after a file-system event before scanning (editors and
    /// `cp` produce bursts).
    pub debounce: Duration,
    /// How long a file must be unchanged before it is read (partial-write
    /// protection).
    pub settle: Duration,
    /// Interval of the safety-net scan while events are watched.
    pub rescan_interval: Duration,
    /// Interval of the scan when the folder cannot be watched and is
    /// polled instead (config key `plugin_poll_ms`, default 1 s).
    pub poll_interval: Duration,
    /// How long a version that replaced another stays on probation (the
    /// previous version kept ready for a rollback).
    pub probation: Duration,
}

impl Default for DirOptions {
    fn default() -> DirOptions {
        DirOptions {
            debounce: Duration::from_millis(50),
            settle: Duration::from_millis(100),
            rescan_interval: Duration::from_secs(2),
            poll_interval: DEFAULT_POLL_INTERVAL,
            probation: Duration::from_secs(10),
        }
    }
}

/// Default of [`DirOptions::poll_interval`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How a folder is followed once [`PluginDir::watch`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMode {
    /// File-system events trigger scans; a periodic scan every
    /// `rescan_interval` catches missed events.
    Events,
    /// The folder could not be watched: it is scanned every
    /// `poll_interval`.
    Polling {
        /// Why watching failed (the watcher's message).
        cause: String,
        /// The scan interval.
        interval: Duration,
    },
}

/// What a [`PluginDir::watch_with`] watcher factory gets: the folder and
/// the handler to call with every event.
pub type EventHandler = Box<dyn FnMut(notify::Result<notify::Event>) + Send>;

/// Why the folder could not be followed at all (watching it is not needed:
/// a folder that cannot be watched is polled).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The watcher thread could not be started.
    #[error("cannot start the watcher thread: {0}")]
    Thread(std::io::Error),
    /// The plugin host failed.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// The loaded version of a plugin, for the admin view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedVersion {
    /// SHA-256 of the component.
    pub hash: String,
    /// The version's short name in metrics and the extension list: the
    /// first 12 hex digits of `hash`.
    pub version: String,
    /// The name the plugin gives itself.
    pub guest_name: String,
    /// The `camp:extension` version it was built against.
    pub wit_version: String,
    /// The hooks it implements, the session notifications included.
    pub hooks: Vec<&'static str>,
    /// Its effective configuration.
    pub config: PluginConfig,
    /// When it was swapped in (RFC 3339 in the admin view).
    #[serde(serialize_with = "time_rfc3339")]
    pub loaded_at: SystemTime,
    /// How long loading took.
    pub timings: LoadTimings,
}

/// One plugin file's state, for the admin view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    /// Pipeline name (file stem).
    pub name: String,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// The version serving now, if any.
    pub loaded: Option<LoadedVersion>,
    /// The last load error (cleared by a successful load).
    pub last_error: Option<String>,
    /// When it happened (RFC 3339 in the admin view).
    #[serde(serialize_with = "optional_time_rfc3339")]
    pub last_error_at: Option<SystemTime>,
    /// Successful loads so far.
    pub loads: u64,
    /// Failed loads so far.
    pub load_errors: u64,
    /// Versions rolled back after failing on probation.
    pub rollbacks: u64,
    /// Whether the serving version is on probation (the previous one ready).
    pub on_probation: bool,
    /// Sessions for which the serving version is failing or backing off.
    pub failing_sessions: usize,
    /// Instances of the serving version alive now (at most `max_instances`).
    pub instances: usize,
    /// Hook calls waiting now for an instance of the serving version
    /// (every one of its `max_instances` busy).
    pub waiting_calls: usize,
    /// Bytes of guest stdout/stderr dropped over `output_bytes_per_call`
    /// by the serving version.
    pub output_dropped_bytes: u64,
}

/// Serializes a time as RFC 3339 (the admin view's one time format).
fn time_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::metrics::rfc3339(*t))
}

/// Serializes an optional time as RFC 3339 or null.
fn optional_time_rfc3339<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => time_rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// What one scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Plugins loaded or replaced.
    pub loaded: Vec<String>,
    /// Plugins removed from the pipeline.
    pub unloaded: Vec<String>,
    /// Plugins whose new version failed (the old one, if any, stays).
    pub failed: Vec<String>,
    /// Plugins whose files are still changing; scanned again soon.
    pub pending: Vec<String>,
}

/// Identity of a file's current contents, cheap to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    /// Size.
    len: u64,
    /// Modification time.
    mtime: SystemTime,
    /// Device and inode (a rename or symlink swap changes them).
    dev: u64,
    /// Inode.
    ino: u64,
}

impl FileStamp {
    /// The stamp of `path`, following symlinks; `None` if it is not a file.
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        meta.is_file().then(|| FileStamp {
            len: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// The stamps of a plugin's `.wasm` and `.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    /// The component file.
    wasm: FileStamp,
    /// The configuration file, if present.
    toml: Option<FileStamp>,
}

impl Fingerprint {
    /// The fingerprint of the plugin at `wasm`.
    fn of(wasm: &Path) -> Option<Fingerprint> {
        Some(Fingerprint {
            wasm: FileStamp::of(wasm)?,
            toml: FileStamp::of(&wasm.with_extension("toml")),
        })
    }

    /// Time since the most recent modification (zero if in the future).
    fn age(&self) -> Duration {
        let newest = self
            .toml
            .map_or(self.wasm.mtime, |t| t.mtime.max(self.wasm.mtime));
        SystemTime::now()
            .duration_since(newest)
            .unwrap_or(Duration::ZERO)
    }
}

/// What the folder knows about one plugin name.
struct Tracked {
    /// Fingerprint of the last load attempt (success or failure): an
    /// unchanged fingerprint is not retried.
    attempted: Option<Fingerprint>,
    /// A fingerprint whose bytes did not compile once: maybe a file caught
    /// half-written, so it is tried again after the settle time before it
    /// is reported as broken.
    suspect: Option<Fingerprint>,
    /// The last fingerprint seen and when it was first seen (settling).
    seen: Option<(Fingerprint, Instant)>,
    /// The config text of the loaded version (to skip no-op reloads).
    loaded_config: Option<String>,
    /// The version serving now.
    serving: Option<Arc<WasmPlugin>>,
    /// The version it replaced, kept until the probation ends.
    previous: Option<Previous>,
    /// Admin view.
    status: PluginStatus,
}

/// A replaced version kept ready for a rollback.
struct Previous {
    /// The version.
    plugin: Arc<WasmPlugin>,
    /// Its admin view.
    version: LoadedVersion,
    /// Its configuration text.
    config_text: Option<String>,
    /// When the probation of its replacement ends.
    until: Instant,
}

impl Tracked {
    /// Retires the kept previous version, if any.
    fn drop_previous(&mut self) {
        if let Some(previous) = self.previous.take() {
            previous.plugin.unregistered();
        }
    }
}

/// Shared state of a folder.
struct DirInner {
    /// The host that compiles and instantiates.
    host: PluginHost,
    /// The folder.
    dir: PathBuf,
    /// The pipeline plugins are swapped into.
    pipeline: Pipeline,
    /// Timing knobs.
    options: DirOptions,
    /// Per-name state. Held only for bookkeeping, never while a plugin
    /// loads (the admin view reads it from async workers).
    state: Mutex<BTreeMap<String, Tracked>>,
    /// Serializes scans (held while plugins load).
    scanning: Mutex<()>,
}

/// Messages to the watcher thread.
enum WatchMsg {
    /// Something changed in the folder.
    Changed,
    /// Stop the thread.
    Stop,
}

/// The running watcher.
struct WatchThread {
    /// Wakes the thread.
    tx: mpsc::Sender<WatchMsg>,
    /// The thread.
    handle: JoinHandle<()>,
    /// The `notify` watcher (dropping it stops events); none when polling.
    _watcher: Option<Box<dyn notify::Watcher + Send>>,
    /// How the folder is followed.
    mode: WatchMode,
}

/// A folder of plugins kept in sync with a pipeline. Dropping it stops the
/// watcher but leaves the plugins loaded (see [`PluginDir::unload_all`]).
pub struct PluginDir {
    /// Shared with the watcher thread.
    inner: Arc<DirInner>,
    /// The watcher, once started.
    watch: Mutex<Option<WatchThread>>,
}

impl std::fmt::Debug for PluginDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDir")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// Locks, ignoring poisoning (state updates are whole-field writes).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `name` is a plugin file name: `*.wasm`, not hidden, not an
/// editor or download temporary.
fn is_plugin_file(name: &str) -> bool {
    name.ends_with(".wasm")
        && name.len() > ".wasm".len()
        && !name.starts_with('.')
        && !name.starts_with('#')
        && !name.contains('~')
}

impl PluginHost {
    /// Loads every plugin in `dir` into `pipeline` now (blocking: call it
    /// before starting the runtime or in `spawn_blocking`) and returns the
    /// folder handle; call [`PluginDir::watch`] to follow changes. A plugin
    /// that fails to load is reported in its status, not as an error.
    pub fn open_dir(
        &self,
        dir: impl Into<PathBuf>,
        pipeline: Pipeline,
        options: DirOptions,
    ) -> (PluginDir, ScanReport) {
        let dir = self.plugin_dir(dir, pipeline, options);
        let report = dir.load_initial();
        (dir, report)
    }

    /// The folder handle without loading anything yet: its status is empty
    /// until [`PluginDir::load_initial`] (the server binary reports it
    /// while the initial plugins load).
    pub fn plugin_dir(
        &self,
        dir: impl Into<PathBuf>,
        pipeline: Pipeline,
        options: DirOptions,
    ) -> PluginDir {
        PluginDir {
            inner: Arc::new(DirInner {
                host: self.clone(),
                dir: dir.into(),
                pipeline,
                options,
                state: Mutex::new(BTreeMap::new()),
                scanning: Mutex::new(()),
            }),
            watch: Mutex::new(None),
        }
    }
}

impl PluginDir {
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Loads every plugin of the folder as it is now, without waiting for
    /// files to settle (blocking: the first scan).
    pub fn load_initial(&self) -> ScanReport {
        self.inner.scan(true)
    }

    /// Reconciles the folder with the pipeline now (blocking).
    pub fn rescan(&self) -> ScanReport {
        self.inner.scan(false)
    }

    /// The admin view: every plugin file seen, by name.
    pub fn status(&self) -> Vec<PluginStatus> {
        lock(&self.inner.state)
            .values()
            .map(|t| {
                let mut status = t.status.clone();
                if let Some(serving) = &t.serving {
                    status.on_probation = t.previous.is_some();
                    status.failing_sessions = serving.failing_sessions();
                    status.instances = serving.live_instances();
                    status.waiting_calls = serving.waiting_calls();
                    status.output_dropped_bytes = serving.output_dropped_bytes();
                }
                status
            })
            .collect()
    }

    /// Decides the probation of every replaced plugin now (the watcher does
    /// this on its own every 100 ms): rolls back a failing replacement,
    /// releases the previous version of one whose probation ended. Returns
    /// the names rolled back.
    pub fn check_probation(&self) -> Vec<String> {
        self.inner.check_probation()
    }

    /// Starts following the folder: a `notify` watcher plus a periodic
    /// scan, on a dedicated thread (never on the async runtime). If the
    /// folder cannot be watched (for example the inotify limit is used up),
    /// logs a warning naming the folder and the cause and polls instead:
    /// the result says which.
    pub fn watch(&self) -> Result<WatchMode, WatchError> {
        self.watch_with(|dir, handler| {
            let mut watcher = notify::recommended_watcher(handler)?;
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(Box::new(watcher))
        })
    }

    /// [`PluginDir::watch`] with another watcher: `make` gets the folder and
    /// the event handler and returns a watcher already watching it, or the
    /// error that makes the folder polled instead (tests inject failures
    /// through it; other platforms' or networked folders' watchers fit it).
    pub fn watch_with<F>(&self, make: F) -> Result<WatchMode, WatchError>
    where
        F: FnOnce(&Path, EventHandler) -> notify::Result<Box<dyn notify::Watcher + Send>>,
    {
        let mut slot = lock(&self.watch);
        if let Some(running) = &*slot {
            return Ok(running.mode.clone());
        }
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let handler: EventHandler = Box::new(move |event: notify::Result<notify::Event>| {
            // Any event (even on hidden names such as `..data`) may change
            // what the folder's plugin names resolve to: scan.
            if event.is_ok() {
                let _ = events.send(WatchMsg::Changed);
            }
        });
        let dir = &self.inner.dir;
        let (watcher, mode) = match make(dir, handler) {
            Ok(watcher) => (Some(watcher), WatchMode::Events),
            Err(e) => {
                let interval = self.inner.options.poll_interval;
                tracing::warn!(
                    dir = %dir.display(),
                    cause = %e,
                    poll_ms = interval.as_millis() as u64,
                    "cannot watch the plugin folder {}: {e}; hot reload goes on by polling it every {} ms (plugin_poll_ms)",
                    dir.display(),
                    interval.as_millis()
                );
                let mode = WatchMode::Polling {
                    cause: e.to_string(),
                    interval,
                };
                (None, mode)
            }
        };
        let interval = match &mode {
            WatchMode::Events => self.inner.options.rescan_interval,
            WatchMode::Polling { interval, .. } => *interval,
        };
        let inner = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name("camp-plugin-watch".into())
            .spawn(move || inner.run(rx, interval))
            .map_err(WatchError::Thread)?;
        *slot = Some(WatchThread {
            tx,
            handle,
            _watcher: watcher,
            mode: mode.clone(),
        });
        Ok(mode)
    }

    /// How the folder is followed (`None` before [`PluginDir::watch`]).
    pub fn watch_mode(&self) -> Option<WatchMode> {
        lock(&self.watch).as_ref().map(|w| w.mode.clone())
    }

    /// Stops the watcher (plugins stay loaded).
    pub fn stop(&self) {
        if let Some(watch) = lock(&self.watch).take() {
            let _ = watch.tx.send(WatchMsg::Stop);
            let _ = watch.handle.join();
        }
    }

    /// Stops the watcher and unregisters every plugin loaded from this
    /// folder (their `on-unregister` runs).
    pub fn unload_all(&self) {
        self.stop();
        let mut state = lock(&self.inner.state);
        for (name, mut tracked) in std::mem::take(&mut *state) {
            tracked.drop_previous();
            if tracked.status.loaded.is_some() {
                self.inner.pipeline.unregister(&name);
            }
        }
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        self.stop();
    }
}

impl DirInner {
    /// The watcher thread: debounced scans on events, periodic scans, and
    /// retries while files settle.
    /// `interval` is the periodic scan's (the safety net, or the polling).
    fn run(&self, rx: mpsc::Receiver<WatchMsg>, interval: Duration) {
        let mut next_periodic = Instant::now() + interval;
        let mut due: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut wake = due.map_or(next_periodic, |d| d.min(next_periodic));
            if self.check_probation_due() {
                wake = wake.min(now + PROBATION_POLL);
            }
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(WatchMsg::Changed) => {
                    // Debounce: push the scan back while events keep coming.
                    due = Some(Instant::now() + self.options.debounce);
                    continue;
                }
                Ok(WatchMsg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.check_probation();
            let now = Instant::now();
            let periodic = now >= next_periodic;
            if due.is_some_and(|d| now >= d) || periodic {
                let report = self.scan(false);
                due = (!report.pending.is_empty()).then(|| Instant::now() + self.options.settle);
                if periodic {
                    next_periodic = Instant::now() + interval;
                }
            }
        }
    }

    /// Whether some plugin is on probation.
    fn check_probation_due(&self) -> bool {
        lock(&self.state).values().any(|t| t.previous.is_some())
    }

    /// See [`PluginDir::check_probation`].
    fn check_probation(&self) -> Vec<String> {
        let mut state = lock(&self.state);
        let mut rolled_back = Vec::new();
        for (name, tracked) in state.iter_mut() {
            let (Some(serving), Some(previous)) = (&tracked.serving, &tracked.previous) else {
                continue;
            };
            match serving.probation() {
                Probation::Failed(why) => {
                    let previous = tracked.previous.take().expect("checked");
                    let bad = tracked
                        .serving
                        .replace(previous.plugin.clone())
                        .expect("checked");
                    self.pipeline
                        .swap(previous.plugin, previous.version.config.order);
                    bad.end_probation();
                    bad.unregistered();
                    let message = format!(
                        "version {} rolled back to {}: {why}",
                        &bad.meta().hash[..12],
                        &previous.version.hash[..12]
                    );
                    tracing::error!(plugin = %name, file = %tracked.status.file.display(), "{message}");
                    tracked.loaded_config = previous.config_text;
                    tracked.status.loaded = Some(previous.version);
                    tracked.status.rollbacks += 1;
                    tracked.status.last_error = Some(message);
                    tracked.status.last_error_at = Some(SystemTime::now());
                    rolled_back.push(name.clone());
                }
                _ if Instant::now() >= previous.until => {
                    serving.end_probation();
                    tracked.drop_previous();
                    tracing::info!(plugin = %name, "probation passed; previous version retired");
                }
                _ => {}
            }
        }
        rolled_back
    }

    /// Lists the folder's plugin files by name.
    fn candidates(&self) -> std::io::Result<BTreeMap<String, PathBuf>> {
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if is_plugin_file(name) {
                let path = entry.path();
                found.insert(super::host::plugin_name(&path), path);
            }
        }
        Ok(found)
    }

    /// One reconciliation pass. `initial` skips the settle wait (at start
    /// the files are whatever they are).
    fn scan(&self, initial: bool) -> ScanReport {
        let _scanning = lock(&self.scanning);
        let mut state = lock(&self.state);
        let mut report = ScanReport::default();
        let mut settled_changes = Vec::new();
        let candidates = match self.candidates() {
            Ok(c) => c,
            Err(e) => {
                // A missing or unreadable folder changes nothing: unloading
                // everything because of a transient error would be worse.
                tracing::error!(dir = %self.dir.display(), "cannot list plugin folder: {e}");
                return report;
            }
        };
        for (name, path) in &candidates {
            let Some(print) = Fingerprint::of(path) else {
                continue;
            };
            let tracked = state.entry(name.clone()).or_insert_with(|| Tracked {
                attempted: None,
                suspect: None,
                seen: None,
                loaded_config: None,
                serving: None,
                previous: None,
                status: PluginStatus {
                    name: name.clone(),
                    file: path.clone(),
                    loaded: None,
                    last_error: None,
                    last_error_at: None,
                    loads: 0,
                    load_errors: 0,
                    rollbacks: 0,
                    on_probation: false,
                    failing_sessions: 0,
                    instances: 0,
                    waiting_calls: 0,
                    output_dropped_bytes: 0,
                },
            });
            if tracked.attempted == Some(print) {
                continue;
            }
            // Settle: unchanged for `settle`, by mtime or by observation.
            let now = Instant::now();
            let seen_since = match tracked.seen {
                Some((seen, at)) if seen == print => at,
                _ => {
                    tracked.seen = Some((print, now));
                    now
                }
            };
            let settled = initial
                || print.age() >= self.options.settle
                || now.duration_since(seen_since) >= self.options.settle;
            if !settled {
                report.pending.push(name.clone());
                continue;
            }
            settled_changes.push((name, path, print));
        }
        // Load without holding the state: a load (compile, trial) can take
        // seconds, and the admin view must not wait for it.
        drop(state);
        for (name, outcome) in self.reload_all(settled_changes) {
            match outcome {
                Reload::Loaded => report.loaded.push(name.clone()),
                Reload::Unchanged => {}
                Reload::Failed => report.failed.push(name.clone()),
                Reload::Changing => report.pending.push(name.clone()),
            }
        }
        let mut state = lock(&self.state);
        let gone: Vec<String> = state
            .keys()
            .filter(|n| !candidates.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let mut tracked = state.remove(&name).expect("listed");
            tracked.drop_previous();
            if tracked.status.loaded.is_some() && self.pipeline.unregister(&name).is_some() {
                tracing::info!(plugin = %name, file = %tracked.status.file.display(), "plugin unloaded: file removed");
                report.unloaded.push(name);
            }
        }
        report
    }

    /// Reloads `changes`, several at once where cores allow: a plugin
    /// folder with a Python and a JavaScript plugin compiles both together
    /// (each compile also spreads its functions over the cores; what runs
    /// one plugin at a time is parsing, the trial and writing the cache).
    /// At most [`std::thread::available_parallelism`] loads run at once.
    /// Outcomes are in the order of `changes`.
    fn reload_all<'a>(
        &self,
        changes: Vec<(&'a String, &'a PathBuf, Fingerprint)>,
    ) -> Vec<(&'a String, Reload)> {
        let workers = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(changes.len());
        if workers <= 1 {
            return changes
                .into_iter()
                .map(|(name, path, print)| (name, self.reload(name, path, print)))
                .collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let outcomes: Vec<Mutex<Option<Reload>>> =
            changes.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let spawned = std::thread::Builder::new()
                    .name("camp-plugin-load".into())
                    .spawn_scoped(scope, || {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((name, path, print)) = changes.get(i) else {
                                break;
                            };
                            *lock(&outcomes[i]) = Some(self.reload(name, path, *print));
                        }
                    });
                if let Err(e) = spawned {
                    // The other workers (or the loop below) do its share.
                    tracing::warn!("cannot start a plugin load thread: {e}");
                }
            }
        });
        changes
            .iter()
            .zip(outcomes)
            .map(|((name, path, print), outcome)| {
                let outcome = outcome.into_inner().unwrap_or_else(|e| e.into_inner());
                // Not loaded only if no worker thread could be started.
                (
                    *name,
                    outcome.unwrap_or_else(|| self.reload(name, path, *print)),
                )
            })
            .collect()
    }

    /// Loads a changed plugin and swaps it in.
    fn reload(&self, name: &str, path: &Path, print: Fingerprint) -> Reload {
        let toml_path = path.with_extension("toml");
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(_) => return Reload::Changing,
        };
        let config_text = std::fs::read_to_string(&toml_path).ok();
        if Fingerprint::of(path) != Some(print) {
            return Reload::Changing;
        }
        let hash = content_hash(&bytes);
        {
            let mut state = lock(&self.state);
            let Some(tracked) = state.get_mut(name) else {
                return Reload::Changing;
            };
            tracked.attempted = Some(print);
            tracked.status.file = path.to_path_buf();
            if let Some(loaded) = &tracked.status.loaded
                && loaded.hash == hash
                && tracked.loaded_config == config_text
            {
                return Reload::Unchanged;
            }
        }
        let config = match &config_text {
            Some(text) => PluginConfig::parse(text, &toml_path, self.host.defaults()),
            None => Ok(self.host.defaults().clone()),
        };
        let result = config
            .map_err(super::host::LoadError::from)
            .and_then(|config| self.host.load(name, &bytes, config));
        let mut state = lock(&self.state);
        let Some(tracked) = state.get_mut(name) else {
            return Reload::Changing;
        };
        match result {
            Ok((plugin, timings)) => {
                let meta = plugin.meta().clone();
                // The replaced version stays ready until the new one has
                // passed its probation.
                let replaced = self.pipeline.swap(plugin.clone(), meta.config.order);
                let old = tracked.serving.replace(plugin.clone());
                let replaced = match (replaced, old) {
                    (Some(_), Some(unproven)) if tracked.previous.is_some() => {
                        // The version being replaced was itself on
                        // probation: retire it and keep the last version
                        // that passed, so a rollback never restores an
                        // unproven version.
                        unproven.end_probation();
                        unproven.unregistered();
                        plugin.start_probation();
                        if let Some(previous) = &mut tracked.previous {
                            previous.until = Instant::now() + self.options.probation;
                        }
                        true
                    }
                    (Some(_), Some(old)) if tracked.status.loaded.is_some() => {
                        plugin.start_probation();
                        tracked.previous = Some(Previous {
                            plugin: old,
                            version: tracked.status.loaded.take().expect("checked"),
                            config_text: tracked.loaded_config.take(),
                            until: Instant::now() + self.options.probation,
                        });
                        true
                    }
                    (replaced, _) => {
                        // Not ours (registered by someone else): retire it.
                        if let Some(replaced) = replaced {
                            replaced.unregistered();
                        }
                        false
                    }
                };
                tracing::info!(
                    plugin = name,
                    file = %path.display(),
                    hash = &meta.hash[..12],
                    cache = ?timings.cache,
                    compile_ms = timings.compile.as_secs_f64() * 1e3,
                    instantiate_ms = timings.instantiate.as_secs_f64() * 1e3,
                    "plugin {}",
                    if replaced { "replaced" } else { "loaded" }
                );
                tracked.loaded_config = config_text;
                tracked.status.loaded = Some(LoadedVersion {
                    version: meta.version().to_string(),
                    hash: meta.hash,
                    guest_name: meta.guest_name,
                    wit_version: meta.wit_version,
                    hooks: meta
                        .hooks
                        .iter()
                        .map(|h| h.name())
                        .chain(meta.session_opened.then_some("session-opened"))
                        .chain(meta.session_closed.then_some("session-closed"))
                        .collect(),
                    config: meta.config,
                    loaded_at: SystemTime::now(),
                    timings,
                });
                tracked.status.loads += 1;
                tracked.status.last_error = None;
                tracked.status.last_error_at = None;
                Reload::Loaded
            }
            Err(super::host::LoadError::Compile { .. }) if tracked.suspect != Some(print) => {
                // Perhaps still being written (a slow copy in place):
                // look again once it settled; report it only if the same
                // bytes fail again.
                tracked.suspect = Some(print);
                tracked.attempted = None;
                tracked.seen = Some((print, Instant::now()));
                tracing::debug!(plugin = name, file = %path.display(), "does not compile yet; trying again once the file settled");
                Reload::Changing
            }
            Err(e) => {
                tracing::error!(
                    plugin = name,
                    file = %path.display(),
                    serving = tracked.status.loaded.as_ref().map(|l| &l.hash[..12]),
                    "plugin load failed, previous version (if any) keeps serving: {e}"
                );
                tracked.status.last_error = Some(e.to_string());
                tracked.status.last_error_at = Some(SystemTime::now());
                tracked.status.load_errors += 1;
                Reload::Failed
            }
        }
    }
}

/// How often the watcher decides probations while one is open.
const PROBATION_POLL: Duration = Duration::from_millis(100);

/// Outcome of one plugin's reload attempt.
enum Reload {
    /// A new version serves.
    Loaded,
    /// Same bytes and configuration as the serving version.
    Unchanged,
    /// The new version was refused; the old one (if any) serves.
    Failed,
    /// The file changed while it was read; try again later.
    Changing,
}

#[cfg(test)]
mod tests {
    use super::is_plugin_file;

    #[test]
    fn temporary_and_hidden_names_are_not_plugins() {
        assert!(is_plugin_file("filter.wasm"));
        assert!(is_plugin_file("00-logger.wasm"));
        for name in [
            ".filter.wasm",
            "..data",
            ".filter.wasm.tmp",
            "filter.wasm~",
            "#filter.wasm#",
            "filter.wasm.part",
            "filter.toml",
            ".wasm",
        ] {
            assert!(!is_plugin_file(name), "{name}");
        }
    }
}
