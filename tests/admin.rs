//! The admin listener: metrics after real traffic, health, the admin view,
//! and the binary's refusal of bad configuration.

use std::time::Duration;

use crate::common::{RawPeer, TOKEN, TestServer};
use camp_server::client::Client;
use camp_server::extension::{Extension, Hook, HookFuture, HookSet, Message, Verdict};
use camp_server::protocol::{Body, FrameType};
use camp_server::server::Server;
use camp_server::session::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series}"))
        .parse()
        .unwrap()
}

/// Drops every text message containing "drop".
struct Dropper;
impl Extension for Dropper {
    fn name(&self) -> &str {
        "dropper"
    }
    fn hooks(&self) -> HookSet {
        HookSet::NONE.with(Hook::OnReceiveUtf8)
    }
    fn call<'a>(&'a self, _: Hook, _: &'a Session, m: &'a mut Message) -> HookFuture<'a> {
        let verdict = match m {
            Message::Utf8(t) if t.contains("drop") => Verdict::Drop,
            _ => Verdict::Pass,
        };
        Box::pin(std::future::ready(Ok(verdict)))
    }
}

#[tokio::test]
async fn metrics_count_real_traffic_and_admin_lists_sessions_and_extensions() {
    let server = TestServer::echo(Server::builder()).await;
    server
        .server
        .pipeline()
        .register(std::sync::Arc::new(Dropper))
        .unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(camp_server::admin::serve(
        admin,
        server.server.clone(),
        None,
        std::future::pending(),
    ));

    // Traffic: 3 echoed texts, 1 dropped, 2 refused upgrades, 1 malformed frame.
    let (client, mut events) = Client::new(server.url(), TOKEN)
        .sid(500)
        .connect()
        .await
        .unwrap();
    for i in 0..3 {
        client.send_utf8(format!("hi {i}")).acked().await.unwrap();
        assert!(events.next_message().await.is_some());
    }
    client.send_utf8("please drop").acked().await.unwrap();
    assert!(Client::new(server.url(), "bad").connect().await.is_err());
    assert!(Client::new(server.url(), "bad").connect().await.is_err());
    let mut raw = RawPeer::connect(server.addr, 501).await;
    raw.send_raw(vec![1, 2, 3]).await;
    assert!(matches!(raw.recv().await.body, Body::Error { .. }));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (status, m) = get(admin_addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(value(&m, "camp_sessions_open"), 2.0);
    assert_eq!(
        value(&m, "camp_upgrades_refused_total{reason=\"rejected_token\"}"),
        2.0
    );
    // 4 texts from the client, 3 echoes back.
    assert_eq!(value(&m, "camp_frames_in_total{type=\"UTF8DATA\"}"), 4.0);
    assert_eq!(value(&m, "camp_frames_out_total{type=\"UTF8DATA\"}"), 3.0);
    assert_eq!(value(&m, "camp_malformed_frames_total"), 1.0);
    assert_eq!(
        value(&m, "camp_extension_calls_total{extension=\"dropper\"}"),
        4.0
    );
    assert_eq!(
        value(&m, "camp_extension_drops_total{extension=\"dropper\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "camp_hook_duration_seconds_count{extension=\"dropper\"}"
        ),
        4.0
    );
    assert!(value(&m, "camp_ack_rtt_seconds_count") >= 3.0);
    assert_eq!(
        server.server.metrics().frames_in(FrameType::EndpointInfo),
        2
    );

    let (status, body) = get(admin_addr, "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    let (_, body) = get(admin_addr, "/admin").await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<u64> = view["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, [500, 501]);
    assert_eq!(view["extensions"][0]["name"], "dropper");
    assert_eq!(view["extensions"][0]["drops"], 1);
    assert_eq!(view["extensions"][0]["hooks"][0], "on-receive-utf8");

    let (status, _) = get(admin_addr, "/nope").await;
    assert!(status.starts_with("HTTP/1.1 404"));
    server.shutdown().await;
}

#[tokio::test]
async fn binary_refuses_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("camp.toml");
    std::fs::write(
        &path,
        "tokens = [\"a\"]\n[backpressure]\nprofile = \"turbo\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_camp-server"))
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`backpressure.profile`") && err.contains("turbo"),
        "{err}"
    );

    std::fs::write(&path, "tokens = [\"a\"]\nkeep_alive = 5\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_camp-server"))
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field `keep_alive`"),
        "{err}"
    );
}

/// Passes everything; its version is chosen by the test.
struct Versioned(&'static str);
impl Extension for Versioned {
    fn name(&self) -> &str {
        "filter"
    }
    fn version(&self) -> &str {
        self.0
    }
    fn hooks(&self) -> HookSet {
        HookSet::NONE.with(Hook::OnReceiveUtf8)
    }
    fn call<'a>(&'a self, _: Hook, _: &'a Session, _: &'a mut Message) -> HookFuture<'a> {
        Box::pin(std::future::ready(Ok(Verdict::Pass)))
    }
}

#[tokio::test]
async fn a_replacement_version_gets_series_of_its_own() {
    let server = TestServer::echo(Server::builder()).await;
    let pipeline = server.server.pipeline();
    let (session, _outbox) = Session::detached(9);
    let calls = async |n: usize| {
        for _ in 0..n {
            let mut m = Message::Utf8("x".into());
            pipeline.run(Hook::OnReceiveUtf8, &session, &mut m).await;
        }
    };
    let count = |version: &str| {
        let m = camp_server::admin::render_metrics(&server.server, None);
        let series = format!(
            "camp_hook_duration_seconds_count{{extension=\"filter\",version=\"{version}\"}}"
        );
        m.lines()
            .find_map(|l| l.strip_prefix(&series).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.parse::<u64>().unwrap())
    };
    pipeline.upsert(std::sync::Arc::new(Versioned("aaaaaaaaaaaa")), 0);
    calls(3).await;
    assert_eq!(count("aaaaaaaaaaaa"), Some(3));
    // A new version (say the Python port of a Rust plugin): its own
    // histogram, starting at zero; the old version's series is gone.
    pipeline.upsert(std::sync::Arc::new(Versioned("bbbbbbbbbbbb")), 0);
    calls(2).await;
    assert_eq!(count("bbbbbbbbbbbb"), Some(2));
    assert_eq!(count("aaaaaaaaaaaa"), None);
    // The same version registered again (a configuration change) keeps
    // its counters.
    pipeline.upsert(std::sync::Arc::new(Versioned("bbbbbbbbbbbb")), 5);
    calls(1).await;
    assert_eq!(count("bbbbbbbbbbbb"), Some(3));
    let view = camp_server::admin::admin_view(&server.server, None);
    assert_eq!(view["extensions"][0]["version"], "bbbbbbbbbbbb");
    assert_eq!(view["extensions"][0]["calls"], 3);
}
