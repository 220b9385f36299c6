//! The smallest CAMP server: every message goes back to its sender.
//!
//! ```sh
//! cargo run --example echo            # listens on 127.0.0.1:8080, token "secret"
//! ```

use camp_server::extension::Message;
use camp_server::server::Server;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (server, mut incoming) = Server::builder().tokens(["secret"]).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("echo on ws://{}/ (token: secret)", listener.local_addr()?);
    tokio::spawn(async move {
        while let Some((session, mut events)) = incoming.next().await {
            tokio::spawn(async move {
                while let Some(message) = events.next_message().await {
                    match message {
                        Message::Error(text) => eprintln!("session {}: {text}", session.id()),
                        // Fire and forget: nobody awaits the echo's ACK.
                        echo => session.post(echo),
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
