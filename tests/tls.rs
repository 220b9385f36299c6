//! TLS end to end: a certificate generated in the test, a `wss://` client
//! that trusts it, a stream over it, and clear errors for bad PEM files.

use std::time::Duration;

use crate::common::{TOKEN, TestServer};
use camp_server::client::{Client, ClientError, ClientTls};
use camp_server::extension::Message;
use camp_server::server::Server;
use camp_server::session::StreamOptions;
use camp_server::tls::{TlsConfig, TlsError};
use tokio::io::AsyncReadExt;

/// A self-signed certificate for `localhost`: (cert PEM, key PEM).
fn certificate() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// The binary's echo (messages and streams) serving TLS with `tls`.
async fn tls_echo(tls: TlsConfig) -> TestServer {
    TestServer::binary_echo(Server::builder().tls(tls)).await
}

#[tokio::test]
async fn wss_session_end_to_end_with_a_generated_certificate() {
    let (cert, key) = certificate();
    let server = tls_echo(TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()).await;
    let roots = ClientTls::with_root_pem(cert.as_bytes()).unwrap();
    let (session, mut events) = Client::new(server.wss_url(), TOKEN)
        .tls(roots)
        .connect()
        .await
        .expect("wss connect");
    session.send_utf8("over tls").acked().await.unwrap();
    assert_eq!(
        events.next_message().await,
        Some(Message::Utf8("over tls".into()))
    );

    // A stream over TLS, echoed back.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let back = session.wait_for_stream("tls", Duration::from_secs(10));
    let transfer = session.stream(
        std::io::Cursor::new(data.clone()),
        StreamOptions::push("tls"),
    );
    let mut stream = back.await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(transfer.await.unwrap(), data.len() as u64);
    assert!(got == data);
    session.close("bye");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let (cert, key) = certificate();
    let server = tls_echo(TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()).await;
    let (other, _) = certificate();
    let roots = ClientTls::with_root_pem(other.as_bytes()).unwrap();
    let err = Client::new(server.wss_url(), TOKEN)
        .tls(roots)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn unreadable_malformed_and_mismatched_pem_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    let (_, other_key) = certificate();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert_file = write("cert.pem", &cert);
    let key_file = write("key.pem", &key);
    let other_key_file = write("other.pem", &other_key);
    let junk = write("junk.pem", "not pem at all\n");

    TlsConfig::from_pem_files(&cert_file, &key_file).expect("matching pair");

    let missing = dir.path().join("missing.pem");
    let err = TlsConfig::from_pem_files(&missing, &key_file).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Read {
                what: "certificate",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let err = TlsConfig::from_pem_files(&cert_file, &missing).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Read {
                what: "private key",
                ..
            }
        ),
        "{err}"
    );

    let err = TlsConfig::from_pem_files(&junk, &key_file).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Pem {
                what: "certificate",
                ..
            }
        ),
        "{err}"
    );

    let err = TlsConfig::from_pem_files(&cert_file, &junk).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Pem {
                what: "private key",
                ..
            }
        ),
        "{err}"
    );

    // The key of another certificate.
    let err = TlsConfig::from_pem_files(&cert_file, &other_key_file).unwrap_err();
    assert!(matches!(err, TlsError::Rejected(_)), "{err}");
    assert!(err.to_string().contains("do not match"), "{err}");
}

#[test]
fn the_binary_refuses_a_mismatched_key_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), other_key).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_camp-server"))
        .args(["--token", "t", "--bind", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.path().join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("key.pem"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("do not match"), "{stderr}");
}

#[tokio::test]
async fn over_the_connection_limit_a_tls_connection_is_closed_and_counted() {
    use camp_server::server::UpgradeLimits;
    let (cert, key) = certificate();
    let tls = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let (server, _incoming) = Server::builder()
        .tokens([TOKEN])
        .tls(tls)
        .upgrade_limits(UpgradeLimits {
            max_connections_per_ip: 1,
            ..UpgradeLimits::default()
        })
        .build();
    let server = TestServer::start(server).await;
    let roots = ClientTls::with_root_pem(cert.as_bytes()).unwrap();
    let connect = || {
        Client::new(server.wss_url(), TOKEN)
            .tls(roots.clone())
            .connect()
    };
    let (first, _events) = connect().await.expect("the first connection is admitted");
    // Closed before the TLS handshake (answering would cost one).
    let err = connect().await.unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err}");
    assert_eq!(server.server.metrics().refusals("ip_connection_limit"), 1);
    first.close("done");
}
