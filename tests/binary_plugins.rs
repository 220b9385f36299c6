//! The README's main job: the `camp-server` binary with the example plugins
//! (logger, filter, rpc) from the build, hot reload through the folder, and
//! the admin view listing them.

use std::path::Path;
use std::time::{Duration, Instant};

use camp_server::client::Client;
use camp_server::extension::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

mod common;

/// Starts the binary on the plugin folder `dir`; returns the child, the
/// CAMP URL and the admin address.
async fn start(dir: &Path) -> (Child, String, String) {
    let dir = dir.to_str().expect("a UTF-8 temp path");
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "127.0.0.1:0",
        "--token",
        "secret",
        "--plugins",
        dir,
        "--log",
        "warn",
    ];
    let spawned = common::spawn_announcing(env!("CARGO_BIN_EXE_camp-server"), &args).await;
    let admin = spawned.admin.expect("the admin address is announced");
    (spawned.child, spawned.url, admin)
}

async fn admin_get(addr: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

async fn reply(events: &mut camp_server::session::SessionEvents) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), events.next_message()).await {
        Ok(Some(Message::Utf8(t))) => Some(t),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn binary_runs_the_example_pipeline_and_hot_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let built = Path::new(env!("CAMP_PLUGINS_DIR"));
    for name in ["logger", "filter", "rpc"] {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(built.join(&file), dir.path().join(&file)).unwrap();
        }
    }
    let (_child, url, admin) = start(dir.path()).await;
    let (client, mut events) = Client::new(&url, "secret").connect().await.unwrap();

    // rpc answers and consumes its requests.
    client.send_utf8(r#"{"jsonrpc":"2.0","id":1,"method":"add","params":[2,3]}"#);
    let answer: serde_json::Value =
        serde_json::from_str(&reply(&mut events).await.unwrap()).unwrap();
    assert_eq!(
        (answer["id"].as_i64(), answer["result"].as_i64()),
        (Some(1), Some(5))
    );
    // The filter drops blocked words and redacts card numbers; plain text echoes.
    client.send_utf8("this is forbidden");
    client.send_utf8("card 4111 1111 1111 1111 ok");
    assert_eq!(reply(&mut events).await.unwrap(), "card [card] ok");
    client.send_utf8("hello");
    assert_eq!(reply(&mut events).await.unwrap(), "hello");

    let view: serde_json::Value = serde_json::from_str(&admin_get(&admin, "/admin").await).unwrap();
    let names: Vec<&str> = view["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["logger", "filter", "rpc"],
        "order from the plugins' configs"
    );
    let plugins = view["plugins"].as_array().unwrap();
    assert!(
        plugins
            .iter()
            .all(|p| p["loaded"]["hash"].as_str().is_some_and(|h| h.len() == 64))
    );
    let metrics = admin_get(&admin, "/metrics").await;
    assert!(
        metrics.contains("camp_plugin_loaded{plugin=\"rpc\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("camp_extension_drops_total{extension=\"filter\"} 1"),
        "{metrics}"
    );

    // Hot reload: removing rpc.wasm unloads it while the session stays up;
    // the same request is then echoed like any text.
    std::fs::remove_file(dir.path().join("rpc.wasm")).unwrap();
    let request = r#"{"jsonrpc":"2.0","id":2,"method":"echo","params":["x"]}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client.send_utf8(request);
        let got = reply(&mut events).await.unwrap();
        if got == request {
            break;
        }
        assert!(Instant::now() < deadline, "rpc was never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a broken file in its place is refused while the others keep serving.
    std::fs::write(dir.path().join("rpc.wasm"), b"not a component").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let view: serde_json::Value = serde_json::from_str(&admin_get(&admin, "/admin").await).unwrap();
    let rpc = view["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "rpc")
        .unwrap();
    assert!(rpc["last_error"].as_str().is_some(), "{rpc}");
    client.send_utf8("still forbidden");
    client.send_utf8("still here");
    assert_eq!(reply(&mut events).await.unwrap(), "still here");
    assert!(!client.is_closed());
}
