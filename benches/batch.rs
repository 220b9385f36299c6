//! Would batching hook calls pay? Per message, N separate async calls of a
//! hook against one async call taking the N messages as a `list<string>`
//! and returning a `list<action>`, for N = 1, 2, 4, 8, 16 messages of 64 B
//! UTF-8 (issue 12; figures and the decision in BENCHMARKS.md, "Batching
//! hook calls").
//!
//! The guest is the test-only `batch` guest (`tests/guests/batch`, world
//! `camp-bench:batch/batch`), on the plugin host's own engine, in a store
//! set up like the host's (`tests/plugin_support/batch.rs` says what is
//! replicated). Groups, each reported **per message** (criterion's time is
//! divided by N):
//!
//! - `passthrough`: pass-through hooks taking a session id (`u64`);
//! - `session`: the same given a `borrow<session>`, as the plugin world's
//!   hooks are;
//! - `scan`: a hook that reads every byte of every message;
//! - `sync`: the pass-through hooks called synchronously (a reference: the
//!   host's calls are async);
//! - `host`: for comparison, today's path of one message through the real
//!   plugin host (`passthrough` plugin): the plugin's `Extension::call`,
//!   and a one-plugin pipeline's `run`. Its excess over
//!   `passthrough/single/1` is the host's bookkeeping per call (instance
//!   checkout and checkin, the budget meter, output flush, accounting),
//!   which a batch would pay once.
//!
//! `cargo bench --bench batch -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use camp_server::extension::wasm::{HostOptions, PluginConfig, PluginHost};
use camp_server::extension::{Extension, Hook, Message, Pipeline, Verdict};
use camp_server::session::Session;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wasmtime::component::{Component, HasSelf, Linker};

#[path = "../tests/plugin_support/batch.rs"]
mod batch_host;

use batch_host::{BatchGuest, State};

/// Synchronous bindings of the same world (the reference): the types and
/// the host interface are the async bindings' own.
mod sync_bindings {
    wasmtime::component::bindgen!({
        world: "batch",
        path: "tests/guests/batch/batch.wit",
        imports: { default: trappable },
        with: {
            "camp-bench:batch/types": crate::batch_host::bindings::camp_bench::batch::types,
            "camp-bench:batch/host": crate::batch_host::bindings::camp_bench::batch::host,
        },
    });
}

/// Batch sizes measured.
const SIZES: [usize; 5] = [1, 2, 4, 8, 16];

/// The session id handed to the hooks.
const SESSION: u64 = 1;

/// `n` distinct UTF-8 messages of 64 bytes.
fn messages(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let text = format!("message {i:02} {}", "x".repeat(64));
            text[..64].to_string()
        })
        .collect()
}

/// One synchronous instance of the guest (WASI linked synchronously: a
/// store whose imports are async may only be called async).
struct SyncGuest {
    /// The instance's store.
    store: wasmtime::Store<State>,
    /// Its typed exports.
    guest: sync_bindings::Batch,
}

impl SyncGuest {
    /// Compiles and instantiates `wasm` for `engine`.
    fn new(engine: &wasmtime::Engine, wasm: &[u8]) -> wasmtime::Result<SyncGuest> {
        let component = Component::new(engine, wasm)?;
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        sync_bindings::Batch::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        let mut store = batch_host::store(engine, SESSION);
        let guest = sync_bindings::Batch::instantiate(&mut store, &component, &linker)?;
        Ok(SyncGuest { store, guest })
    }
}

fn batch(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let host = PluginHost::new(HostOptions::default()).expect("host");
    let wasm = std::fs::read(camp_artifacts::BATCH).expect("batch.wasm (camp-artifacts)");
    let mut guest = runtime
        .block_on(BatchGuest::new(host.engine(), &wasm, SESSION))
        .expect("instantiate the batch guest");
    let mut sync = SyncGuest::new(host.engine(), &wasm).expect("instantiate synchronously");

    // Each measurement runs `iters` rounds of `n` messages and reports
    // the time per message: criterion sees `iters` iterations taking
    // total / n.
    let per_message = |elapsed: Duration, n: usize| elapsed / n as u32;

    // One group: N async calls of `$single` (one message each) against
    // one of `$batch` (all N), per message.
    macro_rules! async_group {
        ($name:literal, |$texts:ident, $text:ident| $single:expr, $batch:expr) => {{
            let mut group = c.benchmark_group($name);
            for n in SIZES {
                let $texts = messages(n);
                group.bench_function(BenchmarkId::new("single", n), |b| {
                    b.iter_custom(|iters| {
                        runtime.block_on(async {
                            let started = Instant::now();
                            for _ in 0..iters {
                                for $text in &$texts {
                                    black_box($single.await.unwrap());
                                }
                            }
                            per_message(started.elapsed(), n)
                        })
                    })
                });
                group.bench_function(BenchmarkId::new("batch", n), |b| {
                    b.iter_custom(|iters| {
                        runtime.block_on(async {
                            let started = Instant::now();
                            for _ in 0..iters {
                                let actions = $batch.await.unwrap();
                                assert_eq!(actions.len(), n);
                                black_box(actions);
                            }
                            per_message(started.elapsed(), n)
                        })
                    })
                });
            }
            group.finish();
        }};
    }
    async_group!(
        "passthrough",
        |texts, text| guest.single(SESSION, text),
        guest.batch(SESSION, &texts)
    );
    async_group!(
        "session",
        |texts, text| guest.session_single(text),
        guest.session_batch(&texts)
    );
    async_group!(
        "scan",
        |texts, text| guest.scan(SESSION, text),
        guest.scan_batch(SESSION, &texts)
    );

    let mut group = c.benchmark_group("sync");
    for n in SIZES {
        let texts = messages(n);
        group.bench_function(BenchmarkId::new("single", n), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    for text in &texts {
                        sync.store.set_epoch_deadline(1);
                        let action =
                            sync.guest
                                .call_on_receive_utf8(&mut sync.store, SESSION, text);
                        black_box(action.unwrap());
                    }
                }
                per_message(started.elapsed(), n)
            })
        });
        group.bench_function(BenchmarkId::new("batch", n), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    sync.store.set_epoch_deadline(1);
                    let actions = sync
                        .guest
                        .call_on_receive_utf8_batch(&mut sync.store, SESSION, &texts)
                        .unwrap();
                    assert_eq!(actions.len(), n);
                    black_box(actions);
                }
                per_message(started.elapsed(), n)
            })
        });
    }
    group.finish();

    // Today's path through the real host, per message.
    let bytes =
        std::fs::read(camp_artifacts::PASSTHROUGH).expect("passthrough.wasm (camp-artifacts)");
    let (plugin, _) = host
        .load("passthrough", &bytes, PluginConfig::default())
        .expect("load passthrough");
    let pipeline = Pipeline::new();
    pipeline.register(plugin.clone()).unwrap();
    let (session, _outbox) = Session::detached(SESSION);
    let text = messages(1).remove(0);
    // The real host enforces the plugin's time budget (50 ms by default),
    // counting wall-clock time: on a machine loaded far beyond its cores a
    // descheduled call can run out of it. Such calls are counted and
    // reported, not fatal (their verdict is the policy's).
    let mut failed = 0u64;
    let mut group = c.benchmark_group("host");
    group.bench_function("plugin-call", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut message = Message::Utf8(text.clone());
                let started = Instant::now();
                for _ in 0..iters {
                    let verdict = plugin.call(Hook::OnReceiveUtf8, &session, &mut message);
                    if black_box(verdict.await).is_err() {
                        failed += 1;
                    }
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("pipeline", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut message = Message::Utf8(text.clone());
                let started = Instant::now();
                for _ in 0..iters {
                    let verdict = pipeline.run(Hook::OnReceiveUtf8, &session, &mut message);
                    if black_box(verdict.await) != Verdict::Pass {
                        failed += 1;
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    if failed > 0 {
        eprintln!("host: {failed} calls failed (time budget) under the machine's load");
    }
    drop(pipeline);
    host.shutdown();
}

criterion_group!(benches, batch);
criterion_main!(benches);
