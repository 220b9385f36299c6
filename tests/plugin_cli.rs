//! The plugin author's walkthrough, for each language, with the
//! `camp-plugin` command: `new` → `build` → `check` → `test`, then the
//! component dropped into a running server's plugin folder answers a
//! client. Also: `check` refusing a broken component and `test` failing on
//! a wrong expectation.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::TestServer;
use crate::plugin_support::*;
use camp_server::extension::{Hook, Message, Pipeline, Verdict};
use camp_server::server::Server;
use camp_server::session::Session;

/// Runs `camp-plugin ARGS` (compiled artifacts cached in the test target).
fn camp_plugin(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_camp-plugin"))
        .args(args)
        .env(
            "CAMP_PLUGIN_CACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("camp-plugin-cache"),
        )
        // The JavaScript toolchain camp-artifacts uses (no npm install in
        // the test).
        .env(
            "CAMP_COMPONENTIZE_JS",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("artifacts/node_modules/.bin/componentize-js"),
        )
        .output()
        .expect("camp-plugin runs")
}

/// Panics with the output unless the command succeeded; returns stdout.
fn ok(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// new → build → check → test → live in a server, for one language.
async fn walkthrough(lang: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("hello-{lang}");
    let parent = tmp.path().to_str().unwrap();
    ok(
        "new",
        camp_plugin(&["new", "--lang", lang, &name, "--dir", parent]),
    );
    let project = tmp.path().join(&name);
    let built = ok("build", camp_plugin(&["build", project.to_str().unwrap()]));
    let wasm = project.join(format!("{name}.wasm"));
    assert!(wasm.exists(), "{built}");
    let wasm_arg = wasm.to_str().unwrap();
    let checked = ok("check", camp_plugin(&["check", wasm_arg]));
    assert!(
        checked.starts_with(&format!("ok: {name}")) && checked.contains("on-receive-utf8"),
        "{checked}"
    );
    let tested = ok("test", camp_plugin(&["test", wasm_arg]));
    assert!(tested.contains("10 passed, 0 failed"), "{tested}");

    // A wrong expectation fails the run, naming the line.
    let script = project.join("wrong.test");
    std::fs::write(&script, "receive-utf8 ping => pass\n").unwrap();
    let wrong = camp_plugin(&["test", wasm_arg, script.to_str().unwrap()]);
    assert_eq!(wrong.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&wrong.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("0 passed, 1 failed"),
        "{stdout}"
    );

    // A line for a hook the plugin does not declare passes without a call,
    // and the run says so.
    std::fs::write(&script, "send-utf8 ping => pass\n").unwrap();
    let undeclared = camp_plugin(&["test", wasm_arg, script.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&undeclared.stderr);
    assert!(
        undeclared.status.success()
            && stderr.contains("does not declare send-utf8: not called, counted as pass"),
        "{stderr}"
    );

    // Dropped into a running server's plugin folder: live.
    let plugins_dir = tmp.path().join("plugins");
    std::fs::create_dir(&plugins_dir).unwrap();
    let pipeline = Pipeline::new();
    let (plugins, _) = host().open_dir(&plugins_dir, pipeline.clone(), options());
    plugins.watch().unwrap();
    let server = TestServer::echo(Server::builder().pipeline(pipeline.clone())).await;
    std::fs::copy(
        project.join(format!("{name}.toml")),
        plugins_dir.join(format!("{name}.toml")),
    )
    .unwrap();
    write_by_rename(&plugins_dir.join(format!("{name}.wasm")), &bytes(wasm_arg));
    tokio::task::spawn_blocking({
        let pipeline = pipeline.clone();
        move || wait_until("the plugin to be live", || !pipeline.is_empty())
    })
    .await
    .unwrap();
    let (client, mut events) = server.client(5).await;
    client.send_utf8("drop me");
    client.send_utf8("ping");
    client.send_utf8("hello");
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.next_message())
            .await
            .expect("a message in time")
            .expect("session open")
    };
    // The plugin's reply is queued by the plugin, the echoes by the
    // application: the reply may come first.
    let mut got = vec![next().await, next().await, next().await];
    got.sort_by_key(|m| format!("{m:?}"));
    assert_eq!(
        got,
        [
            Message::Utf8("hello".into()),
            Message::Utf8(format!("hi from {name}")),
            Message::Utf8("pong".into()),
        ]
    );
    let server_side = server.server.session(5).unwrap();
    assert_eq!(
        server_side.get(&format!("{name}.seen")).as_deref(),
        Some("3")
    );
    plugins.stop();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_rust() {
    walkthrough("rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_python() {
    walkthrough("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_js() {
    walkthrough("js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_c() {
    walkthrough("c").await;
}

/// A JavaScript guest's linear memory grows ~0.9 KiB per hook call until
/// its engine's first full garbage collection at ~96 MiB, then stays flat
/// (StarlingMonkey's heap policy, not a leak: docs/WRITE-A-PLUGIN.md). At
/// the 64 MiB default every instance ran out of memory after ~60,000
/// calls, dropping a message; the limits `camp-plugin new --lang js` writes
/// must carry an instance past that collection.
#[test]
fn the_js_template_limits_outlast_the_engine_heap_growth() {
    let tmp = tempfile::tempdir().unwrap();
    ok(
        "new",
        camp_plugin(&[
            "new",
            "--lang",
            "js",
            "heap",
            "--dir",
            tmp.path().to_str().unwrap(),
        ]),
    );
    let toml = std::fs::read_to_string(tmp.path().join("heap/heap.toml")).unwrap();
    // The template's limits without its example `[config]` (which the
    // filter would refuse): the filter with no rules passes everything.
    let limits = &toml[..toml.find("[config]").expect("a [config] table")];
    // This is about memory: a wide time budget, so that a full collection
    // stretched by a loaded machine is not counted against it (a call hit
    // the template's 200 ms at load average 9 while a build ran).
    assert!(limits.contains("deadline_ms = 200"), "{limits}");
    let limits = limits.replace("deadline_ms = 200", "deadline_ms = 10000");
    let plugin = load("filter", camp_artifacts::FILTER_JS, &limits);
    let (session, _outbox) = Session::detached(1);
    // One call at a time: every call runs on the same instance.
    for i in 0..200_000 {
        let (result, _) = call(
            &*plugin,
            Hook::OnReceiveUtf8,
            &session,
            Message::Utf8("hello, wörld".into()),
        );
        assert_eq!(result, Ok(Verdict::Pass), "call {i}");
    }
    assert_eq!(plugin.discarded_instances(), 0);
}

#[test]
fn check_refuses_a_component_that_does_not_fit_and_a_bad_config() {
    let out = camp_plugin(&["check", camp_artifacts::WRONG_EXPORTS]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("check failed"), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("filter.toml");
    std::fs::write(&toml, "config = '{\"patterns\": [\"(\"]}'\n").unwrap();
    let out = camp_plugin(&[
        "check",
        camp_artifacts::FILTER_C,
        "--config",
        toml.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid pattern"), "{stderr}");
}
