//! The `camp` command-line client, run as a process against a server on
//! `127.0.0.1:0`: what it prints and how it exits.

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::common::{TOKEN, TestServer};
use camp_server::extension::Message;
use camp_server::server::Server;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs `camp` with `args` (after `--url` and `--token`), feeding `stdin`;
/// returns its output within 20 s.
async fn camp(url: &str, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_camp"))
        .args(["--url", url, "--token", token])
        .args(args)
        .env_remove("CAMP_URL")
        .env_remove("CAMP_TOKEN")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("camp runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("camp finishes within 20 s")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn send_text_prints_the_echo() {
    let server = TestServer::echo(Server::builder()).await;
    let out = camp(&server.url(), TOKEN, &["send-text", "hello, camp"], None).await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello, camp\n");
    assert!(stderr(&out).contains("delivered"), "{}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test]
async fn send_binary_prints_the_echo_as_json() {
    let server = TestServer::echo(Server::builder()).await;
    let out = camp(
        &server.url(),
        TOKEN,
        &["--json", "send-binary", "--hex", "ca:fe 01"],
        None,
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"type": "binary", "len": 3, "hex": "cafe01"})
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, [0u8, 1, 2, 255]).unwrap();
    let out = camp(
        &server.url(),
        TOKEN,
        &["send-binary", "--file", file.to_str().unwrap()],
        None,
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "[binary 4 bytes] 000102ff\n");
    server.shutdown().await;
}

/// A server that greets every session with three messages.
async fn greeter() -> TestServer {
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    tokio::spawn(async move {
        while let Some((session, mut events)) = incoming.next().await {
            session.send_utf8("one");
            session.send_binary(vec![0xde, 0xad]);
            session.send_error("three");
            tokio::spawn(async move { while events.next().await.is_some() {} });
        }
    });
    TestServer::start(server).await
}

#[tokio::test]
async fn listen_prints_incoming_messages() {
    let server = greeter().await;
    let out = camp(
        &server.url(),
        TOKEN,
        &["listen", "--count", "3", "--timeout-s", "10"],
        None,
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "one\n[binary 2 bytes] dead\n[error] three\n");

    // Waiting for more than arrives: exit 6 after the timeout, having
    // printed what came.
    let out = camp(
        &server.url(),
        TOKEN,
        &["listen", "--count", "4", "--timeout-s", "0.5"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(6), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3);
    assert!(stderr(&out).contains("3 of 4"), "{}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test]
async fn refused_token_exits_3_with_the_status() {
    let server = TestServer::echo(Server::builder()).await;
    let out = camp(&server.url(), "wrong", &["send-text", "x"], None).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains("token rejected"), "{err}");
    server.shutdown().await;

    // Nobody listening: also no session.
    let out = camp("ws://127.0.0.1:1/", TOKEN, &["send-text", "x"], None).await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
}

#[tokio::test]
async fn interactive_sends_lines_and_prints_replies() {
    let server = TestServer::echo(Server::builder()).await;
    let out = camp(
        &server.url(),
        TOKEN,
        &["interactive"],
        Some("first line\n/hex 0a0b\nsecond line\n"),
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "first line\n[binary 2 bytes] 0a0b\nsecond line\n"
    );

    // `/bye` closes the session: the rest of the input is not sent, and
    // the server sees the reason.
    let (server2, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let server2 = TestServer::start(server2).await;
    let seen = tokio::spawn(async move {
        let (session, mut events) = incoming.next().await.unwrap();
        let mut messages = Vec::new();
        loop {
            match events.next().await {
                Some(camp_server::session::SessionEvent::Message(m)) => {
                    if let Message::Utf8(t) = &m {
                        drop(session.send_utf8(t.clone()));
                    }
                    messages.push(m);
                }
                Some(camp_server::session::SessionEvent::Closed(info)) => {
                    return (messages, info);
                }
                Some(_) => {}
                None => panic!("events ended without Closed"),
            }
        }
    });
    let out = camp(
        &server2.url(),
        TOKEN,
        &["interactive"],
        Some("only this\n/bye see you\nnot this\n"),
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let (messages, info) = tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(messages, vec![Message::Utf8("only this".into())]);
    assert_eq!(info.code, 4000);
    assert_eq!(info.reason, "see you");
    assert!(info.by_peer);
    server.shutdown().await;
    server2.shutdown().await;
}

#[tokio::test]
async fn bad_local_input_exits_1_without_connecting() {
    let out = camp(
        "ws://127.0.0.1:1/",
        TOKEN,
        &["send-binary", "--hex", "xyz"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("hex"), "{}", stderr(&out));
}

/// A payload whose every byte depends on its position.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// What a stream-collecting server received: name, behaviour, bytes.
type Received = (String, &'static str, Vec<u8>);

/// A server that reads every stream it is sent to the end and reports it.
async fn collector() -> (TestServer, tokio::sync::mpsc::UnboundedReceiver<Received>) {
    use tokio::io::AsyncReadExt;
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((_session, mut events)) = incoming.next().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    if let camp_server::session::SessionEvent::Stream(mut stream) = event {
                        let name = stream.name().to_string();
                        let behaviour = stream.behaviour().name();
                        let mut bytes = Vec::new();
                        stream.read_to_end(&mut bytes).await.unwrap();
                        let _ = tx.send((name, behaviour, bytes));
                    }
                }
            });
        }
    });
    (TestServer::start(server).await, rx)
}

#[tokio::test]
async fn send_file_pushes_or_pulls_the_whole_file() {
    let (server, mut received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    let content = pattern(3 * 1024 * 1024 + 17);
    std::fs::write(&file, &content).unwrap();
    let path = file.to_str().unwrap();

    let out = camp(&server.url(), TOKEN, &["send-file", path], None).await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("sent 3145745 bytes"),
        "{}",
        stderr(&out)
    );
    let (name, behaviour, bytes) = received.recv().await.unwrap();
    assert_eq!((name.as_str(), behaviour), ("data.bin", "push"));
    assert!(bytes == content, "PUSH arrived altered");

    let out = camp(
        &server.url(),
        TOKEN,
        &["send-file", path, "--pull", "--name", "renamed"],
        None,
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let (name, behaviour, bytes) = received.recv().await.unwrap();
    assert_eq!((name.as_str(), behaviour), ("renamed", "pull"));
    assert!(bytes == content, "PULL arrived altered");

    let out = camp(
        &server.url(),
        TOKEN,
        &["send-file", dir.path().join("missing").to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test]
async fn receive_writes_the_stream_to_a_file() {
    use camp_server::session::StreamOptions;
    let content = pattern(2 * 1024 * 1024 + 5);
    let (server, mut incoming) = Server::builder().tokens([TOKEN]).build();
    let sent = content.clone();
    tokio::spawn(async move {
        while let Some((session, mut events)) = incoming.next().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                // The text first (acknowledged), then the stream: the
                // client may exit as soon as the stream is complete.
                let _ = session.send_utf8("here it comes").acked().await;
                let options = StreamOptions::push("report.bin").size(sent.len() as u64);
                let transfer = session.stream(std::io::Cursor::new(sent), options);
                let _ = transfer.await;
                while events.next().await.is_some() {}
            });
        }
    });
    let server = TestServer::start(server).await;
    let dir = tempfile::tempdir().unwrap();

    let by_name = dir.path().join("by-name.bin");
    let out = camp(
        &server.url(),
        TOKEN,
        &[
            "receive",
            "--name",
            "report.bin",
            "--out",
            by_name.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(std::fs::read(&by_name).unwrap() == content);
    assert_eq!(stdout(&out), "here it comes\n");

    let first = dir.path().join("first.bin");
    let out = camp(
        &server.url(),
        TOKEN,
        &["receive", "--out", first.to_str().unwrap()],
        None,
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(std::fs::read(&first).unwrap() == content);

    // A name nobody sends: exit 6 after the timeout.
    let out = camp(
        &server.url(),
        TOKEN,
        &[
            "receive",
            "--name",
            "other",
            "--out",
            dir.path().join("other.bin").to_str().unwrap(),
            "--timeout-s",
            "0.5",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(6), "stderr: {}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test]
async fn wss_with_a_private_certificate_authority() {
    use camp_server::tls::TlsConfig;
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
    let tls = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let server = TestServer::echo(Server::builder().tls(tls)).await;
    let url = format!("wss://localhost:{}/", server.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();

    let out = camp(
        &url,
        TOKEN,
        &["--ca", ca.to_str().unwrap(), "send-text", "over tls"],
        None,
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "over tls\n");

    // Without the CA the certificate is not trusted: no session.
    let out = camp(&url, TOKEN, &["send-text", "over tls"], None).await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_dropped_by_a_plugin_is_reported_and_exits_7_with_expect_reply() {
    let pipeline = camp_server::extension::Pipeline::new();
    let filter = crate::plugin_support::load(
        "filter",
        crate::plugin_support::FILTER,
        "config = '{\"blocked\": [\"forbidden\"]}'",
    );
    pipeline.upsert(filter, 1);
    let server = TestServer::echo(Server::builder().pipeline(pipeline)).await;
    let url = server.url();
    let args = ["send-text", "--wait-ms", "300", "--expect-reply"];
    let dropped = camp(&url, TOKEN, &[&args[..], &["forbidden"]].concat(), None).await;
    assert_eq!(
        dropped.status.code(),
        Some(7),
        "stderr: {}",
        stderr(&dropped)
    );
    assert!(
        stderr(&dropped).contains("dropped by a plugin"),
        "{}",
        stderr(&dropped)
    );
    assert_eq!(stdout(&dropped), "");
    // Without --expect-reply: exit 0, but said.
    let quiet = camp(
        &url,
        TOKEN,
        &["send-text", "--wait-ms", "300", "forbidden"],
        None,
    )
    .await;
    assert!(quiet.status.success(), "stderr: {}", stderr(&quiet));
    assert!(
        stderr(&quiet).contains("--expect-reply"),
        "{}",
        stderr(&quiet)
    );
    // A message that passes still exits 0 with --expect-reply.
    let passed = camp(&url, TOKEN, &[&args[..], &["fine"]].concat(), None).await;
    assert!(passed.status.success(), "stderr: {}", stderr(&passed));
    assert_eq!(stdout(&passed), "fine\n");
    server.shutdown().await;
}
