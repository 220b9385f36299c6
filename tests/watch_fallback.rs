//! A plugin folder that cannot be watched (the per-user inotify limit used
//! up: "Too many open files") is polled instead: the failure is injected
//! through `PluginDir::watch_with`, the warning names the folder and the
//! cause, and hot reload (replace, remove) keeps working at the polling
//! interval.

use std::time::Duration;

use crate::plugin_support::*;
use camp_server::admin::AdminReport;
use camp_server::extension::Pipeline;
use camp_server::extension::wasm::{DirOptions, WatchMode, content_hash};

#[test]
fn an_unwatchable_folder_is_polled_and_hot_reload_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let wasm = dir.join("probe.wasm");
    std::fs::write(dir.join("probe.toml"), STAMPING).unwrap();
    std::fs::write(&wasm, stamped_probe(0)).unwrap();
    // The safety-net scan is an hour away: only polling can see changes.
    let options = DirOptions {
        rescan_interval: Duration::from_secs(3600),
        poll_interval: Duration::from_millis(100),
        ..options()
    };
    let pipeline = Pipeline::new();
    let (plugins, report) = host().open_dir(dir, pipeline.clone(), options);
    assert_eq!(report.loaded, ["probe"]);

    let capture = LogCapture::default();
    let mode = tracing::subscriber::with_default(capture.subscriber(), || {
        plugins
            .watch_with(|_, _| {
                // What inotify_init1 or inotify_add_watch answer when the
                // per-user limit is used up.
                Err(notify::Error::io(std::io::Error::from_raw_os_error(24)))
            })
            .expect("an unwatchable folder is not an error")
    });
    let WatchMode::Polling { cause, interval } = mode else {
        panic!("expected polling, got {mode:?}")
    };
    assert!(cause.contains("Too many open files"), "{cause}");
    assert_eq!(interval, Duration::from_millis(100));
    let log = capture.text();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains(&dir.display().to_string()), "{log}");
    assert!(log.contains("Too many open files"), "{log}");
    assert!(plugins.watch_mode().is_some_and(|m| m
        == WatchMode::Polling {
            cause: cause.clone(),
            interval
        }));
    assert!(
        plugins
            .metrics_text()
            .contains("\ncamp_plugin_watch_polling 1\n"),
        "{}",
        plugins.metrics_text()
    );

    // Replace: the new version is found by polling.
    let data = stamped_probe(1);
    write_by_rename(&wasm, &data);
    let hash = content_hash(&data);
    wait_until("version 1 to load by polling", || {
        status(&plugins, "probe")
            .and_then(|s| s.loaded)
            .is_some_and(|l| l.hash == hash)
    });
    // Remove: unloaded by polling.
    std::fs::remove_file(&wasm).unwrap();
    wait_until("the plugin to be unloaded by polling", || {
        pipeline.list().is_empty()
    });
    plugins.stop();
}

#[test]
fn a_watchable_folder_is_watched() {
    let tmp = tempfile::tempdir().unwrap();
    let (plugins, _) = host().open_dir(tmp.path(), Pipeline::new(), options());
    assert_eq!(plugins.watch().unwrap(), WatchMode::Events);
    assert!(
        plugins
            .metrics_text()
            .contains("\ncamp_plugin_watch_polling 0\n")
    );
    plugins.stop();
}
