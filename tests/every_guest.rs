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

/// Fails to compile when a guest has no test of its name above.
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
camp_artifacts::foreach_guest!(assert_test_exists);
