//! Per-request overhead with a warm cache: a bare service, tower-http `AddAuthorization` with a
//! static bearer (the floor for "add a header"), and `OzzobitAuth`, side by side in one group per
//! body shape. Every inner service drains the request body, as a real client would.
//!
//! Requests are built outside the timed region (in batches of [`BATCH`]), each with a freshly
//! parsed URI as user code builds them, so the figures are the cost of the service stack alone:
//! `poll_ready`, `call`, the inner service draining the body, and dropping the response.
//! `ozzobit_auth_retry_off` is the layer built with `.retry(false)`: no head copy and no body
//! recording, which isolates what the 401 retry costs.
//!
//! Before each criterion group, the same peers run in interleaved rounds (see `common`), and the
//! median per-round ratio ours / peer is printed to stderr: on a shared machine that figure is
//! steadier than the ratio of two criterion means measured seconds apart.
#![allow(missing_docs)]

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use ozzobit_auth::{AccessToken, BoxFuture, Error, OzzobitAuthLayer, TokenSource};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwIn0.c2ln";
const URL: &str = "https://ozzobit.com/api/api/v2/orders";
/// Requests built ahead of each timed stretch.
const BATCH: usize = 256;
/// Rounds of the interleaved comparison printed before each group.
const INTERLEAVED_ROUNDS: usize = 40;

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

fn chunks_64k() -> StreamBody<futures_stream::Iter> {
    StreamBody::new(futures_stream::Iter::new(64, Bytes::from(vec![b'x'; 1024])))
}

/// A minimal stream of `n` equal frames, so the bench needs no futures crate.
mod futures_stream {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;

    pub(crate) struct Iter {
        left: usize,
        chunk: Bytes,
    }

    impl Iter {
        pub(crate) fn new(n: usize, chunk: Bytes) -> Self {
            Self { left: n, chunk }
        }
    }

    impl futures_core::Stream for Iter {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.left, Some(self.left))
        }
    }
}

/// Times `iters` requests through `svc`, each readied then called, as a client would. Only the
/// service calls are timed; the requests of each batch are built before its clock starts.
async fn run<S, B>(mut svc: S, iters: u64, body: fn() -> B) -> Duration
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut batch = Vec::with_capacity(BATCH);
    while left > 0 {
        let n = left.min(BATCH as u64);
        left -= n;
        batch.extend((0..n).map(|_| Request::post(URL).body(body()).unwrap()));
        let start = Instant::now();
        for req in batch.drain(..) {
            let svc = svc.ready().await.unwrap();
            black_box(svc.call(black_box(req)).await.unwrap());
        }
        total += start.elapsed();
    }
    total
}

/// How many bytes a caller moves around for each request's response future.
fn future_size<S: Service<Request<B>>, B>(_: &S) -> usize {
    std::mem::size_of::<S::Future>()
}

fn group<B>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    body: fn() -> B,
    block: u64,
) where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let mut g = c.benchmark_group(format!("per_request/{name}"));
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let auth = OzzobitAuthLayer::builder()
        .token_source(Fixed)
        .build()
        .unwrap();
    rt.block_on(auth.token_cache().token()).unwrap();
    let no_retry = OzzobitAuthLayer::builder()
        .token_source(Fixed)
        .retry(false)
        .build()
        .unwrap();
    rt.block_on(no_retry.token_cache().token()).unwrap();

    let bare = service_fn(drain::<B>);
    // Marked sensitive like ours, so both insert the same kind of header.
    let add_auth = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(service_fn(drain::<B>));
    let ours = auth.layer(service_fn(drain));
    let ours_no_retry = no_retry.layer(service_fn(drain));
    eprintln!(
        "per_request/{name}: response future size in bytes: bare {}, tower_http_add_authorization {}, ozzobit_auth {}",
        future_size(&bare),
        future_size(&add_auth),
        future_size(&ours),
    );
    common::interleaved(
        &format!("per_request/{name}"),
        &[
            "bare",
            "tower_http_add_authorization",
            "ozzobit_auth",
            "ozzobit_auth_retry_off",
        ],
        INTERLEAVED_ROUNDS,
        |i| {
            let elapsed = match i {
                0 => rt.block_on(run(bare, block, body)),
                1 => rt.block_on(run(add_auth.clone(), block, body)),
                2 => rt.block_on(run(ours.clone(), block, body)),
                _ => rt.block_on(run(ours_no_retry.clone(), block, body)),
            };
            elapsed / block as u32
        },
    );

    g.bench_function(BenchmarkId::from_parameter("bare"), |b| {
        b.to_async(rt).iter_custom(|iters| run(bare, iters, body))
    });
    g.bench_function(
        BenchmarkId::from_parameter("tower_http_add_authorization"),
        |b| {
            b.to_async(rt)
                .iter_custom(|iters| run(add_auth.clone(), iters, body))
        },
    );
    g.bench_function(BenchmarkId::from_parameter("ozzobit_auth"), |b| {
        b.to_async(rt)
            .iter_custom(|iters| run(ours.clone(), iters, body))
    });
    g.bench_function(BenchmarkId::from_parameter("ozzobit_auth_retry_off"), |b| {
        b.to_async(rt)
            .iter_custom(|iters| run(ours_no_retry.clone(), iters, body))
    });
    g.finish();
    assert_eq!(
        auth.token_cache().stats().fetches,
        1,
        "the cache stayed warm"
    );
}

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group(c, &rt, "empty", Empty::<Bytes>::new, 20_000);
    group(
        c,
        &rt,
        "full_1k",
        || Full::new(Bytes::from_static(&[b'x'; 1024])),
        20_000,
    );
    group(c, &rt, "stream_64k", chunks_64k, 1_000);
}

criterion_group!(benches, per_request);
criterion_main!(benches);
