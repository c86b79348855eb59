//! Throughput of 1, 2, 8 and 64 tasks sharing one layer (each task owns a clone of one service)
//! on a multi-thread runtime: `OzzobitAuth` with a warm cache against tower-http
//! `AddAuthorization`. The figure is wall time per request over all tasks, so a layer whose
//! shared state (the cached token, its counters) bounces between cores shows up as a ratio that
//! grows with the number of tasks.
//!
//! The runtime has one worker per core (2 here), so at most two tasks run at once: 8 and 64 tasks
//! measure the same shared layer under task switching, not more parallelism. The inner service
//! completes at once, as a client whose connection is ready would, and each request is built
//! from a per-task URI template (an atomic increment, no parse), inside the timed loop for both.
//! Before the criterion group, the peers run in interleaved rounds (see `common`) per task count
//! and the median per-round ratio is printed.
#![allow(missing_docs)]

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response, Uri};
use http_body_util::Empty;
use ozzobit_auth::{AccessToken, BoxFuture, Error, OzzobitAuthLayer, TokenSource};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwIn0.c2ln";
const URL: &str = "https://ozzobit.com/api/api/v2/orders";
const TASKS: [u64; 4] = [1, 2, 8, 64];
/// Requests per peer per round of the interleaved comparison, and rounds.
const BLOCK: u64 = 20_000;
const INTERLEAVED_ROUNDS: usize = 30;

struct Fixed;

impl TokenSource for Fixed {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async { Ok(AccessToken::new(TOKEN, Duration::from_secs(86_400))) })
    }
}

async fn inner<B>(req: Request<B>) -> Result<Response<Empty<Bytes>>, Infallible> {
    black_box(req);
    Ok(Response::new(Empty::new()))
}

/// `iters` requests split among `tasks` tasks, each with its own clone of `svc`.
async fn run<S>(svc: S, tasks: u64, iters: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let n = iters / tasks + u64::from(i < iters % tasks);
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let uri: Uri = URL.parse().unwrap();
                for _ in 0..n {
                    let mut req = Request::new(Empty::new());
                    *req.method_mut() = Method::POST;
                    *req.uri_mut() = uri.clone();
                    let svc = svc.ready().await.unwrap();
                    black_box(svc.call(black_box(req)).await.unwrap());
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = OzzobitAuthLayer::builder()
        .token_source(Fixed)
        .build()
        .unwrap();
    rt.block_on(auth.token_cache().token()).unwrap();
    let ours = auth.layer(service_fn(inner));
    let add_auth = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(service_fn(inner));

    for tasks in TASKS {
        common::interleaved(
            &format!("contention/shared_layer/{tasks}"),
            &["tower_http_add_authorization", "ozzobit_auth"],
            INTERLEAVED_ROUNDS,
            |i| {
                let elapsed = match i {
                    0 => rt.block_on(run(add_auth.clone(), tasks, BLOCK)),
                    _ => rt.block_on(run(ours.clone(), tasks, BLOCK)),
                };
                elapsed / BLOCK as u32
            },
        );
    }

    let mut g = c.benchmark_group("contention/shared_layer");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2));
    for tasks in TASKS {
        g.bench_function(
            BenchmarkId::new("tower_http_add_authorization", tasks),
            |b| {
                b.to_async(&rt)
                    .iter_custom(|iters| run(add_auth.clone(), tasks, iters))
            },
        );
        g.bench_function(BenchmarkId::new("ozzobit_auth", tasks), |b| {
            b.to_async(&rt)
                .iter_custom(|iters| run(ours.clone(), tasks, iters))
        });
    }
    g.finish();
    assert_eq!(
        auth.token_cache().stats().fetches,
        1,
        "the cache stayed warm"
    );
}

criterion_group!(benches, contention);
criterion_main!(benches);
