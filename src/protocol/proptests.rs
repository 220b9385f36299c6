//! Property-based fuzzing of the codec (proptest, on stable): every frame
//! the codec can express survives encode and decode unchanged; arbitrary
//! bytes, and valid frames with bytes flipped, cut or appended, never make
//! the decoder panic, and whatever it accepts re-encodes to the same bytes.
//! Failing inputs are shrunk and kept in `proptest-regressions/` (checked
//! in, replayed first on every run).

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// Text of up to `max` bytes, ASCII and multi-byte characters mixed.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::char::range('\u{20}', '\u{7e}'),
            1 => proptest::char::range('\u{80}', '\u{7ff}'),
            1 => proptest::char::range('\u{800}', '\u{ffff}'),
            1 => proptest::char::range('\u{10000}', '\u{10ffff}'),
        ],
        0..max / 4,
    )
    .prop_map(|chars| chars.into_iter().collect::<String>())
}

fn data(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Every body the protocol can carry (payload sizes kept small).
pub(crate) fn body() -> impl Strategy<Value = Body> {
    let behaviour = prop_oneof![Just(Behaviour::Push), Just(Behaviour::Pull)];
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(ack, version, features)| {
            Body::EndpointInfo {
                ack,
                version,
                features,
            }
        }),
        (any::<u32>(), text(64)).prop_map(|(ack, reason)| Body::Bye { ack, reason }),
        any::<u32>().prop_map(|acked| Body::Ack { acked }),
        (any::<u32>(), text(64)).prop_map(|(ack, message)| Body::Error { ack, message }),
        prop_oneof![Just(PingPong::Ping), Just(PingPong::Pong)].prop_map(Body::Ping),
        (any::<u32>(), text(256)).prop_map(|(ack, text)| Body::Utf8 { ack, text }),
        (any::<u32>(), data(256)).prop_map(|(ack, data)| Body::Binary { ack, data }),
        (
            any::<u32>(),
            any::<u32>(),
            -1i64..=i64::MAX,
            behaviour,
            text(MAX_NAME)
        )
            .prop_map(|(ack, tx_id, size, behaviour, name)| Body::TxStart {
                ack,
                tx_id,
                // PULL needs a known size.
                size: if behaviour == Behaviour::Pull {
                    size.max(0)
                } else {
                    size
                },
                behaviour,
                name,
            }),
        (any::<u32>(), any::<u64>(), data(256)).prop_map(|(tx_id, offset, data)| {
            Body::TxChunk {
                tx_id,
                offset,
                data,
            }
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(ack, tx_id)| Body::TxFinish { ack, tx_id }),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(ack, tx_id, start, end)| Body::TxFetch {
                ack,
                tx_id,
                start,
                end,
            }
        ),
        (any::<u32>(), any::<u32>()).prop_map(|(ack, tx_id)| Body::TxCancel { ack, tx_id }),
    ]
}

/// A change to an encoded frame.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Append(Vec<u8>),
    SetType(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        any::<usize>().prop_map(Mutation::Cut),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
        any::<u8>().prop_map(Mutation::SetType),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(at, b) if !bytes.is_empty() => {
            let i = at % bytes.len();
            bytes[i] ^= b | 1;
        }
        Mutation::Cut(at) if !bytes.is_empty() => bytes.truncate(at % bytes.len()),
        Mutation::Append(more) => bytes.extend_from_slice(more),
        Mutation::SetType(t) if bytes.len() > 8 => bytes[8] = *t,
        _ => {}
    }
}

/// Decodes `bytes`: never a panic; an accepted frame re-encodes to them.
fn decode_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = Frame::decode(Bytes::copy_from_slice(bytes)) {
        let encoded = frame.encode();
        prop_assert_eq!(encoded.as_ref(), bytes);
        prop_assert_eq!(frame.encoded_len(), bytes.len());
    }
    Ok(())
}

fn config() -> ProptestConfig {
    fuzz_config(2048)
}

/// The crate's property-test settings: `default_cases` cases
/// (`CAMP_FUZZ_CASES=N` for a longer hunt), failures kept beside the
/// source in `regressions/`.
pub(crate) fn fuzz_config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("CAMP_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_cases),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_frame_round_trips(sid in any::<u64>(), body in body()) {
        let frame = Frame::new(sid, body);
        let bytes = frame.encode();
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        let decoded = Frame::decode(bytes.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        decode_checked(&bytes)?;
    }

    #[test]
    fn mutated_frames_never_panic(
        sid in any::<u64>(),
        body in body(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = Frame::new(sid, body).encode().to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        decode_checked(&bytes)?;
    }
}
