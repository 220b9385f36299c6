//! Helpers shared by the plugin tests: a host with a disk cache in the
//! target's temporary folder, loading the guests built by build.rs with an
//! inline `NAME.toml`, and running one message through a hook.

pub mod batch;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use camp_server::extension::wasm::{
    DirOptions, HostOptions, LoadError, PluginConfig, PluginDir, PluginHost, PluginStatus,
    WasmPlugin,
};
use camp_server::extension::{Extension, Hook, HookError, Message, Verdict};
use camp_server::session::Session;

/// The guest components built by the `camp-artifacts` crate.
pub const LOGGER: &str = camp_artifacts::LOGGER;
/// The filter example plugin.
pub const FILTER: &str = camp_artifacts::FILTER;
/// The rpc example plugin.
pub const RPC: &str = camp_artifacts::RPC;
/// The configurable test guest.
pub const PROBE: &str = camp_artifacts::PROBE;
/// A component that does not target the plugin world.
pub const WRONG_EXPORTS: &str = camp_artifacts::WRONG_EXPORTS;

/// The version stamp compiled into the probe.
pub const STAMP: &[u8] = b"PROBE-STAMP:0000000000";

/// One plugin host per test binary (one engine, like the server), with
/// compiled artifacts cached on disk so test runs after the first are fast.
pub fn host() -> PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        PluginHost::new(HostOptions {
            cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")),
            ..HostOptions::default()
        })
        .expect("plugin host")
    })
    .clone()
}

/// Reads a built guest.
pub fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (built by camp-artifacts)"))
}

/// Parses an inline `NAME.toml`. Tests give well-behaved plugins a generous
/// time budget so a busy test machine never trips it.
pub fn config(toml: &str) -> PluginConfig {
    let defaults = PluginConfig {
        deadline_ms: 5_000,
        ..PluginConfig::default()
    };
    PluginConfig::parse(toml, Path::new("test.toml"), &defaults).expect("test config")
}

/// Loads `path` as plugin `name` with the inline TOML `toml`.
pub fn try_load(name: &str, path: &str, toml: &str) -> Result<Arc<WasmPlugin>, LoadError> {
    host()
        .load(name, &bytes(path), config(toml))
        .map(|(p, _)| p)
}

/// Loads `path` as plugin `name` with the inline TOML `toml`, or panics.
pub fn load(name: &str, path: &str, toml: &str) -> Arc<WasmPlugin> {
    try_load(name, path, toml).unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// A probe with the given JSON configuration and extra TOML lines.
pub fn probe(name: &str, json: &str, extra_toml: &str) -> Arc<WasmPlugin> {
    let toml = format!("config = '{json}'\n{extra_toml}");
    load(name, PROBE, &toml)
}

/// Runs a future to completion on the tests' shared runtime (hook calls
/// are async: they yield to the runtime while the guest runs).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test runtime")
        })
        .block_on(future)
}

/// Calls one hook of one extension on a copy of `message`.
pub fn call(
    ext: &dyn Extension,
    hook: Hook,
    session: &Session,
    message: Message,
) -> (Result<Verdict, HookError>, Message) {
    let mut message = message;
    let result = block_on(ext.call(hook, session, &mut message));
    (result, message)
}

/// The probe's bytes with its version stamp set to `version`.
pub fn stamped_probe(version: u64) -> Vec<u8> {
    let mut data = bytes(PROBE);
    let at = data
        .windows(STAMP.len())
        .position(|w| w == STAMP)
        .expect("stamp in probe.wasm");
    let stamp = format!("PROBE-STAMP:{version:010}");
    data[at..at + STAMP.len()].copy_from_slice(stamp.as_bytes());
    data
}

/// Collects tracing output (for asserting what plugins log).
#[derive(Clone, Default)]
pub struct LogCapture(pub Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// A subscriber writing into this capture.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let this = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || this.clone())
            .finish()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fast timings so the test does not wait long.
pub fn options() -> DirOptions {
    DirOptions {
        debounce: Duration::from_millis(20),
        settle: Duration::from_millis(50),
        rescan_interval: Duration::from_millis(300),
        probation: Duration::from_secs(10),
        ..DirOptions::default()
    }
}

/// Polls `cond` until it holds (panics after 120 s with `what`: a
/// JavaScript or Python plugin compiles for ~11 s on an idle machine, and
/// CI machines are not idle).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The status of plugin `name` in `dir`.
pub fn status(dir: &PluginDir, name: &str) -> Option<PluginStatus> {
    dir.status().into_iter().find(|s| s.name == name)
}

/// Writes `data` to `path` the way most tools do: a temporary file, then
/// an atomic rename.
pub fn write_by_rename(path: &Path, data: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Overwrites `path` in place in several slow chunks, like `cp` of a large
/// file: the watcher sees a truncated, then partial, then whole file.
pub fn write_in_place(path: &Path, data: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    for chunk in data.chunks(data.len() / 4 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Publishes `data` as `name` through a Kubernetes ConfigMap-style swap:
/// files live in a timestamped folder, `..data` points at it, and `name`
/// points into `..data`; an update swaps `..data` atomically.
pub fn write_by_symlink_swap(dir: &Path, name: &str, data: &[u8], generation: u64) {
    let folder = format!("..gen_{generation}");
    std::fs::create_dir(dir.join(&folder)).unwrap();
    std::fs::write(dir.join(&folder).join(name), data).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&folder, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join(name);
    if !link.is_symlink() {
        let tmp_link = dir.join(format!(".{name}.link"));
        std::os::unix::fs::symlink(format!("..data/{name}"), &tmp_link).unwrap();
        std::fs::rename(&tmp_link, &link).unwrap();
    }
}

/// The probe configuration of the reload tests: stamp every received
/// UTF-8 message with the version.
pub const STAMPING: &str = "config = '{\"stamp\": true, \"hooks\": [\"on-receive-utf8\"]}'\ndeadline_ms = 5000\nmax_instances = 8\n";

/// Installs version `version` of the stamped probe as `dir/probe.wasm`,
/// by rename, in-place copy or `..data` symlink swap in turn (the ways a
/// file arrives in a watched folder), and waits until `plugins` serves it.
pub fn install_stamped_probe(dir: &Path, plugins: &PluginDir, version: u64) {
    let wasm = dir.join("probe.wasm");
    let data = stamped_probe(version);
    match version % 3 {
        0 => write_by_rename(&wasm, &data),
        1 if !wasm.is_symlink() => write_in_place(&wasm, &data),
        _ => write_by_symlink_swap(dir, "probe.wasm", &data, version),
    }
    let hash = camp_server::extension::wasm::content_hash(&data);
    wait_until(&format!("version {version}"), || {
        status(plugins, "probe")
            .and_then(|s| s.loaded)
            .is_some_and(|l| l.hash == hash)
    });
}
