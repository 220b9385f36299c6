//! Property-based fuzzing of the upgrade request (proptest, on stable):
//! arbitrary bytes and generated requests (query parameters with escapes,
//! repeated and odd names, headers in any case and count) never make the
//! judge panic, what it accepts is consistent with the request, and the
//! head reader gives the same answer however the bytes are split across
//! reads. Failing inputs are kept in `proptest-regressions/`.

use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use super::upgrade::{check, read_head_max};
use crate::metrics::Tolerated;

/// Yields the given pieces, one per read.
struct Pieces(Vec<Vec<u8>>);

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(piece) = self.0.first_mut() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.0.remove(0);
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn read(pieces: Vec<Vec<u8>>, max: usize) -> Result<Vec<u8>, u16> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(read_head_max(&mut Pieces(pieces), max))
        .map(|b| b.to_vec())
        .map_err(|r| r.status)
}

/// A query component: plain, escaped, broken escapes, `+`, `=` and `&`.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._~-]{0,12}",
        "(%[0-9A-Fa-f]{2}|[a-z+]|%[g-z]?){0,8}",
        Just("Bearer%20secret".to_string()),
        Just("Bearer+x".to_string()),
        "[0-9]{1,22}",
        Just("-1".to_string()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("authorization".to_string()),
        Just("AUTHORIZATION".to_string()),
        Just("x-camp-sid".to_string()),
        Just("x-CAMP-sid".to_string()),
        Just("x-cryo-sid".to_string()),
        Just("x%2Dcamp%2Dsid".to_string()),
        component(),
    ]
}

fn query() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (name(), proptest::option::of(component())).prop_map(|(n, v)| match v {
            Some(v) => format!("{n}={v}"),
            None => n,
        }),
        0..80,
    )
    .prop_map(|params| params.join("&"))
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Upgrade: websocket".to_string()),
        Just("upgrade: WebSocket".to_string()),
        Just("Connection: Upgrade".to_string()),
        Just("Sec-WebSocket-Protocol: camp".to_string()),
        Just("Sec-WebSocket-Protocol: chat, camp".to_string()),
        Just("Sec-WebSocket-Protocol: chat".to_string()),
        Just("Sec-WebSocket-Protocol: ,".to_string()),
        "[A-Za-z-]{1,10}: [ -~]{0,20}",
    ]
}

fn request() -> impl Strategy<Value = (String, Vec<String>)> {
    (query(), proptest::collection::vec(header(), 0..80))
}

fn config() -> ProptestConfig {
    crate::protocol::proptests::fuzz_config(1024)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), strict in any::<bool>()) {
        let _ = check(&bytes, strict, 64);
    }

    #[test]
    fn generated_requests_are_judged_consistently(
        (query, headers) in request(),
        strict in any::<bool>(),
        method in prop_oneof![Just("GET"), Just("POST"), Just("get")],
    ) {
        let head = format!("{method} /?{query} HTTP/1.1\r\nHost: x\r\n{}\r\n",
            headers.iter().map(|h| format!("{h}\r\n")).collect::<String>());
        let params = query.split('&').filter(|p| !p.is_empty()).count();
        // The generated headers and Host.
        let header_count = headers.len() + 1;
        match check(head.as_bytes(), strict, 64) {
            Ok(up) => {
                prop_assert_eq!(method, "GET");
                prop_assert!(params <= 64);
                prop_assert!(header_count <= super::MAX_HEADERS);
                prop_assert!(!up.token.is_empty());
                prop_assert_eq!(up.token.trim(), up.token.as_str());
                prop_assert!(!strict || up.tolerated.is_empty());
                // The sid is the decimal value of a sid parameter.
                let sid = up.sid;
                let legacy = up.tolerated.iter().any(|t| t.0 == Tolerated::LegacySidParam);
                let name = if legacy { "x-cryo-sid" } else { "x-camp-sid" };
                prop_assert!(url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| {
                    k.eq_ignore_ascii_case(name) && v.parse::<u64>() == Ok(sid)
                }), "sid {} not in {}", sid, query);
            }
            Err(refusal) => {
                prop_assert!([400, 401, 414, 426, 431].contains(&refusal.status), "{:?}", refusal);
                prop_assert!(!refusal.body.is_empty());
                if header_count > super::MAX_HEADERS {
                    prop_assert_eq!(refusal.status, 431);
                } else if params > 64 && refusal.reason != "not_websocket"
                    && refusal.reason != "subprotocol" && method == "GET"
                {
                    // Counted before any parameter is read.
                    prop_assert_eq!(refusal.reason, "too_many_params");
                }
            }
        }
    }

    #[test]
    fn the_head_reader_does_not_care_how_bytes_arrive(
        (query, headers) in request(),
        cuts in proptest::collection::vec(1usize..64, 1..200),
        max in 1024usize..4096,
        trailer in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = format!("GET /?{query} HTTP/1.1\r\n{}\r\n",
            headers.iter().map(|h| format!("{h}\r\n")).collect::<String>()).into_bytes();
        let head_len = bytes.len();
        bytes.extend_from_slice(&trailer);
        let whole = read(vec![bytes.clone()], max);
        let mut pieces = Vec::new();
        let mut rest = &bytes[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*cut).min(rest.len());
            pieces.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        let split = read(pieces, max);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => {
                // Both end at or after the head; the head itself is intact.
                prop_assert_eq!(&a[..head_len], &bytes[..head_len]);
                prop_assert_eq!(&b[..head_len], &bytes[..head_len]);
                prop_assert!(head_len <= max);
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                prop_assert!(head_len > max);
            }
            _ => prop_assert!(false, "whole {:?} but split {:?}", whole, split),
        }
    }
}
