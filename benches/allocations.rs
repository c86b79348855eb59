//! Heap allocations per request, counted by a global allocator wrapper (`stats_alloc`), for the
//! bare service, tower-http `AddAuthorization` and `OzzobitAuth` (retry on, and `.retry(false)`),
//! with an empty body and a 1 KiB `Full` body, warm cache.
//!
//! The counts are exact and printed to stderr once per peer before the timed runs: requests are
//! built before the counting starts, and [`REQUESTS`] of them go through `poll_ready` + `call`, the
//! inner service drains the body, and the response is dropped. The timed criterion groups that
//! follow run the same loops under the counting allocator, so each allocation also costs its
//! counter updates there; use `per_request` for timing.
#![allow(missing_docs)]

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use ozzobit_auth::{AccessToken, BoxFuture, Error, OzzobitAuthLayer, TokenSource};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_http::auth::AddAuthorizationLayer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwIn0.c2ln";
const URL: &str = "https://ozzobit.com/api/api/v2/orders";
const REQUESTS: usize = 1_000;

struct Fixed;

impl TokenSource for Fixed {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async { Ok(AccessToken::new(TOKEN, Duration::from_secs(86_400))) })
    }
}

async fn drain<B: Body<Data = Bytes>>(
    req: Request<B>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let _ = black_box(req.into_body().collect().await.map(|c| c.to_bytes().len()));
    Ok(Response::new(Empty::new()))
}

fn requests<B>(n: usize, body: fn() -> B) -> Vec<Request<B>> {
    (0..n)
        .map(|_| Request::post(URL).body(body()).unwrap())
        .collect()
}

async fn call_all<S, B>(svc: &mut S, reqs: Vec<Request<B>>)
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    for req in reqs {
        let svc = svc.ready().await.unwrap();
        black_box(svc.call(black_box(req)).await.unwrap());
    }
}

/// Times `iters` requests, built in batches of 256 outside the timed stretches.
async fn timed<S, B>(mut svc: S, iters: u64, body: fn() -> B) -> Duration
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(256);
        left -= n;
        let reqs = requests(n, body);
        let start = Instant::now();
        call_all(&mut svc, reqs).await;
        total += start.elapsed();
    }
    total
}

/// Allocations, reallocations and bytes allocated per request.
fn count<S, B>(rt: &tokio::runtime::Runtime, mut svc: S, body: fn() -> B) -> (f64, f64, f64)
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    // One warm-up round, so one-time work (e.g. the first clone of a header value) is not counted.
    rt.block_on(call_all(&mut svc, requests(16, body)));
    let reqs = requests(REQUESTS, body);
    let region = Region::new(GLOBAL);
    rt.block_on(call_all(&mut svc, reqs));
    let change = region.change();
    let per = |x: usize| x as f64 / REQUESTS as f64;
    (
        per(change.allocations),
        per(change.reallocations),
        per(change.bytes_allocated),
    )
}

fn group<B>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, body: fn() -> B)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let layer = |retry: bool| {
        let layer = OzzobitAuthLayer::builder()
            .token_source(Fixed)
            .retry(retry)
            .build()
            .unwrap();
        rt.block_on(layer.token_cache().token()).unwrap();
        layer
    };
    let bare = service_fn(drain::<B>);
    let add_auth = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(service_fn(drain::<B>));
    let ours = layer(true).layer(service_fn(drain));
    let ours_no_retry = layer(false).layer(service_fn(drain));

    let print = |peer: &str, (allocs, reallocs, bytes): (f64, f64, f64)| {
        eprintln!(
            "allocations/{name:<8} {peer:<30} allocs/request {allocs:>6.2}  reallocs/request {reallocs:>5.2}  bytes/request {bytes:>8.1}"
        );
    };
    print("bare", count(rt, bare, body));
    print(
        "tower_http_add_authorization",
        count(rt, add_auth.clone(), body),
    );
    print("ozzobit_auth", count(rt, ours.clone(), body));
    print(
        "ozzobit_auth_retry_off",
        count(rt, ours_no_retry.clone(), body),
    );

    let mut g = c.benchmark_group(format!("allocations/{name}"));
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    g.bench_function(
        BenchmarkId::from_parameter("tower_http_add_authorization"),
        |b| {
            b.to_async(rt)
                .iter_custom(|iters| timed(add_auth.clone(), iters, body))
        },
    );
    g.bench_function(BenchmarkId::from_parameter("ozzobit_auth"), |b| {
        b.to_async(rt)
            .iter_custom(|iters| timed(ours.clone(), iters, body))
    });
    g.bench_function(BenchmarkId::from_parameter("ozzobit_auth_retry_off"), |b| {
        b.to_async(rt)
            .iter_custom(|iters| timed(ours_no_retry.clone(), iters, body))
    });
    g.finish();
}

fn allocations(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group(c, &rt, "empty", Empty::<Bytes>::new);
    group(c, &rt, "full_1k", || {
        Full::new(Bytes::from_static(&[b'x'; 1024]))
    });
}

criterion_group!(benches, allocations);
criterion_main!(benches);
