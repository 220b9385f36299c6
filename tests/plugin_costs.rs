//! What each language costs, measured on this machine (the table in
//! docs/WRITE-A-PLUGIN.md): component size, first load (compile,
//! instantiate, trial), cached load (from the on-disk artifact cache), one
//! hook call, and the resident memory a loaded plugin adds while 8
//! sessions call it at once. Ignored by default (it compiles the big
//! guests from scratch); run it alone:
//!
//! ```sh
//! cargo test --test tests plugin_costs -- --ignored --nocapture --test-threads=1
//! ```

use std::time::{Duration, Instant};

use camp_server::extension::wasm::{HostOptions, PluginHost};
use camp_server::extension::{Extension, Hook, Message, Verdict};
use camp_server::session::Session;

use crate::filter_suite::SUITE_TOML;
use crate::plugin_support::*;

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// A host with its own (empty) cache folder.
fn fresh_host(cache: &std::path::Path) -> PluginHost {
    PluginHost::new(HostOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..HostOptions::default()
    })
    .unwrap()
}

#[test]
#[ignore = "measurement: run alone with --ignored --nocapture"]
fn plugin_costs() {
    let builds = [
        ("Rust", FILTER),
        ("C", camp_artifacts::FILTER_C),
        ("Python", camp_artifacts::FILTER_PYTHON),
        ("JavaScript", camp_artifacts::FILTER_JS),
    ];
    // Warm-up: the process's first engine and host cost what no plugin
    // does; pay it before measuring.
    {
        let tmp = tempfile::tempdir().unwrap();
        let host = fresh_host(tmp.path());
        drop(host.load("warm-up", &bytes(camp_artifacts::FILTER_C), config("")));
        host.shutdown();
    }
    println!(
        "| filter in | component | first load | cached load | hook call | RSS: load | RSS: +8 busy instances |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (lang, path) in builds {
        let tmp = tempfile::tempdir().unwrap();
        let data = bytes(path);
        let toml = format!("{SUITE_TOML}\nmax_instances = 8\ndeadline_ms = 5000\n");

        let before = rss_mib();
        let host = fresh_host(tmp.path());
        let started = Instant::now();
        let (plugin, _) = host.load("filter", &data, config(&toml)).unwrap();
        let first = started.elapsed();
        let loaded = rss_mib() - before;
        let before = rss_mib();

        // 8 sessions at once, each with its own instance.
        let sessions: Vec<Session> = (0..8).map(|i| Session::detached(i).0).collect();
        block_on(async {
            let mut calls = Vec::new();
            for s in &sessions {
                let plugin = plugin.clone();
                let s = s.clone();
                calls.push(tokio::spawn(async move {
                    for _ in 0..50 {
                        let mut m = Message::Utf8("card 1234-5678 please".into());
                        let v = plugin.call(Hook::OnReceiveUtf8, &s, &mut m).await;
                        assert_eq!(v, Ok(Verdict::Pass));
                    }
                }));
            }
            for c in calls {
                c.await.unwrap();
            }
        });
        let added = rss_mib() - before;

        // One hook call, averaged over many on one session.
        let n = 2000u32;
        let started = Instant::now();
        for _ in 0..n {
            let mut m = Message::Utf8("card 1234-5678 please".into());
            block_on(plugin.call(Hook::OnReceiveUtf8, &sessions[0], &mut m)).unwrap();
        }
        let call = started.elapsed() / n;
        drop(plugin);

        // A second host (a restarted server) with the same cache folder.
        let again = fresh_host(tmp.path());
        let started = Instant::now();
        let (plugin, _) = again.load("filter", &data, config(&toml)).unwrap();
        let cached = started.elapsed();
        drop(plugin);
        host.shutdown();
        again.shutdown();

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let size = if data.len() > 1 << 20 {
            format!("{:.1} MB", data.len() as f64 / 1e6)
        } else {
            format!("{} KB", data.len() / 1000)
        };
        println!(
            "| {lang} | {size} | {:.0} ms | {:.0} ms | {:.1} µs | {:.0} MiB | {:.0} MiB |",
            ms(first),
            ms(cached),
            call.as_secs_f64() * 1e6,
            loaded,
            added
        );
    }
}

/// Our artifact cache against wasmtime's own (`Config::cache`, the
/// well-kept option): the time a restarted server takes to get the
/// compiled Python and JavaScript filters from disk, and the resident
/// memory that adds, each from a folder filled by a first compile.
/// Ignored by default (it compiles the big guests); run it alone:
///
/// ```sh
/// cargo test --release --test tests artifact_cache -- --ignored --nocapture --test-threads=1
/// ```
#[test]
#[ignore = "measurement: run alone with --ignored --nocapture"]
fn artifact_cache_against_wasmtimes_own() {
    use wasmtime::component::Component;
    let wasmtime_engine = |dir: &std::path::Path| {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.concurrency_support(false);
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(wasmtime::Cache::new(cache).unwrap()));
        wasmtime::Engine::new(&config).unwrap()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| guest | first compile | ours: fetch (RSS +) | wasmtime's: fetch (RSS +) | cache size ours / wasmtime's |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (lang, path) in [
        ("Python", camp_artifacts::FILTER_PYTHON),
        ("JavaScript", camp_artifacts::FILTER_JS),
    ] {
        let data = bytes(path);
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let size = |dir: &std::path::Path| -> u64 {
            fn walk(dir: &std::path::Path) -> u64 {
                std::fs::read_dir(dir)
                    .map(|entries| {
                        entries
                            .flatten()
                            .map(|e| match e.metadata() {
                                Ok(m) if m.is_dir() => walk(&e.path()),
                                Ok(m) => m.len(),
                                Err(_) => 0,
                            })
                            .sum()
                    })
                    .unwrap_or(0)
            }
            walk(dir)
        };
        // Fill both caches.
        let host = fresh_host(ours.path());
        let (_, cold) = host.load("filter", &data, config("")).unwrap();
        host.shutdown();
        drop(host);
        Component::new(&wasmtime_engine(theirs.path()), &data).unwrap();
        // A restart: a new engine (a new process's) fetching from each.
        let host = fresh_host(ours.path());
        let before = rss_mib();
        let (plugin, warm) = host.load("filter", &data, config("")).unwrap();
        assert_eq!(warm.cache, camp_server::extension::wasm::CacheOutcome::Disk);
        let ours_rss = rss_mib() - before;
        drop(plugin);
        host.shutdown();
        let engine = wasmtime_engine(theirs.path());
        let before = rss_mib();
        let started = Instant::now();
        let component = Component::new(&engine, &data).unwrap();
        let theirs_took = started.elapsed();
        let theirs_rss = rss_mib() - before;
        drop(component);
        println!(
            "| {lang} | {:.0} ms | {:.1} ms (+{:.0} MiB) | {:.1} ms (+{:.0} MiB) | {:.0} / {:.0} MB |",
            ms(cold.compile),
            ms(warm.compile),
            ours_rss,
            ms(theirs_took),
            theirs_rss,
            size(ours.path()) as f64 / 1e6,
            size(theirs.path()) as f64 / 1e6,
        );
    }
}
