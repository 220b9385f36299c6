//! Every guest that `camp-artifacts` builds has a test named after it here
//! (the build fails otherwise: see the `foreach_guest!` check at the end),
//! so no guest is built for nothing and each loads and does its one job.

use camp_server::extension::wasm::LoadError;
use camp_server::extension::{Extension, Hook, HookSet, Message, Verdict};
use camp_server::session::Session;

use crate::plugin_support::*;

/// Runs one UTF-8 message through `hook` of the example or test guest at
/// `path` loaded with `toml`.
fn one_message(
    path: &str,
    toml: &str,
    text: &str,
) -> (Result<Verdict, camp_server::extension::HookError>, Message) {
    let plugin = load("guest", path, toml);
    let (session, _outbox) = Session::detached(1);
    call(
        &*plugin,
        Hook::OnReceiveUtf8,
        &session,
        Message::Utf8(text.into()),
    )
}

#[test]
fn logger() {
    let (result, out) = one_message(camp_artifacts::LOGGER, "", "hello");
    assert_eq!(
        (result, out),
        (Ok(Verdict::Pass), Message::Utf8("hello".into()))
    );
}

#[test]
fn filter() {
    let toml = std::fs::read_to_string(camp_artifacts::FILTER_TOML).unwrap();
    let (result, _) = one_message(camp_artifacts::FILTER, &toml, "this is forbidden");
    assert_eq!(result, Ok(Verdict::Drop));
}

/// The filter's builds in other languages: the full suite is in
/// `filter_suite`; here each drops a blocked word with the example config.
fn filter_port(path: &str) {
    let toml = std::fs::read_to_string(camp_artifacts::FILTER_TOML).unwrap();
    let (result, _) = one_message(path, &toml, "this is forbidden");
    assert_eq!(result, Ok(Verdict::Drop));
}

#[test]
fn filter_python() {
    filter_port(camp_artifacts::FILTER_PYTHON);
}

#[test]
fn filter_js() {
    filter_port(camp_artifacts::FILTER_JS);
}

#[test]
fn filter_c() {
    filter_port(camp_artifacts::FILTER_C);
}

#[test]
fn rpc() {
    let (result, _) = one_message(
        camp_artifacts::RPC,
        "",
        r#"{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}"#,
    );
    assert_eq!(
        result,
        Ok(Verdict::Drop),
        "the request is answered and consumed"
    );
}

#[test]
fn probe() {
    let (result, out) = one_message(camp_artifacts::PROBE, "config = '{\"tag\":\"t\"}'", "x");
    assert_eq!(
        (result, out),
        (Ok(Verdict::Pass), Message::Utf8("x|t".into()))
    );
}

#[test]
fn passthrough() {
    let plugin = load("passthrough", camp_artifacts::PASSTHROUGH, "");
    assert!(plugin.hooks().contains(Hook::OnReceiveBinary));
    assert_eq!(plugin.hooks(), HookSet::ALL);
}

#[test]
fn wrong_exports() {
    assert!(matches!(
        try_load("wrong", camp_artifacts::WRONG_EXPORTS, ""),
        Err(LoadError::World { .. })
    ));
}

#[test]
fn table_hog() {
    let (result, _) = one_message(
        camp_artifacts::TABLE_HOG,
        "max_table_elements = 100000",
        "grow",
    );
    assert!(
        matches!(&result, Err(camp_server::extension::HookError::Limit(_))),
        "{result:?}"
    );
}

/// A plugin built against `camp:extension@0.2.0` (bindings from the frozen
/// `wit/0.2.0/`, importing `camp:extension/host@0.2.0`, without
/// `log-enabled`) loads on the 0.2.1 host by semver, is reported as 0.2.0
/// (in its metadata and in the folder's status, which `/admin` shows), and
/// every 0.2.0 host function it calls works: log, both clocks, the
/// session's id and store, and its declared notification.
#[test]
fn built_against_0_2_0() {
    let plugin = load("old", camp_artifacts::BUILT_AGAINST_0_2_0, "");
    assert_eq!(plugin.meta().wit_version, "0.2.0");
    assert_eq!(plugin.meta().guest_name, "built-against-0-2-0");
    assert!(plugin.meta().session_opened && !plugin.meta().session_closed);
    let (session, _outbox) = Session::detached(7);
    block_on(plugin.session_opened(&session));
    assert_eq!(session.get("v020.opened").as_deref(), Some("yes"));
    let capture = LogCapture::default();
    let (result, out) = tracing::subscriber::with_default(capture.subscriber(), || {
        call(
            &*plugin,
            Hook::OnReceiveUtf8,
            &session,
            Message::Utf8("hi".into()),
        )
    });
    assert_eq!(
        (result, out),
        (
            Ok(Verdict::Pass),
            Message::Utf8("hi|0.2.0 sid=7 seen=1 clocks=ok".into())
        )
    );
    assert!(
        capture.text().contains(r#"0.2.0 guest got "hi""#),
        "{}",
        capture.text()
    );
    assert_eq!(session.get("v020.seen").as_deref(), Some("1"));

    // What the folder reports (the admin view's `wit_version`), beside a
    // plugin built against the current contract.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        camp_artifacts::BUILT_AGAINST_0_2_0,
        tmp.path().join("old.wasm"),
    )
    .unwrap();
    std::fs::copy(camp_artifacts::PASSTHROUGH, tmp.path().join("new.wasm")).unwrap();
    let (plugins, _) = host().open_dir(
        tmp.path(),
        camp_server::extension::Pipeline::new(),
        options(),
    );
    let version = |name: &str| {
        status(&plugins, name)
            .and_then(|s| s.loaded)
            .map(|l| l.wit_version)
    };
    assert_eq!(version("old").as_deref(), Some("0.2.0"));
    assert_eq!(version("new").as_deref(), Some("0.2.1"));
    plugins.stop();
}

/// The token-validating example (`wit/auth/camp-auth.wit`): a server admits
/// exactly the tokens the plugin accepts, on real sockets; a configuration
/// it refuses fails the load, a guest of another world is not one.
#[tokio::test]
async fn token_check() {
    use camp_server::client::{Client, ClientError};
    use camp_server::extension::wasm::{TokenPlugin, TokenPluginError};
    use camp_server::server::Server;

    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("token-check.wasm");
    std::fs::copy(camp_artifacts::TOKEN_CHECK, &wasm).unwrap();
    std::fs::write(
        wasm.with_extension("toml"),
        "config = '{\"tokens\": [\"alpha\", \"beta\"], \"prefix\": \"svc-\"}'\ndeadline_ms = 1000\n",
    )
    .unwrap();
    let tokens = TokenPlugin::load_file(&host(), &wasm).await.unwrap();
    assert_eq!(tokens.name(), "token-check");
    for (token, accepted) in [
        ("alpha", true),
        ("beta", true),
        ("svc-0123456789abcdef", true),
        ("alph", false),
        ("alphaa", false),
        ("svc-short", false),
        ("svc-not/alnum-chars", false),
        ("", false),
    ] {
        assert_eq!(
            tokens.validate(token.into()).await.unwrap(),
            accepted,
            "{token}"
        );
    }

    let (server, _incoming) = Server::builder()
        .validator(move |token| {
            let tokens = tokens.clone();
            async move { tokens.admits(token).await }
        })
        .build();
    let server = crate::common::TestServer::start(server).await;
    let (session, _events) = Client::new(server.url(), "svc-abcdefgh12345678")
        .connect()
        .await
        .expect("a token the plugin accepts");
    session.close("done");
    match Client::new(server.url(), "gamma").connect().await {
        Err(ClientError::Refused { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }

    // The binary: --token-plugin admits what the plugin accepts and what
    // --token lists; with only a plugin, no --token is needed.
    for args in [vec![], vec!["--token", "listed"]] {
        let wasm_arg = wasm.to_str().unwrap();
        let mut all = vec![
            "--bind",
            "127.0.0.1:0",
            "--no-admin",
            "--token-plugin",
            wasm_arg,
            "--log",
            "warn",
        ];
        all.extend(&args);
        let spawned =
            crate::common::spawn_announcing(env!("CARGO_BIN_EXE_camp-server"), &all).await;
        let (session, _events) = Client::new(&spawned.url, "beta").connect().await.unwrap();
        session.close("done");
        let listed = Client::new(&spawned.url, "listed").connect().await;
        match (args.is_empty(), listed) {
            (true, Err(ClientError::Refused { status: 401, .. })) => {}
            (false, Ok((session, _))) => session.close("done"),
            (_, other) => panic!("{args:?}: {other:?}"),
        }
    }

    // A configuration the plugin refuses fails the load, naming it.
    std::fs::write(wasm.with_extension("toml"), "config = '{}'\n").unwrap();
    let err = TokenPlugin::load_file(&host(), &wasm).await.unwrap_err();
    assert!(
        matches!(&err, TokenPluginError::Config { message, .. } if message.contains("nothing would be accepted")),
        "{err}"
    );
    // A message plugin is not a token plugin.
    let err = TokenPlugin::load_file(&host(), std::path::Path::new(camp_artifacts::LOGGER))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenPluginError::Load { .. }), "{err}");
}

/// The batching benchmark's guest (`benches/batch.rs`, a test-only world):
/// a batch gets one action per message, in order, the same as calling the
/// hook once per message; the pass-through hooks pass, with or without the
/// `borrow<session>`.
#[tokio::test]
async fn batch() {
    use crate::plugin_support::batch::bindings::camp_bench::batch::types::Payload;
    use crate::plugin_support::batch::{Action, BatchGuest};

    let wasm = bytes(camp_artifacts::BATCH);
    let mut guest = BatchGuest::new(host().engine(), &wasm, 7).await.unwrap();
    let texts: Vec<String> = ["quiet", "one!", "two!!", "", "ünï!cödé!!"]
        .map(String::from)
        .into();
    let expected = ["pass", "drop", "replace 2", "pass", "replace 3"];
    let show = |action: &Action| match action {
        Action::Pass => "pass".to_string(),
        Action::Drop => "drop".to_string(),
        Action::Replace(Payload::Utf8(text)) => format!("replace {text}"),
        Action::Replace(_) => "replace of another kind".to_string(),
    };
    let shown = |actions: Vec<Action>| actions.iter().map(show).collect::<Vec<_>>();
    let mut one_by_one = Vec::new();
    for text in &texts {
        one_by_one.push(show(&guest.scan(7, text).await.unwrap()));
    }
    assert_eq!(one_by_one, expected);
    assert_eq!(shown(guest.scan_batch(7, &texts).await.unwrap()), expected);

    for n in [0, 1, 16] {
        let texts = vec!["x".repeat(64); n];
        let passes = vec!["pass"; n];
        assert_eq!(shown(guest.batch(7, &texts).await.unwrap()), passes);
        assert_eq!(shown(guest.session_batch(&texts).await.unwrap()), passes);
    }
    assert!(matches!(guest.single(7, "x").await.unwrap(), Action::Pass));
    assert!(matches!(
        guest.session_single("x!").await.unwrap(),
        Action::Pass
    ));
}

/// Fails to compile when a guest has no test of its name above.
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
camp_artifacts::foreach_guest!(assert_test_exists);
