//! The HTTP side of accepting a session: reading the upgrade request,
//! authentication, the session id and the subprotocol, and refusals.
//!
//! The token validator is async, but the WebSocket library's request
//! callback is not; so the request head is read and judged here first, and
//! handed to the WebSocket handshake afterwards through [`Prefixed`].
//!
//! The request head is read, and a refusal written, by the
//! [`transport`](crate::transport) module, shared with the client and the
//! admin listener.

/// Most request headers parsed (more: 431). A fixed bound of the parser,
/// whose header table lives on the stack.
pub const MAX_HEADERS: usize = 64;

use crate::metrics::Tolerated;
pub(crate) use crate::transport::{Prefixed, read_head_max};
pub use crate::transport::{Refusal, SUBPROTOCOL};

/// What an acceptable upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upgrade {
    /// The session id from `x-camp-sid`.
    pub sid: u64,
    /// Deviations the reference server accepts and we tolerated (none when
    /// strict), each with what to log.
    pub tolerated: Vec<(Tolerated, &'static str)>,
    /// The bearer token (without `Bearer `), for the validator.
    pub token: String,
    /// Whether the client offered the `camp` subprotocol (echoed back).
    pub camp_subprotocol: bool,
}

/// Judges the request head: method, upgrade headers, subprotocol,
/// authorization and session id, in that order (authentication before the
/// session id so that an unauthenticated client learns nothing about sids).
///
/// Decisions: a missing and a malformed `x-camp-sid` are both 400 (the
/// reference answers 401 for a missing one; it is not an authentication
/// problem). Query parameter names are matched case-insensitively.
pub(crate) fn check(head: &[u8], strict: bool, max_params: usize) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                "too_many_headers",
                format!("more than {MAX_HEADERS} request headers"),
            ));
        }
        _ => return Err(Refusal::new(400, "bad_request", "malformed HTTP request")),
    }
    if req.method != Some("GET") {
        return Err(Refusal::new(
            400,
            "bad_request",
            "the upgrade request must be a GET",
        ));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
    };
    let is_websocket = header("upgrade")
        .iter()
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return Err(Refusal::new(
            426,
            "not_websocket",
            "this endpoint only speaks CAMP over WebSocket",
        ));
    }
    let offered: Vec<String> = header("sec-websocket-protocol")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let camp_subprotocol = offered.iter().any(|p| p == SUBPROTOCOL);
    if !offered.is_empty() && !camp_subprotocol {
        return Err(Refusal::new(
            400,
            "subprotocol",
            format!("unsupported subprotocol; offer \"{SUBPROTOCOL}\""),
        ));
    }
    let path = req.path.unwrap_or("/");
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let params = query.split('&').filter(|kv| !kv.is_empty()).count();
    if params > max_params {
        return Err(Refusal::new(
            414,
            "too_many_params",
            format!(
                "{params} query parameters; at most {max_params} are read (limits.max_query_params)"
            ),
        ));
    }
    // Decoded with the `url` crate's form decoder (`%XX` and `+`, as the
    // reference's URLSearchParams); names matched case-insensitively.
    // Decoded once (at most `max_params` pairs, checked above).
    let pairs: Vec<_> = url::form_urlencoded::parse(query.as_bytes()).collect();
    let params_named = |name: &str| {
        pairs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let authorization = params_named("authorization")
        .into_iter()
        .next()
        .ok_or_else(|| Refusal::new(401, "no_token", "missing authorization query parameter"))?;
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::new(401, "bad_token", "authorization must be \"Bearer <token>\""))?
        .to_string();
    let mut tolerated = Vec::new();
    // `x-cryo-sid` is the parameter's former name, which the stock Node
    // client still sends; accepted unless strict.
    let mut sids = params_named("x-camp-sid");
    if sids.is_empty() && !strict {
        sids = params_named("x-cryo-sid");
        if !sids.is_empty() {
            tolerated.push((
                Tolerated::LegacySidParam,
                "x-cryo-sid instead of x-camp-sid",
            ));
        }
    }
    let Some(sid) = sids.first() else {
        return Err(Refusal::new(
            400,
            "no_sid",
            "missing x-camp-sid query parameter",
        ));
    };
    // The reference reads the first of repeated parameters; a second,
    // different sid is ambiguous (which did a proxy or the application
    // mean?), so strict mode refuses it and otherwise it is counted.
    if sids.iter().any(|other| other != sid) {
        if strict {
            return Err(Refusal::new(
                400,
                "bad_sid",
                "x-camp-sid given more than once with different values",
            ));
        }
        tolerated.push((
            Tolerated::RepeatedSidParam,
            "x-camp-sid given more than once with different values; the first is used",
        ));
    }
    let sid = sid.parse::<u64>().map_err(|_| {
        Refusal::new(
            400,
            "bad_sid",
            "x-camp-sid must be a decimal unsigned 64-bit integer",
        )
    })?;
    Ok(Upgrade {
        sid,
        token,
        camp_subprotocol,
        tolerated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn accepts_a_good_request_with_any_case_sid() {
        let up = check(
            &head("/?authorization=Bearer%20abc&x-CAMP-sid=42", ""),
            true,
            64,
        )
        .unwrap();
        assert_eq!(
            up,
            Upgrade {
                sid: 42,
                token: "abc".into(),
                camp_subprotocol: false,
                tolerated: Vec::new(),
            }
        );
        let up = check(
            &head(
                "/camp?x-camp-sid=18446744073709551615&authorization=Bearer+t%2B1",
                "Sec-WebSocket-Protocol: chat, camp\r\n",
            ),
            true,
            64,
        )
        .unwrap();
        assert_eq!(
            (up.sid, up.token.as_str(), up.camp_subprotocol),
            (u64::MAX, "t+1", true)
        );
    }

    #[test]
    fn the_former_sid_parameter_is_accepted_unless_strict() {
        let path = "/?authorization=Bearer%20a&x-cryo-sid=9";
        let up = check(&head(path, ""), false, 64).unwrap();
        assert_eq!(up.sid, 9);
        assert_eq!(up.tolerated[0].0, Tolerated::LegacySidParam);
        assert_eq!(check(&head(path, ""), true, 64).unwrap_err().status, 400);
        // Both given: x-camp-sid wins and nothing was tolerated.
        let up = check(
            &head("/?authorization=Bearer%20a&x-cryo-sid=9&x-camp-sid=3", ""),
            false,
            64,
        )
        .unwrap();
        assert_eq!((up.sid, up.tolerated.len()), (3, 0));
    }

    #[test]
    fn refusals_have_the_documented_statuses() {
        let status =
            |path: &str, extra: &str| check(&head(path, extra), true, 64).unwrap_err().status;
        assert_eq!(status("/?x-camp-sid=1", ""), 401);
        assert_eq!(status("/?authorization=Basic%20x&x-camp-sid=1", ""), 401);
        assert_eq!(status("/?authorization=Bearer%20&x-camp-sid=1", ""), 401);
        assert_eq!(status("/?authorization=Bearer%20a", ""), 400);
        assert_eq!(status("/?authorization=Bearer%20a&x-camp-sid=abc", ""), 400);
        assert_eq!(status("/?authorization=Bearer%20a&x-camp-sid=-1", ""), 400);
        assert_eq!(
            status(
                "/?authorization=Bearer%20a&x-camp-sid=18446744073709551616",
                ""
            ),
            400
        );
        assert_eq!(
            status(
                "/?authorization=Bearer%20a&x-camp-sid=1",
                "Sec-WebSocket-Protocol: chat\r\n"
            ),
            400
        );
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(check(plain, true, 64).unwrap_err().status, 426);
        assert_eq!(
            check(b"POST / HTTP/1.1\r\n\r\n", true, 64)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check(b"\x00\x01garbage\r\n\r\n", true, 64)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn heads_and_queries_are_bounded() {
        let many = (0..65)
            .map(|i| format!("p{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        let r = check(&head(&format!("/?{many}"), ""), true, 64).unwrap_err();
        assert_eq!((r.status, r.reason), (414, "too_many_params"));
        assert!(r.body.contains("limits.max_query_params"), "{}", r.body);
        let headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
        let r = check(
            &head("/?authorization=Bearer%20a&x-camp-sid=1", &headers),
            true,
            64,
        )
        .unwrap_err();
        assert_eq!((r.status, r.reason), (431, "too_many_headers"));

        let read = |bytes: Vec<u8>, max: usize| {
            let mut reader = &bytes[..];
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(read_head_max(&mut reader, max))
        };
        let long_line = format!("GET /?t={} HTTP/1.1\r\n\r\n", "a".repeat(5000)).into_bytes();
        let r = read(long_line.clone(), 4096).unwrap_err();
        assert_eq!((r.status, r.reason), (414, "uri_too_long"));
        assert!(
            r.body.contains("limits.max_request_head_bytes"),
            "{}",
            r.body
        );
        assert!(read(long_line, 8192).is_ok());
        let big_headers = head("/", &format!("X-Big: {}\r\n", "b".repeat(5000)));
        let r = read(big_headers.clone(), 4096).unwrap_err();
        assert_eq!((r.status, r.reason), (431, "head_too_large"));
        // Exactly at the limit is accepted; one byte more is not.
        let n = big_headers.len();
        assert!(read(big_headers.clone(), n).is_ok());
        assert_eq!(read(big_headers, n - 1).unwrap_err().status, 431);
    }

    #[test]
    fn query_components_are_form_decoded() {
        let up = check(
            &head("/?authorization=Bearer+a%2Bb%C3%A9&x-camp-sid=%34%32", ""),
            true,
            64,
        )
        .unwrap();
        assert_eq!((up.sid, up.token.as_str()), (42, "a+bé"));
    }

    #[test]
    fn a_repeated_sid_is_refused_when_strict_and_counted_otherwise() {
        let path = "/?authorization=Bearer%20a&x-camp-sid=5&X-CAMP-SID=6";
        let refusal = check(&head(path, ""), true, 64).unwrap_err();
        assert_eq!((refusal.status, refusal.reason), (400, "bad_sid"));
        assert!(refusal.body.contains("more than once"), "{}", refusal.body);
        let up = check(&head(path, ""), false, 64).unwrap();
        assert_eq!(up.sid, 5);
        assert_eq!(up.tolerated[0].0, Tolerated::RepeatedSidParam);
        // The same value twice is no ambiguity.
        let same = "/?authorization=Bearer%20a&x-camp-sid=5&x-camp-sid=5";
        assert!(
            check(&head(same, ""), true, 64)
                .unwrap()
                .tolerated
                .is_empty()
        );
    }

    #[test]
    fn refusal_response_is_valid_http() {
        let r = Refusal::new(409, "duplicate_sid", "session 7 is already connected").response();
        assert!(r.starts_with("HTTP/1.1 409 Conflict\r\n"));
        assert!(r.contains("Content-Length: 31\r\n"));
        assert!(r.ends_with("\r\n\r\nsession 7 is already connected\n"));
    }
}
