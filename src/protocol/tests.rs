//! Codec tests: the reference vectors, every malformed case, random input.

use bytes::Bytes;
use serde_json::Value;

use super::*;

const VECTORS: &str = include_str!("../../tests/data/camp-v1-frames.json");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse::<i128>().unwrap() as u64,
        Value::Number(n) => n.as_u64().unwrap(),
        other => panic!("not a number: {other}"),
    }
}

/// Builds the expected frame from a vector's decoded fields.
fn expected(fields: &Value) -> Frame {
    let f = |k: &str| num(&fields[k]);
    let s = |k: &str| fields[k].as_str().unwrap().to_string();
    let ack = || f("ack") as u32;
    let body = match f("type") as u8 {
        0xff => Body::EndpointInfo {
            ack: ack(),
            version: f("version") as u32,
            features: f("features"),
        },
        0xfe => Body::Bye {
            ack: ack(),
            reason: s("reason"),
        },
        0xfd => Body::Ack {
            acked: f("acked_ack") as u32,
        },
        0xfc => Body::Error {
            ack: ack(),
            message: s("payload"),
        },
        0xfb => Body::Ping(match s("payload").as_str() {
            "ping" => PingPong::Ping,
            _ => PingPong::Pong,
        }),
        0xfa => Body::Utf8 {
            ack: ack(),
            text: s("payload"),
        },
        0xf9 => Body::Binary {
            ack: ack(),
            data: hex(&s("payload_hex")).into(),
        },
        0x00 => Body::TxStart {
            ack: ack(),
            tx_id: f("tx_id") as u32,
            size: f("size") as i64,
            behaviour: if f("behaviour") == 0 {
                Behaviour::Push
            } else {
                Behaviour::Pull
            },
            name: s("name"),
        },
        0x01 => Body::TxChunk {
            tx_id: f("tx_id") as u32,
            offset: f("offset"),
            data: hex(&s("payload_hex")).into(),
        },
        0x02 => Body::TxFinish {
            ack: ack(),
            tx_id: f("tx_id") as u32,
        },
        0x03 => Body::TxFetch {
            ack: ack(),
            tx_id: f("tx_id") as u32,
            start: f("start"),
            end: f("end"),
        },
        0x04 => Body::TxCancel {
            ack: ack(),
            tx_id: f("tx_id") as u32,
        },
        other => panic!("vector with unknown type {other}"),
    };
    Frame::new(f("sid"), body)
}

fn vectors() -> Vec<(String, Vec<u8>, Frame)> {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                hex(v["hex"].as_str().unwrap()),
                expected(&v["fields"]),
            )
        })
        .collect()
}

#[test]
fn vendored_vectors_match_shared_copy() {
    // The repository carries a copy so that it builds alone; when the shared
    // folder is beside it (developers and CI), the copy must be identical.
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/camp-v1-frames.json"
    );
    if let Ok(text) = std::fs::read_to_string(shared) {
        assert_eq!(text, VECTORS, "tests/data copy differs from {shared}");
    }
}

#[test]
fn every_vector_decodes_to_its_fields_and_reencodes_exactly() {
    let all = vectors();
    assert_eq!(all.len(), 14, "one vector per frame layout");
    let mut types = std::collections::HashSet::new();
    for (name, bytes, frame) in all {
        let decoded = Frame::decode(Bytes::from(bytes.clone()))
            .unwrap_or_else(|e| panic!("{name}: decode failed: {e}"));
        assert_eq!(decoded, frame, "{name}: decoded fields");
        assert_eq!(frame.encode().as_ref(), &bytes[..], "{name}: encoding");
        assert_eq!(frame.encoded_len(), bytes.len(), "{name}: encoded_len");
        types.insert(frame.body.frame_type());
    }
    assert_eq!(types.len(), 12, "all twelve frame types are covered");
}

fn err(bytes: &[u8]) -> FrameError {
    Frame::decode(Bytes::copy_from_slice(bytes)).unwrap_err()
}

fn header(ty: u8) -> Vec<u8> {
    let mut v = 7u64.to_be_bytes().to_vec();
    v.push(ty);
    v
}

#[test]
fn truncated_frames_are_rejected() {
    assert!(matches!(
        err(&[1, 2, 3]),
        FrameError::Truncated {
            len: 3,
            need: 9,
            ..
        }
    ));
    assert!(matches!(err(&[]), FrameError::Truncated { len: 0, .. }));
    for (ty, need) in [
        (0xff, 25),
        (0xfe, 13),
        (0xfd, 13),
        (0xfc, 13),
        (0xfa, 13),
        (0xf9, 13),
        (0x00, 26),
        (0x01, 21),
        (0x02, 17),
        (0x03, 33),
        (0x04, 17),
    ] {
        let mut f = header(ty);
        f.resize(need - 1, 0);
        match err(&f) {
            FrameError::Truncated { need: n, len, .. } => {
                assert_eq!((n, len), (need, need - 1), "type {ty:#x}")
            }
            other => panic!("type {ty:#x}: {other:?}"),
        }
    }
}

#[test]
fn fixed_size_frames_reject_trailing_bytes() {
    for (ty, need) in [(0xff, 25), (0xfd, 13), (0x02, 17), (0x03, 33), (0x04, 17)] {
        let mut f = header(ty);
        f.resize(need + 1, 0);
        assert_eq!(
            err(&f),
            FrameError::WrongLength {
                kind: FrameType::from_byte(ty).unwrap().name(),
                len: need + 1,
                need
            }
        );
    }
}

#[test]
fn unknown_types_are_rejected() {
    for ty in 0x05..=0xf8u8 {
        let mut f = header(ty);
        f.extend_from_slice(&[0; 30]);
        assert_eq!(err(&f), FrameError::UnknownType(ty));
    }
}

#[test]
fn payload_limit_is_exactly_one_mebibyte() {
    for ty in [0xfa, 0xf9, 0xfc] {
        let mut ok = header(ty);
        ok.extend_from_slice(&[0; 4]);
        ok.resize(13 + MAX_PAYLOAD, b'a');
        assert!(Frame::decode(Bytes::from(ok.clone())).is_ok());
        ok.push(b'a');
        assert!(matches!(
            err(&ok),
            FrameError::PayloadTooLarge { len, max: MAX_PAYLOAD, .. } if len == MAX_PAYLOAD + 1
        ));
    }
    let mut chunk = header(0x01);
    chunk.resize(21 + MAX_PAYLOAD + 1, 0);
    assert!(matches!(err(&chunk), FrameError::PayloadTooLarge { .. }));
    assert_eq!(MAX_FRAME, 21 + MAX_PAYLOAD);
}

#[test]
fn name_limit_is_one_kibibyte() {
    let mut f = header(0x00);
    f.extend_from_slice(&[0; 17]);
    f.resize(26 + MAX_NAME, b'n');
    assert!(Frame::decode(Bytes::from(f.clone())).is_ok());
    f.push(b'n');
    assert_eq!(err(&f), FrameError::NameTooLong(MAX_NAME + 1));
}

#[test]
fn invalid_utf8_is_rejected_where_text_is_required() {
    for ty in [0xfa, 0xfc, 0xfe, 0x00] {
        let mut f = header(ty);
        f.resize(if ty == 0 { 26 } else { 13 }, 0);
        f.extend_from_slice(&[0xc3, 0x28]);
        assert!(
            matches!(err(&f), FrameError::InvalidUtf8(_)),
            "type {ty:#x}"
        );
    }
    // Binary payloads carry any bytes.
    let mut b = header(0xf9);
    b.extend_from_slice(&[0, 0, 0, 0, 0xc3, 0x28]);
    assert!(Frame::decode(Bytes::from(b)).is_ok());
}

#[test]
fn ping_payload_must_be_ping_or_pong() {
    for bad in [&b"pinG"[..], b"pin", b"pongs", b"", b"PING"] {
        let mut f = header(0xfb);
        f.extend_from_slice(bad);
        assert_eq!(err(&f), FrameError::BadPing, "{bad:?}");
    }
}

#[test]
fn transaction_start_checks_behaviour_and_size() {
    let start = |size: i64, behaviour: u8| {
        let mut f = header(0x00);
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(&2u32.to_be_bytes());
        f.extend_from_slice(&size.to_be_bytes());
        f.push(behaviour);
        f
    };
    assert_eq!(err(&start(10, 2)), FrameError::BadBehaviour(2));
    assert!(matches!(
        err(&start(-1, 1)),
        FrameError::BadSize { size: -1, .. }
    ));
    assert!(matches!(
        err(&start(-2, 0)),
        FrameError::BadSize { size: -2, .. }
    ));
    let ok = Frame::decode(Bytes::from(start(-1, 0))).unwrap();
    assert!(
        matches!(ok.body, Body::TxStart { size: -1, behaviour: Behaviour::Push, ref name, .. } if name.is_empty())
    );
}

#[test]
fn bye_reason_is_optional() {
    let mut f = header(0xfe);
    f.extend_from_slice(&9u32.to_be_bytes());
    let frame = Frame::decode(Bytes::from(f.clone())).unwrap();
    assert_eq!(
        frame.body,
        Body::Bye {
            ack: 9,
            reason: String::new()
        }
    );
    assert_eq!(frame.encode().as_ref(), &f[..]);
}

#[test]
fn binary_payloads_are_zero_copy() {
    let (_, bytes, _) = vectors().into_iter().find(|v| v.0 == "binarydata").unwrap();
    let msg = Bytes::from(bytes);
    let frame = Frame::decode(msg.clone()).unwrap();
    let Body::Binary { data, .. } = frame.body else {
        panic!()
    };
    assert_eq!(data.as_ptr(), msg[13..].as_ptr());
}

/// A small deterministic generator so the random test is reproducible.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mutated_input_never_panics_and_valid_frames_round_trip() {
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    let seeds: Vec<Vec<u8>> = vectors().into_iter().map(|v| v.1).collect();
    let (mut ok, mut bad) = (0, 0);
    for i in 0..200_000 {
        let msg: Vec<u8> = if i % 2 == 0 {
            let len = (rng.next() % 64) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias the type byte towards real frame types.
            if len > 8 && rng.next().is_multiple_of(2) {
                m[8] = FrameType::ALL[(rng.next() % 12) as usize] as u8;
            }
            m
        } else {
            let mut m = seeds[(rng.next() % seeds.len() as u64) as usize].clone();
            for _ in 0..(rng.next() % 4) {
                match rng.next() % 3 {
                    0 if !m.is_empty() => {
                        let at = (rng.next() % m.len() as u64) as usize;
                        m[at] = rng.next() as u8;
                    }
                    1 if !m.is_empty() => {
                        m.truncate((rng.next() % m.len() as u64) as usize);
                    }
                    _ => m.push(rng.next() as u8),
                }
            }
            m
        };
        match Frame::decode(Bytes::from(msg.clone())) {
            Ok(frame) => {
                ok += 1;
                assert_eq!(
                    frame.encode().as_ref(),
                    &msg[..],
                    "round trip of {msg:02x?}"
                );
            }
            Err(e) => {
                bad += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(ok > 1_000 && bad > 1_000, "ok={ok} bad={bad}");
}
