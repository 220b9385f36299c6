//! A chat room: every text a session sends goes to every other session,
//! prefixed with the sender's name (set with `/nick NAME`, kept in the
//! session store).
//!
//! ```sh
//! cargo run --example chat            # listens on 127.0.0.1:8080, token "secret"
//! ```

use camp_server::extension::Message;
use camp_server::server::Server;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (server, mut incoming) = Server::builder().tokens(["secret"]).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("chat on ws://{}/ (token: secret)", listener.local_addr()?);
    let room = server.clone();
    tokio::spawn(async move {
        while let Some((session, mut events)) = incoming.next().await {
            let room = room.clone();
            tokio::spawn(async move {
                while let Some(message) = events.next_message().await {
                    let Message::Utf8(text) = message else {
                        continue;
                    };
                    if let Some(nick) = text.strip_prefix("/nick ") {
                        session.set("nick", nick.trim());
                        continue;
                    }
                    let nick = session
                        .get("nick")
                        .unwrap_or_else(|| format!("guest-{}", session.id()));
                    for other in room.sessions() {
                        if other != session {
                            drop(other.send_utf8(format!("{nick}: {text}")));
                        }
                    }
                }
            });
        }
    });
    server
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
