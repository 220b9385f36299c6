//! `camp`: the CAMP command-line client. It is how a person tries a server:
//! send a text or binary message and see the reply, print what arrives,
//! type lines and watch the answers, send a file as a stream (PUSH or
//! PULL) or receive one into a file, with a progress bar.
//!
//! Exit status: 0 success; 1 a local error (unreadable file, bad hex); 2 a
//! usage error; 3 no session (connection failed, upgrade refused, CAMP
//! handshake failed); 4 a message or file was not delivered (no ACK,
//! dropped, cancelled, session closed first); 5 the server ended the
//! session (or an incoming stream) other than gracefully; 6 timed out
//! waiting (`listen --count`, `receive`); 7 `send-text`/`send-binary
//! --expect-reply` got no reply (acknowledged by the server, then dropped,
//! e.g. by a plugin).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use camp_server::client::{Client, ClientError, ClientTls};
use camp_server::extension::Message;
use camp_server::protocol::close;
use camp_server::session::{
    CloseInfo, Delivery, Session, SessionEvent, SessionEvents, StreamOptions, WaitError,
};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::SeekFrom;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeek, AsyncWriteExt, ReadBuf};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long to wait for the server's close after saying BYE.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// How long to wait for outstanding ACKs before closing (the protocol's
/// ack timeout is 2.5 s, so every delivery is settled by then).
const ACK_WAIT: Duration = Duration::from_secs(3);

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "camp",
    version,
    about = "Command-line client for CAMP servers",
    after_help = "Exit status: 0 ok, 1 local error, 2 usage, 3 no session (refused, unreachable, \
                  handshake failed), 4 message or file not delivered, 5 session or incoming \
                  stream ended by the server with an error, 6 timed out waiting, 7 no reply \
                  with --expect-reply (e.g. dropped by a server plugin)."
)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print incoming messages as JSON lines instead of plain text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where and who to connect as.
#[derive(Debug, Args)]
struct ConnArgs {
    /// The server's URL.
    #[arg(
        long,
        env = "CAMP_URL",
        default_value = "ws://127.0.0.1:8080/",
        global = true
    )]
    url: String,
    /// The bearer token.
    #[arg(long, env = "CAMP_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The session id to ask for (default: random).
    #[arg(long, global = true)]
    sid: Option<u64>,
    /// The query parameter that carries the session id (repeatable; for
    /// the reference server add `x-CAMP-sid`).
    #[arg(long = "sid-param", default_value = "x-camp-sid", global = true)]
    sid_params: Vec<String>,
    /// Do not offer the `camp` WebSocket subprotocol.
    #[arg(long, global = true)]
    no_subprotocol: bool,
    /// For `wss://`: trust the certificate authorities in this PEM file
    /// instead of the system bundle (e.g. a self-signed test server).
    #[arg(long, global = true)]
    ca: Option<std::path::PathBuf>,
}

/// What to do once connected.
#[derive(Debug, Subcommand)]
enum Command {
    /// Send one UTF-8 message; print the replies that follow.
    SendText {
        /// The text to send.
        text: String,
        #[command(flatten)]
        replies: Replies,
    },
    /// Send one binary message (from a file or hex); print the replies.
    SendBinary {
        /// Read the payload from this file (at most 1 MiB).
        #[arg(long, conflicts_with = "hex", required_unless_present = "hex")]
        file: Option<std::path::PathBuf>,
        /// The payload as hex digits, e.g. `cafe01`.
        #[arg(long)]
        hex: Option<String>,
        #[command(flatten)]
        replies: Replies,
    },
    /// Print incoming messages until Ctrl-C, --count or --timeout-s.
    Listen {
        /// Stop after this many messages (exit 6 if the timeout comes
        /// first).
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout_s: Option<f64>,
    },
    /// Send a file as a stream (CAMP transaction), with a progress bar.
    SendFile {
        /// The file to send.
        file: std::path::PathBuf,
        /// Announce it as PULL: the server fetches the ranges it wants
        /// (default PUSH: the client sends it front to back).
        #[arg(long)]
        pull: bool,
        /// The stream's name (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Wait for a stream from the server and write it to a file.
    Receive {
        /// Only take the stream with this name (default: the first one).
        #[arg(long)]
        name: Option<String>,
        /// Where to write the bytes.
        #[arg(long)]
        out: std::path::PathBuf,
        /// How long to wait for the stream to be announced.
        #[arg(long, default_value_t = 30.0)]
        timeout_s: f64,
    },
    /// Send each line of standard input as a UTF-8 message and print
    /// replies as they come; `/bye` closes (see `/help`).
    Interactive {
        /// After the end of input, keep printing replies this long before
        /// closing.
        #[arg(long, default_value_t = 500)]
        linger_ms: u64,
    },
}

/// How long `send-*` keeps printing replies after the ACK.
#[derive(Debug, Args)]
struct Replies {
    /// Stop waiting once this many replies were printed.
    #[arg(long, default_value_t = 1)]
    replies: u64,
    /// Wait at most this long for replies after the message was
    /// acknowledged.
    #[arg(long, default_value_t = 1000)]
    wait_ms: u64,
    /// Exit with status 7 when no reply arrives within --wait-ms: an ACK
    /// means the server received the message, not that its plugins passed
    /// it on (a plugin that drops a message sends no error back).
    #[arg(long)]
    expect_reply: bool,
}

/// A failure and the exit status it maps to.
#[derive(Debug)]
struct Failure {
    /// The process exit status.
    code: u8,
    /// What went wrong, for the person at the terminal.
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Exit status 1: a local problem.
const EXIT_LOCAL: u8 = 1;
/// Exit status 3: no session.
const EXIT_CONNECT: u8 = 3;
/// Exit status 4: not delivered.
const EXIT_UNDELIVERED: u8 = 4;
/// Exit status 5: the server ended the session with an error.
const EXIT_CLOSED: u8 = 5;
/// Exit status 6: timed out waiting for messages.
const EXIT_TIMEOUT: u8 = 6;
/// Exit status 7: `--expect-reply` and no reply came (dropped on the way,
/// e.g. by a server plugin).
const EXIT_NO_REPLY: u8 = 7;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("camp: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_LOCAL);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("camp: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Check local inputs before dialing, so a typo costs no connection.
    let payload = match &cli.command {
        Command::SendBinary { file, hex, .. } => {
            Some(binary_payload(file.as_deref(), hex.as_deref())?)
        }
        _ => None,
    };
    let (session, mut events) = connect(&cli.conn).await?;
    let out = Printer { json: cli.json };
    let result = match cli.command {
        Command::SendText { text, replies } => {
            let delivery = session.send_utf8(text);
            send_and_print(&mut events, delivery, &replies, out).await
        }
        Command::SendBinary { replies, .. } => {
            let delivery = session.send_binary(payload.unwrap_or_default());
            send_and_print(&mut events, delivery, &replies, out).await
        }
        Command::Listen { count, timeout_s } => {
            listen(
                &mut events,
                count,
                timeout_s.map(Duration::from_secs_f64),
                out,
            )
            .await
        }
        Command::SendFile { file, pull, name } => send_file(&session, &file, pull, name).await,
        Command::Receive {
            name,
            out: path,
            timeout_s,
        } => {
            receive(
                &session,
                &mut events,
                name,
                &path,
                Duration::from_secs_f64(timeout_s),
                out,
            )
            .await
        }
        Command::Interactive { linger_ms } => {
            interactive(&session, &mut events, Duration::from_millis(linger_ms), out).await
        }
    };
    if !session.is_closed() {
        session.close("camp client done");
        let _ = tokio::time::timeout(CLOSE_WAIT, events.closed()).await;
    }
    result
}

/// Opens the session, mapping failures to exit status 3.
async fn connect(args: &ConnArgs) -> Result<(Session, SessionEvents), Failure> {
    let token = args
        .token
        .clone()
        .ok_or_else(|| Failure::new(2, "no token: pass --token or set CAMP_TOKEN"))?;
    let mut client = Client::new(args.url.clone(), token)
        .sid_params(args.sid_params.clone())
        .subprotocol(!args.no_subprotocol);
    if let Some(sid) = args.sid {
        client = client.sid(sid);
    }
    if let Some(path) = &args.ca {
        let pem = std::fs::read(path).map_err(|e| {
            Failure::new(EXIT_LOCAL, format!("cannot read {}: {e}", path.display()))
        })?;
        let roots = ClientTls::with_root_pem(&pem)
            .map_err(|e| Failure::new(EXIT_LOCAL, format!("{}: {e}", path.display())))?;
        client = client.tls(roots);
    }
    client.connect().await.map_err(|e| {
        let message = match &e {
            ClientError::Refused { status, body } => {
                format!(
                    "{}: server refused the upgrade with HTTP {status}: {body}",
                    args.url
                )
            }
            other => format!("{}: {other}", args.url),
        };
        Failure::new(EXIT_CONNECT, message)
    })
}

/// The payload of `send-binary`.
fn binary_payload(file: Option<&std::path::Path>, hex: Option<&str>) -> Result<Vec<u8>, Failure> {
    let bytes = match (file, hex) {
        (Some(path), _) => std::fs::read(path).map_err(|e| {
            Failure::new(EXIT_LOCAL, format!("cannot read {}: {e}", path.display()))
        })?,
        (None, Some(hex)) => parse_hex(hex).map_err(|e| Failure::new(EXIT_LOCAL, e))?,
        (None, None) => return Err(Failure::new(2, "pass --file or --hex")),
    };
    if bytes.len() > camp_server::protocol::MAX_PAYLOAD {
        return Err(Failure::new(
            EXIT_LOCAL,
            format!(
                "payload is {} bytes; a message carries at most {} (send a file as a transaction instead)",
                bytes.len(),
                camp_server::protocol::MAX_PAYLOAD
            ),
        ));
    }
    Ok(bytes)
}

/// Parses hex digits; whitespace and `:` separators are allowed.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {text:?}"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|_| format!("not hex: {text:?}"))?;
            u8::from_str_radix(s, 16).map_err(|_| format!("not hex: {s:?} in {text:?}"))
        })
        .collect()
}

/// Lower-case hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// How incoming messages are shown on standard output.
#[derive(Debug, Clone, Copy)]
struct Printer {
    /// JSON lines (`{"type":"utf8","text":…}`) instead of plain text.
    json: bool,
}

/// Binary payloads longer than this are cut in the plain-text output.
const HEX_PREVIEW: usize = 256;

impl Printer {
    fn message(&self, message: &Message) {
        println!("{}", self.format(message));
    }

    fn format(&self, message: &Message) -> String {
        if self.json {
            let value = match message {
                Message::Utf8(text) => serde_json::json!({"type": "utf8", "text": text}),
                Message::Binary(bytes) => {
                    serde_json::json!({"type": "binary", "len": bytes.len(), "hex": to_hex(bytes)})
                }
                Message::Error(text) => serde_json::json!({"type": "error", "message": text}),
            };
            return value.to_string();
        }
        match message {
            Message::Utf8(text) => text.clone(),
            Message::Binary(bytes) if bytes.len() > HEX_PREVIEW => format!(
                "[binary {} bytes] {}…",
                bytes.len(),
                to_hex(&bytes[..HEX_PREVIEW])
            ),
            Message::Binary(bytes) => format!("[binary {} bytes] {}", bytes.len(), to_hex(bytes)),
            Message::Error(text) => format!("[error] {text}"),
        }
    }
}

/// Says how a session ended on standard error and maps it to a result:
/// a graceful close (4000) is success, anything else exit status 5.
fn ended(info: &CloseInfo) -> Result<(), Failure> {
    let who = if info.by_peer { "server" } else { "client" };
    if info.code == close::GRACEFUL {
        eprintln!(
            "camp: session closed by the {who} ({}): {}",
            info.code, info.reason
        );
        Ok(())
    } else {
        Err(Failure::new(
            EXIT_CLOSED,
            format!(
                "session ended by the {who} with code {}: {}",
                info.code, info.reason
            ),
        ))
    }
}

/// Waits for the ACK of `delivery`, then prints replies until enough came
/// or the wait is over.
async fn send_and_print(
    events: &mut SessionEvents,
    delivery: Delivery,
    replies: &Replies,
    out: Printer,
) -> Result<(), Failure> {
    let mut printed = 0u64;
    let mut early = Vec::new();
    // Replies may arrive before the ACK; keep them, in order.
    let acked = delivery.acked();
    tokio::pin!(acked);
    let rtt = loop {
        tokio::select! {
            result = &mut acked => break result,
            event = events.next() => match event {
                Some(SessionEvent::Message(m)) => early.push(m),
                Some(SessionEvent::Stats(_) | SessionEvent::Stream(_)) => {}
                Some(SessionEvent::Closed(info)) => {
                    return Err(Failure::new(
                        EXIT_UNDELIVERED,
                        format!(
                            "session closed ({}: {}) before the message was acknowledged",
                            info.code, info.reason
                        ),
                    ));
                }
                None => {
                    return Err(Failure::new(EXIT_UNDELIVERED, "session closed before the message was acknowledged"));
                }
            }
        }
    };
    let rtt = rtt.map_err(|e| Failure::new(EXIT_UNDELIVERED, format!("not delivered: {e}")))?;
    eprintln!(
        "camp: delivered (ack after {:.3} ms)",
        rtt.as_secs_f64() * 1e3
    );
    for m in early {
        if printed < replies.replies {
            out.message(&m);
            printed += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_millis(replies.wait_ms);
    while printed < replies.replies {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(SessionEvent::Message(m))) => {
                out.message(&m);
                printed += 1;
            }
            Ok(Some(SessionEvent::Stats(_) | SessionEvent::Stream(_))) => {}
            Ok(Some(SessionEvent::Closed(info))) => return ended(&info),
            Ok(None) | Err(_) => break,
        }
    }
    if printed == 0 && replies.replies > 0 {
        let message = format!(
            "no reply within {} ms after the server acknowledged the message: it may have \
             been dropped by a plugin on the server (an ACK means received, not passed on)",
            replies.wait_ms
        );
        if replies.expect_reply {
            return Err(Failure::new(EXIT_NO_REPLY, message));
        }
        eprintln!("camp: {message}; --expect-reply makes this exit {EXIT_NO_REPLY}");
    }
    Ok(())
}

/// Prints incoming messages until `count` arrived, `timeout` passed, the
/// session ended or Ctrl-C.
async fn listen(
    events: &mut SessionEvents,
    count: Option<u64>,
    timeout: Option<Duration>,
    out: Printer,
) -> Result<(), Failure> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut received = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while count.is_none_or(|n| received < n) {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => match event {
                Some(SessionEvent::Message(m)) => {
                    out.message(&m);
                    received += 1;
                }
                Some(SessionEvent::Stream(stream)) => {
                    // Listening does not take streams (see `receive`):
                    // say so, and let the drop cancel it.
                    eprintln!(
                        "camp: refused stream {:?} ({}, {} bytes); use `camp receive` to take streams",
                        stream.name(),
                        stream.behaviour().name(),
                        stream.size().map_or("unknown".into(), |s| s.to_string())
                    );
                }
                Some(SessionEvent::Stats(_)) => {}
                Some(SessionEvent::Closed(info)) => return ended(&info),
                None => return Err(Failure::new(EXIT_CLOSED, "session ended")),
            },
            () = expired => {
                return match count {
                    Some(n) => Err(Failure::new(
                        EXIT_TIMEOUT,
                        format!("timed out after {received} of {n} messages"),
                    )),
                    None => Ok(()),
                };
            }
            _ = &mut ctrl_c => return Ok(()),
        }
    }
    Ok(())
}

/// Help for the interactive mode's commands.
const INTERACTIVE_HELP: &str = "lines are sent as UTF-8 messages; commands: \
/bye [reason] closes, /ping sends a CAMP ping, /hex HEX sends binary, \
/error TEXT sends an ERROR frame, /help shows this";

/// Sends each line of standard input; prints replies as they come.
async fn interactive(
    session: &Session,
    events: &mut SessionEvents,
    linger: Duration,
    out: Printer,
) -> Result<(), Failure> {
    eprintln!(
        "camp: connected as session {}; {INTERACTIVE_HELP}",
        session.id()
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut pending: JoinSet<Result<(), String>> = JoinSet::new();
    let mut undelivered = 0u64;
    let track = |pending: &mut JoinSet<Result<(), String>>, what: String, d: Delivery| {
        pending.spawn(async move {
            d.acked()
                .await
                .map(drop)
                .map_err(|e| format!("{what}: {e}"))
        });
    };
    let mut bye: Option<String> = None;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => return Err(Failure::new(EXIT_LOCAL, format!("cannot read standard input: {e}"))),
                };
                let (command, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match command {
                    "/bye" => {
                        bye = Some(if rest.is_empty() { "bye".to_string() } else { rest.to_string() });
                        break;
                    }
                    "/ping" => session.ping(),
                    "/help" => eprintln!("camp: {INTERACTIVE_HELP}"),
                    "/hex" => match parse_hex(rest) {
                        Ok(bytes) => track(&mut pending, format!("binary {rest}"), session.send_binary(bytes)),
                        Err(e) => eprintln!("camp: {e}"),
                    },
                    "/error" => track(&mut pending, format!("error {rest:?}"), session.send_error(rest)),
                    _ => track(&mut pending, format!("{line:?}"), session.send_utf8(line.clone())),
                }
            }
            Some(done) = pending.join_next(), if !pending.is_empty() => {
                undelivered += u64::from(failed_delivery(done));
            }
            event = events.next() => {
                if let Some(end) = print_event(event, &out) {
                    return end;
                }
            }
        }
    }
    // Settle the outstanding deliveries, printing replies meanwhile, then
    // linger for late replies.
    let settle_until = Instant::now() + ACK_WAIT;
    // A /bye closes without waiting for late replies.
    let linger_until = Instant::now()
        + if bye.is_some() {
            Duration::ZERO
        } else {
            linger
        };
    loop {
        let until = if pending.is_empty() {
            linger_until
        } else {
            settle_until.max(linger_until)
        };
        tokio::select! {
            Some(done) = pending.join_next(), if !pending.is_empty() => {
                undelivered += u64::from(failed_delivery(done));
            }
            event = events.next() => {
                if let Some(end) = print_event(event, &out) {
                    return end;
                }
            }
            () = tokio::time::sleep_until(until) => break,
        }
    }
    if let Some(reason) = bye {
        session.close(reason);
    }
    if undelivered > 0 {
        return Err(Failure::new(
            EXIT_UNDELIVERED,
            format!("{undelivered} messages were not delivered"),
        ));
    }
    Ok(())
}

/// Reports a delivery that failed; true when it did.
fn failed_delivery(done: Result<Result<(), String>, tokio::task::JoinError>) -> bool {
    match done {
        Ok(Err(e)) => {
            eprintln!("camp: not delivered: {e}");
            true
        }
        _ => false,
    }
}

/// Prints an incoming message; `Some` with the outcome once the session
/// ended.
fn print_event(event: Option<SessionEvent>, out: &Printer) -> Option<Result<(), Failure>> {
    match event {
        Some(SessionEvent::Message(m)) => out.message(&m),
        Some(SessionEvent::Stats(_) | SessionEvent::Stream(_)) => {}
        Some(SessionEvent::Closed(info)) => return Some(ended(&info)),
        None => return Some(Err(Failure::new(EXIT_CLOSED, "session ended"))),
    }
    None
}

/// A progress bar on standard error (hidden when it is not a terminal).
fn progress_bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// A file being sent, counting the bytes the session reads from it so the
/// progress bar follows the transfer (for PULL: the ranges the server
/// fetched).
struct Counted {
    /// The file.
    file: tokio::fs::File,
    /// The bar to advance.
    bar: ProgressBar,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.file).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.bar.inc(read as u64);
        result
    }
}

impl AsyncSeek for Counted {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

/// Sends `path` as a PUSH or PULL stream and waits until the server
/// acknowledged its end.
async fn send_file(
    session: &Session,
    path: &std::path::Path,
    pull: bool,
    name: Option<String>,
) -> Result<(), Failure> {
    let local = |e: std::io::Error| {
        Failure::new(EXIT_LOCAL, format!("cannot read {}: {e}", path.display()))
    };
    let file = tokio::fs::File::open(path).await.map_err(local)?;
    let size = file.metadata().await.map_err(local)?.len();
    let name = name.unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into())
    });
    let behaviour = if pull { "PULL" } else { "PUSH" };
    let options = if pull {
        StreamOptions::pull(name.clone())
    } else {
        StreamOptions::push(name.clone()).size(size)
    };
    let bar = progress_bar(Some(size), &format!("{name} ({behaviour})"));
    let started = Instant::now();
    let transfer = session.stream_seekable(
        Counted {
            file,
            bar: bar.clone(),
        },
        options,
    );
    let result = transfer.await;
    bar.finish_and_clear();
    let sent =
        result.map_err(|e| Failure::new(EXIT_UNDELIVERED, format!("{name} not delivered: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "camp: sent {sent} bytes as {name:?} ({behaviour}) in {secs:.3} s ({:.1} MB/s)",
        sent as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}

/// Waits for a stream (by name, or the first one) and writes it to `path`.
/// Messages that arrive meanwhile are printed.
async fn receive(
    session: &Session,
    events: &mut SessionEvents,
    name: Option<String>,
    path: &std::path::Path,
    timeout: Duration,
    out: Printer,
) -> Result<(), Failure> {
    let timed_out = || {
        Failure::new(
            EXIT_TIMEOUT,
            format!("no stream announced within {timeout:?}"),
        )
    };
    let deadline = Instant::now() + timeout;
    let named = name.clone().map(|n| session.wait_for_stream(n, timeout));
    let stream = match named {
        Some(waiting) => {
            tokio::pin!(waiting);
            loop {
                tokio::select! {
                    result = &mut waiting => break result.map_err(|e| match e {
                        WaitError::Timeout => timed_out(),
                        WaitError::Closed => Failure::new(EXIT_CLOSED, "session closed before the stream was announced"),
                    })?,
                    event = events.next() => match event {
                        Some(SessionEvent::Message(m)) => out.message(&m),
                        // Announced before the wait registered: it comes
                        // as an event instead.
                        Some(SessionEvent::Stream(stream)) if Some(stream.name()) == name.as_deref() => {
                            break stream;
                        }
                        Some(SessionEvent::Closed(info)) => {
                            ended(&info)?;
                            return Err(Failure::new(EXIT_CLOSED, "session closed before the stream was announced"));
                        }
                        Some(_) => {}
                        None => return Err(Failure::new(EXIT_CLOSED, "session ended")),
                    },
                }
            }
        }
        None => loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return Err(timed_out()),
                Ok(Some(SessionEvent::Stream(stream))) => break stream,
                Ok(Some(SessionEvent::Message(m))) => out.message(&m),
                Ok(Some(SessionEvent::Closed(info))) => {
                    ended(&info)?;
                    return Err(Failure::new(
                        EXIT_CLOSED,
                        "session closed before a stream was announced",
                    ));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(Failure::new(EXIT_CLOSED, "session ended")),
            }
        },
    };
    let stream_name = stream.name().to_string();
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| Failure::new(EXIT_LOCAL, format!("cannot create {}: {e}", path.display())))?;
    let bar = progress_bar(stream.size(), &stream_name);
    let started = Instant::now();
    let copied = copy_with_progress(stream, &mut file, &bar).await;
    bar.finish_and_clear();
    let bytes = copied.map_err(|e| match e.kind() {
        std::io::ErrorKind::WriteZero | std::io::ErrorKind::StorageFull => {
            Failure::new(EXIT_LOCAL, format!("cannot write {}: {e}", path.display()))
        }
        _ => Failure::new(EXIT_CLOSED, format!("stream {stream_name:?} failed: {e}")),
    })?;
    file.flush()
        .await
        .map_err(|e| Failure::new(EXIT_LOCAL, format!("cannot write {}: {e}", path.display())))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "camp: received {bytes} bytes of {stream_name:?} into {} in {secs:.3} s ({:.1} MB/s)",
        path.display(),
        bytes as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}

/// Copies `reader` into `file`, advancing `bar`; returns the bytes copied.
async fn copy_with_progress(
    mut reader: impl AsyncRead + Unpin,
    file: &mut tokio::fs::File,
    bar: &ProgressBar,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        file.write_all(&buf[..n]).await?;
        total += n as u64;
        bar.inc(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            parse_hex("cafe 01:ff").unwrap(),
            vec![0xca, 0xfe, 0x01, 0xff]
        );
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(to_hex(&[0, 0xab]), "00ab");
    }

    #[test]
    fn messages_print_plain_and_json() {
        let plain = Printer { json: false };
        let json = Printer { json: true };
        assert_eq!(plain.format(&Message::Utf8("hi".into())), "hi");
        assert_eq!(
            plain.format(&Message::Binary(vec![1, 2].into())),
            "[binary 2 bytes] 0102"
        );
        assert_eq!(plain.format(&Message::Error("bad".into())), "[error] bad");
        let v: serde_json::Value =
            serde_json::from_str(&json.format(&Message::Binary(vec![0xff].into()))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "binary", "len": 1, "hex": "ff"})
        );
    }
}
