//! Shared helpers for integration tests: a server on 127.0.0.1:0 and a raw
//! WebSocket peer that speaks CAMP frames byte by byte.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use camp_server::extension::Message;
use camp_server::protocol::{Body, Frame, PingPong};
use camp_server::server::{Incoming, Server, ServerBuilder};
use camp_server::session::{Session, SessionEvents};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TOKEN: &str = "secret";

/// A running server and what the test needs to reach and stop it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// An echo server built from `builder` (tokens: `secret`).
    pub async fn echo(builder: ServerBuilder) -> TestServer {
        let (server, mut incoming) = builder.tokens([TOKEN]).build();
        tokio::spawn(async move {
            while let Some((session, mut events)) = incoming.next().await {
                tokio::spawn(async move {
                    while let Some(m) = events.next_message().await {
                        match m {
                            Message::Utf8(t) => drop(session.send_utf8(t)),
                            Message::Binary(b) => drop(session.send_binary(b)),
                            Message::Error(e) => drop(session.send_utf8(format!("error:{e}"))),
                        }
                    }
                });
            }
        });
        TestServer::start(server).await
    }

    /// A server built from `builder` (tokens: `secret`) running the
    /// binary's application, `camp_server::server::echo`: messages posted
    /// back, streams relayed back with the same name and behaviour.
    pub async fn binary_echo(builder: ServerBuilder) -> TestServer {
        let (server, mut incoming) = builder.tokens([TOKEN]).build();
        tokio::spawn(async move {
            while let Some((session, events)) = incoming.next().await {
                tokio::spawn(camp_server::server::echo(session, events));
            }
        });
        TestServer::start(server).await
    }

    /// Builds `builder` and serves it; its sessions come out of the channel.
    pub async fn with_sessions(
        builder: ServerBuilder,
    ) -> (
        TestServer,
        mpsc::UnboundedReceiver<(Session, SessionEvents)>,
    ) {
        let (server, incoming) = builder.build();
        let sessions = forward(incoming);
        (TestServer::start(server).await, sessions)
    }

    /// Serves `server` on an ephemeral loopback port.
    pub async fn start(server: Server) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, async {
                let _ = stopped.await;
            })
            .await
        });
        TestServer {
            addr,
            server,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Connects a library client as session `sid` (token `secret`).
    pub async fn client(&self, sid: u64) -> (Session, SessionEvents) {
        camp_server::client::Client::new(self.url(), TOKEN)
            .sid(sid)
            .connect()
            .await
            .expect("client connects")
    }

    /// The `wss://` URL for a server with a certificate for `localhost`.
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}/", self.addr.port())
    }

    /// Signals the server to stop without waiting for `serve` to return;
    /// panics if it already stopped.
    pub fn stop(&mut self) {
        self.stop
            .take()
            .expect("stop signalled twice")
            .send(())
            .expect("the server is still serving");
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// Forwards the sessions of `incoming` into an unbounded channel.
pub fn forward(mut incoming: Incoming) -> mpsc::UnboundedReceiver<(Session, SessionEvents)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(s) = incoming.next().await {
            let _ = tx.send(s);
        }
    });
    rx
}

/// A bare WebSocket peer that sends and reads raw CAMP frames.
pub struct RawPeer {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub sid: u64,
}

impl RawPeer {
    /// Upgrades with the given query string (no CAMP handshake).
    pub async fn upgrade(addr: SocketAddr, query: &str) -> Result<RawPeer, u16> {
        let url = format!("ws://{addr}/?{query}");
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(RawPeer { ws, sid: 0 }),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// Upgrades as session `sid` and completes the handshake.
    pub async fn connect(addr: SocketAddr, sid: u64) -> RawPeer {
        let mut peer = RawPeer::upgrade(
            addr,
            &format!("authorization=Bearer%20{TOKEN}&x-camp-sid={sid}"),
        )
        .await
        .unwrap();
        peer.sid = sid;
        let info = peer.recv().await;
        let Body::EndpointInfo {
            ack,
            version: 1,
            features,
        } = info.body
        else {
            panic!("expected ENDPOINT_INFO, got {info:?}")
        };
        assert_eq!(info.sid, sid);
        assert_eq!(features, camp_server::protocol::FEATURES);
        peer.send(Body::Ack { acked: ack }).await;
        peer.send(Body::EndpointInfo {
            ack: 0,
            version: 1,
            features: 1,
        })
        .await;
        assert_eq!(peer.recv().await.body, Body::Ack { acked: 0 });
        peer
    }

    pub async fn send(&mut self, body: Body) {
        self.send_raw(Frame::new(self.sid, body).encode().to_vec())
            .await;
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws.send(Ws::Binary(Bytes::from(bytes))).await.unwrap();
    }

    /// The next WebSocket message, within 5 s.
    pub async fn next_ws(&mut self) -> Option<Ws> {
        tokio::time::timeout(Duration::from_secs(5), self.ws.next())
            .await
            .expect("no message within 5 s")
            .map(|r| r.expect("websocket error"))
    }

    /// The next CAMP frame (skipping WebSocket pings).
    pub async fn recv(&mut self) -> Frame {
        loop {
            match self.next_ws().await {
                Some(Ws::Binary(b)) => return Frame::decode(b).expect("server sent a valid frame"),
                Some(Ws::Ping(_)) | Some(Ws::Pong(_)) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// The next frame that is not an ACK or PING_PONG.
    pub async fn recv_data(&mut self) -> Frame {
        loop {
            let f = self.recv().await;
            match f.body {
                Body::Ack { .. } | Body::Ping(PingPong::Pong) => continue,
                Body::Ping(PingPong::Ping) => continue,
                _ => return f,
            }
        }
    }

    /// Reads until the close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_ws().await {
                Some(Ws::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Ws::Close(None)) => return (1005, String::new()),
                None => panic!("connection ended without a close frame"),
                Some(_) => continue,
            }
        }
    }
}

/// A server binary started by a test, with the addresses it announced.
pub struct Spawned {
    /// The process (killed when dropped).
    pub child: tokio::process::Child,
    /// The `ws://` or `wss://` URL from its "listening on" line.
    pub url: String,
    /// The admin `host:port` from its "admin on http://" line, if it printed one.
    pub admin: Option<String>,
}

impl Spawned {
    /// The address of its `ws://` URL.
    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .parse()
            .expect("a ws://host:port/ URL")
    }
}

/// Starts the `camp-server` binary on an ephemeral loopback port (token
/// `secret`, no admin listener, warnings only) with `extra` arguments.
pub async fn spawn_server(extra: &[&str]) -> Spawned {
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--no-admin",
        "--token",
        TOKEN,
        "--log",
        "warn",
    ];
    args.extend_from_slice(extra);
    spawn_announcing(env!("CARGO_BIN_EXE_camp-server"), &args).await
}

/// Starts `program` with `args` and reads its stdout until it announces
/// the URL it listens on (`camp-server` and `camp-bench baseline` do).
pub async fn spawn_announcing(program: &str, args: &[&str]) -> Spawned {
    // The default plugin cache ($XDG_CACHE_HOME/camp-server/plugins) under
    // the target folder, not the user's home.
    spawn_announcing_with_cache(program, args, Path::new(env!("CARGO_TARGET_TMPDIR"))).await
}

/// [`spawn_announcing`] with `XDG_CACHE_HOME` set to `cache_home`.
pub async fn spawn_announcing_with_cache(
    program: &str,
    args: &[&str],
    cache_home: &Path,
) -> Spawned {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("XDG_CACHE_HOME", cache_home)
        .stderr(std::process::Stdio::inherit());
    announced(command, program).await
}

/// [`spawn_announcing`] with the program's log (its stderr) written to
/// `log`, and `RUST_LOG` unset so that its `--log` decides what is in it.
pub async fn spawn_logging_to(program: &str, args: &[&str], log: &Path) -> Spawned {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(log).expect("the log file"));
    announced(command, program).await
}

/// Starts `command` and reads its stdout until it announces its URL.
async fn announced(mut command: tokio::process::Command, program: &str) -> Spawned {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary runs");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut admin = None;
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("http://") {
                admin = Some(line[at + 7..].trim_end_matches('/').to_string());
            } else if let Some(at) = line.find("ws://").or_else(|| line.find("wss://")) {
                return line[at..].to_string();
            }
        }
        panic!("{program} ended without printing its address");
    })
    .await
    .expect("the server prints its address");
    Spawned { child, url, admin }
}

/// Waits until the server at `url` serves sessions (bearer `token`): a
/// server binary with a plugin folder answers 503 until its initial
/// plugins are loaded.
pub async fn wait_ready(url: &str, token: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match camp_server::client::Client::new(url, token).connect().await {
            Ok((session, mut events)) => {
                session.close("ready");
                let _ = events.closed().await;
                return;
            }
            Err(e) if e.to_string().contains("503") => {
                assert!(std::time::Instant::now() < deadline, "{url} never ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{url}: {e}"),
        }
    }
}

/// A folder with the example plugins (`logger`, `filter`, `rpc`: `.wasm`
/// and example `.toml`), as the README's run command uses them; installed
/// once per test run.
pub fn examples_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("example-plugins");
        camp_artifacts::install_examples(&dir).expect("install the example plugins");
        dir
    })
}

/// The small outgoing caps the backpressure tests use (64 KiB, 64 frames,
/// drop-oldest).
pub fn small_caps() -> camp_server::session::Backpressure {
    camp_server::session::Backpressure {
        high_water_mark: 64 * 1024,
        low_water_mark: 16 * 1024,
        max_queued_bytes: 64 * 1024,
        max_queue_count: 64,
        drop_policy: camp_server::session::DropPolicy::DropOldest,
    }
}

/// Open descriptors of process `pid`.
pub fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident memory of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
