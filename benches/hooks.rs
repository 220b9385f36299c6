//! Cost of one hook call: a pass-through WebAssembly plugin against a
//! native Rust extension doing the same, for 64 B, 1 KiB and 64 KiB UTF-8
//! and binary messages, plus the same through a one-plugin pipeline, and
//! the hand-off a guest-thread execution model would add to every call.
//!
//! `cargo bench --bench hooks`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_server::extension::wasm::{HostOptions, PluginConfig, PluginHost};
use camp_server::extension::{Extension, Hook, HookFuture, HookSet, Message, Pipeline, Verdict};
use camp_server::session::Session;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// A native extension that passes every message unchanged.
struct NativePass;

impl Extension for NativePass {
    fn name(&self) -> &str {
        "native"
    }

    fn hooks(&self) -> HookSet {
        HookSet::ALL
    }

    fn call<'a>(&'a self, _: Hook, _: &'a Session, message: &'a mut Message) -> HookFuture<'a> {
        black_box(message);
        Box::pin(std::future::ready(Ok(Verdict::Pass)))
    }
}

/// A native extension that, like a plugin, gets its own copy of the
/// message (the plugin's unavoidable copy into linear memory).
struct NativeCopy;

impl Extension for NativeCopy {
    fn name(&self) -> &str {
        "native-copy"
    }

    fn hooks(&self) -> HookSet {
        HookSet::ALL
    }

    fn call<'a>(&'a self, _: Hook, _: &'a Session, message: &'a mut Message) -> HookFuture<'a> {
        black_box(message.clone());
        Box::pin(std::future::ready(Ok(Verdict::Pass)))
    }
}

/// Awaits `iters` calls of `call` on one copy of `message`, inside one
/// task (as a session's task awaits its hooks), and returns the time taken.
async fn timed<F, R>(iters: u64, message: &Message, mut call: F) -> Duration
where
    F: AsyncFnMut(&mut Message) -> R,
{
    let mut msg = message.clone();
    let started = Instant::now();
    for _ in 0..iters {
        black_box(call(black_box(&mut msg)).await);
    }
    started.elapsed()
}

/// Message sizes measured.
const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

fn hooks(c: &mut Criterion) {
    // Hook calls are futures, awaited on the session's task: measure them
    // on a runtime like the server's.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let host = PluginHost::new(HostOptions::default()).expect("host");
    let bytes =
        std::fs::read(camp_artifacts::PASSTHROUGH).expect("passthrough.wasm (camp-artifacts)");
    let (wasm, timings) = host
        .load("passthrough", &bytes, PluginConfig::default())
        .expect("load passthrough");
    eprintln!(
        "passthrough.wasm: compile {:?}, instantiate+register {:?}",
        timings.compile, timings.instantiate
    );
    let extensions: [(&str, Arc<dyn Extension>); 3] = [
        ("wasm", wasm.clone()),
        ("native", Arc::new(NativePass)),
        ("native-copy", Arc::new(NativeCopy)),
    ];
    let (session, _outbox) = Session::detached(1);

    for (kind, hook) in [
        ("utf8", Hook::OnReceiveUtf8),
        ("binary", Hook::OnReceiveBinary),
    ] {
        let mut group = c.benchmark_group(format!("hook-{kind}"));
        for (size, label) in SIZES {
            let message = match hook {
                Hook::OnReceiveUtf8 => Message::Utf8("x".repeat(size)),
                _ => Message::Binary(vec![7; size].into()),
            };
            group.throughput(Throughput::Bytes(size as u64));
            for (name, ext) in &extensions {
                group.bench_with_input(BenchmarkId::new(*name, label), &size, |b, _| {
                    b.iter_custom(|iters| {
                        runtime.block_on(timed(iters, &message, async |msg| {
                            ext.call(hook, &session, msg).await
                        }))
                    })
                });
            }
        }
        group.finish();
    }

    let mut group = c.benchmark_group("pipeline-utf8-64B");
    for (name, ext) in &extensions {
        let pipeline = Pipeline::new();
        pipeline.register(ext.clone()).unwrap();
        let message = Message::Utf8("x".repeat(64));
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(timed(iters, &message, async |msg| {
                    pipeline.run(Hook::OnReceiveUtf8, &session, msg).await
                }))
            })
        });
    }
    group.finish();

    // The other execution model the plugin host could use: guest calls on
    // a dedicated thread, the session's task awaiting the answer. Its extra
    // cost per call is this hand-off (an empty job to the thread and the
    // answer back), on top of the guest call itself.
    let mut group = c.benchmark_group("execution-model");
    let (jobs, inbox) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let guest_thread = std::thread::spawn(move || {
        for answer in inbox {
            let _ = answer.send(());
        }
    });
    group.bench_function("guest-thread-handoff", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    jobs.send(tx).expect("guest thread");
                    rx.await.expect("answer");
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    drop(jobs);
    guest_thread.join().expect("guest thread");
    host.shutdown();
}

criterion_group!(benches, hooks);
criterion_main!(benches);
