//! Hot reload of a plugin folder while sessions send: replacement by
//! rename, by in-place copy and by a Kubernetes-style `..data` symlink swap,
//! broken replacements that leave the old version serving, configuration
//! changes, removal, and restarts served from the artifact cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::plugin_support::*;
use camp_server::extension::wasm::{
    CacheOutcome, HostOptions, PluginDir, PluginHost, content_hash,
};
use camp_server::extension::{Hook, Message, Pipeline, Verdict};
use camp_server::session::Session;

/// What one sender saw: the version stamp of each message in order (`None`
/// once the plugin was removed).
type Seen = Vec<Option<u64>>;

/// A named way of breaking the plugin's files.
type Breakage<'a> = (&'a str, Box<dyn Fn()>);

/// Sessions sending through the pipeline on their own threads.
struct Senders {
    /// Tells them to stop.
    stop: Arc<AtomicBool>,
    /// The latest version each has seen (outer None: nothing yet).
    latest: Vec<Arc<Mutex<Option<Option<u64>>>>>,
    /// The threads, returning what they saw.
    threads: Vec<std::thread::JoinHandle<Seen>>,
}

impl Senders {
    /// Starts `n` sessions sending numbered messages through `pipeline`.
    fn start(pipeline: &Pipeline, n: usize) -> Senders {
        let stop = Arc::new(AtomicBool::new(false));
        let mut latest = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n {
            let pipeline = pipeline.clone();
            let stop = stop.clone();
            let mine = Arc::new(Mutex::new(None));
            latest.push(mine.clone());
            threads.push(std::thread::spawn(move || {
                let (session, _outbox) = Session::detached(100 + i as u64);
                let mut seen = Seen::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let sent = format!("s{i}-{seq}");
                    let mut msg = Message::Utf8(sent.clone());
                    let verdict = block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg));
                    assert_eq!(verdict, Verdict::Pass, "message {sent} was dropped");
                    let Message::Utf8(text) = msg else {
                        panic!("kind changed")
                    };
                    let rest = text
                        .strip_prefix(&sent)
                        .unwrap_or_else(|| panic!("{text} is not {sent}"));
                    // Exactly one version processed it (one stamp), or none
                    // once the plugin is gone.
                    let version = match rest {
                        "" => None,
                        stamp => {
                            let digits = stamp.strip_prefix('|').expect("one stamp");
                            assert_eq!(digits.len(), 10, "exactly one stamp in {text}");
                            Some(digits.parse::<u64>().unwrap())
                        }
                    };
                    seen.push(version);
                    *mine.lock().unwrap() = Some(version);
                    std::thread::sleep(Duration::from_micros(500));
                }
                seen
            }));
        }
        Senders {
            stop,
            latest,
            threads,
        }
    }

    /// Waits until every sender has processed a message with `version`.
    fn wait_all_saw(&self, version: Option<u64>) {
        wait_until(&format!("every sender to see {version:?}"), || {
            self.latest
                .iter()
                .all(|l| *l.lock().unwrap() == Some(version))
        });
    }

    /// Stops them and returns what each saw.
    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("sender"))
            .collect()
    }
}

#[test]
fn replace_twenty_times_and_remove_while_sessions_send() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let wasm = dir.join("probe.wasm");
    std::fs::write(dir.join("probe.toml"), STAMPING).unwrap();
    std::fs::write(&wasm, stamped_probe(0)).unwrap();

    let pipeline = Pipeline::new();
    let (plugins, report) = host().open_dir(dir, pipeline.clone(), options());
    assert_eq!(report.loaded, ["probe"]);
    plugins.watch().unwrap();

    let senders = Senders::start(&pipeline, 4);
    senders.wait_all_saw(Some(0));

    let loaded_hash = |plugins: &PluginDir| {
        status(plugins, "probe")
            .and_then(|s| s.loaded)
            .map(|l| l.hash)
    };
    for version in 1..=20u64 {
        let data = stamped_probe(version);
        match version {
            1..=7 => write_by_rename(&wasm, &data),
            8..=14 => write_in_place(&wasm, &data),
            _ => write_by_symlink_swap(dir, "probe.wasm", &data, version),
        }
        let hash = content_hash(&data);
        wait_until(&format!("version {version} to load"), || {
            loaded_hash(&plugins).as_deref() == Some(hash.as_str())
        });
        senders.wait_all_saw(Some(version));
    }

    // Broken replacements: each is refused and version 20 keeps serving.
    let serving = loaded_hash(&plugins).unwrap();
    let errors_before = status(&plugins, "probe").unwrap().load_errors;
    let broken: [Breakage; 3] = [
        ("a refusing configuration", {
            let dir = dir.to_path_buf();
            Box::new(move || {
                write_by_rename(
                    &dir.join("probe.toml"),
                    b"config = '{\"refuse\": \"bad day\"}'\n",
                )
            })
        }),
        ("garbage bytes", {
            let dir = dir.to_path_buf();
            Box::new(move || {
                write_by_symlink_swap(&dir, "probe.wasm", b"\0asm\x0d\0\x01\0garbage", 21)
            })
        }),
        ("a component with the wrong exports", {
            let dir = dir.to_path_buf();
            Box::new(move || write_by_symlink_swap(&dir, "probe.wasm", &bytes(WRONG_EXPORTS), 22))
        }),
    ];
    for (i, (what, write)) in broken.iter().enumerate() {
        write();
        wait_until(what, || {
            status(&plugins, "probe").unwrap().load_errors == errors_before + 1 + i as u64
        });
        let st = status(&plugins, "probe").unwrap();
        assert_eq!(
            st.loaded.as_ref().unwrap().hash,
            serving,
            "{what}: old version replaced"
        );
        assert!(st.last_error.is_some(), "{what}: error reported");
        // The old version still serves every session.
        for l in &senders.latest {
            *l.lock().unwrap() = None;
        }
        senders.wait_all_saw(Some(20));
        if i == 0 {
            write_by_rename(&dir.join("probe.toml"), STAMPING.as_bytes());
        }
    }
    let last_error = status(&plugins, "probe").unwrap().last_error.unwrap();
    assert!(
        last_error.contains("probe"),
        "error names the plugin: {last_error}"
    );

    // Removal unloads it.
    std::fs::remove_file(&wasm).unwrap();
    wait_until("removal", || {
        status(&plugins, "probe").is_none() && pipeline.is_empty()
    });
    senders.wait_all_saw(None);

    let seen = senders.finish();
    for (i, seen) in seen.iter().enumerate() {
        // In order: versions never go back, and nothing after the removal.
        for pair in seen.windows(2) {
            match pair {
                [Some(a), Some(b)] => {
                    assert!(a <= b, "sender {i}: version went back from {a} to {b}")
                }
                [None, Some(b)] => panic!("sender {i}: version {b} after removal"),
                _ => {}
            }
        }
        // Every version served every session.
        for version in 0..=20u64 {
            assert!(
                seen.contains(&Some(version)),
                "sender {i} never saw version {version}"
            );
        }
        assert_eq!(seen.last(), Some(&None));
    }
}

#[test]
fn order_follows_file_names_unless_configured_and_config_changes_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let probe = bytes(PROBE);
    for name in ["b", "a"] {
        std::fs::write(dir.join(format!("{name}.wasm")), &probe).unwrap();
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!("config = '{{\"tag\": \"{name}\"}}'\ndeadline_ms = 5000\n"),
        )
        .unwrap();
    }
    // Temporary and hidden files are not plugins.
    std::fs::write(dir.join(".c.wasm"), &probe).unwrap();
    std::fs::write(dir.join("d.wasm.part"), &probe).unwrap();

    let pipeline = Pipeline::new();
    let (plugins, report) = host().open_dir(dir, pipeline.clone(), options());
    assert_eq!(report.loaded, ["a", "b"]);
    plugins.watch().unwrap();
    let (session, _outbox) = Session::detached(1);
    let run = || {
        let mut msg = Message::Utf8("x".into());
        block_on(pipeline.run(Hook::OnReceiveUtf8, &session, &mut msg));
        msg
    };
    assert_eq!(run(), Message::Utf8("x|a|b".into()));

    // b's config moves it first and changes its tag: same bytes, reloaded.
    write_by_rename(
        &dir.join("b.toml"),
        b"order = -1\nconfig = '{\"tag\": \"B2\"}'\ndeadline_ms = 5000\n",
    );
    wait_until("b to move first", || {
        run() == Message::Utf8("x|B2|a".into())
    });
    let b = status(&plugins, "b").unwrap().loaded.unwrap();
    assert_eq!(b.config.order, -1);
    assert_eq!(
        b.timings.cache,
        CacheOutcome::Memory,
        "config-only change compiles nothing"
    );

    // An invalid config names the file and the key; the old version stays.
    write_by_rename(&dir.join("b.toml"), b"order = -1\nmax_instances = 0\n");
    wait_until("the config error", || {
        status(&plugins, "b").unwrap().last_error.is_some()
    });
    let err = status(&plugins, "b").unwrap().last_error.unwrap();
    assert!(
        err.contains("b.toml") && err.contains("max_instances"),
        "{err}"
    );
    assert_eq!(run(), Message::Utf8("x|B2|a".into()));
    plugins.unload_all();
    assert!(pipeline.is_empty());
}

#[test]
fn a_restart_loads_compiled_plugins_from_the_disk_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = PluginHost::new(HostOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..HostOptions::default()
    })
    .unwrap();
    let filter = bytes(FILTER);
    let (_, cold) = first.load("filter", &filter, config("")).unwrap();
    let (_, warm) = first.load("filter", &filter, config("")).unwrap();
    first.shutdown();
    let second = PluginHost::new(HostOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..HostOptions::default()
    })
    .unwrap();
    let (_, restart) = second.load("filter", &filter, config("")).unwrap();
    second.shutdown();
    assert_eq!(cold.cache, CacheOutcome::Compiled);
    assert_eq!(warm.cache, CacheOutcome::Memory);
    assert_eq!(restart.cache, CacheOutcome::Disk);
    assert!(
        restart.compile < cold.compile,
        "disk {:?} vs compile {:?}",
        restart.compile,
        cold.compile
    );
    eprintln!(
        "filter.wasm ({} KiB): compile {:?}, memory hit {:?}, disk hit {:?}; instantiate+register {:?}",
        filter.len() / 1024,
        cold.compile,
        warm.compile,
        restart.compile,
        restart.instantiate
    );
}

#[test]
fn a_file_caught_half_written_is_waited_for_not_reported_as_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipeline = Pipeline::new();
    let (plugins, report) = host().open_dir(dir, pipeline.clone(), options());
    assert!(report.loaded.is_empty());
    let whole = bytes(PROBE);
    let wasm = dir.join("probe.wasm");
    // Half of the file, old enough to count as settled.
    std::fs::write(&wasm, &whole[..whole.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let report = plugins.rescan();
    assert_eq!(report.pending, ["probe"], "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(status(&plugins, "probe").unwrap().load_errors, 0);
    // The rest arrives: it loads, and nothing was reported as broken.
    std::fs::write(&wasm, &whole).unwrap();
    wait_until("the whole file loads", || {
        plugins.rescan();
        status(&plugins, "probe").is_some_and(|s| s.loads == 1)
    });
    assert_eq!(status(&plugins, "probe").unwrap().load_errors, 0);
    // Bytes that stay broken are reported, once they failed twice.
    std::fs::write(&wasm, &whole[..whole.len() / 3]).unwrap();
    wait_until("the broken file is reported", || {
        plugins.rescan();
        status(&plugins, "probe").is_some_and(|s| s.load_errors == 1)
    });
}

#[test]
fn the_initial_plugins_load_in_parallel_where_cores_allow() {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("one core: loads run one after the other");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Two plugins whose load waits 900 ms each (on-register sleeps; the
    // sleep needs no core, so a busy machine does not stretch it).
    for name in ["a", "b"] {
        std::fs::copy(PROBE, tmp.path().join(format!("{name}.wasm"))).unwrap();
        std::fs::write(
            tmp.path().join(format!("{name}.toml")),
            "config = '{\"register_sleep_ms\":900,\"hooks\":[\"on-receive-utf8\"]}'\n",
        )
        .unwrap();
    }
    let pipeline = Pipeline::new();
    let started = Instant::now();
    let (plugins, report) = host().open_dir(tmp.path(), pipeline.clone(), options());
    let took = started.elapsed();
    assert_eq!(report.loaded, ["a", "b"], "{report:?}");
    // One after the other they take at least 1.8 s.
    assert!(took < Duration::from_millis(1700), "took {took:?}");
    plugins.unload_all();
}
