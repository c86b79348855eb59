//! Per-request overhead with a warm cache: a bare service, tower-http `AddAuthorization` with a
//! static bearer (the floor for "add a header"), and `OzzobitAuth`, side by side in one group per
//! body shape. Every inner service drains the request body, as a real client would.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use ozzobit_auth::{AccessToken, BoxFuture, Error, OzzobitAuthLayer, TokenSource};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwIn0.c2ln";

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

/// Times `iters` requests through `svc`, each readied then called, as a client would.
async fn run<S, B>(mut svc: S, iters: u64, body: fn() -> B) -> Duration
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let start = std::time::Instant::now();
    for _ in 0..iters {
        let req = Request::post("https://ozzobit.com/api/api/v2/orders")
            .body(body())
            .unwrap();
        let svc = svc.ready().await.unwrap();
        black_box(svc.call(black_box(req)).await.unwrap());
    }
    start.elapsed()
}

fn group<B>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, body: fn() -> B)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let mut g = c.benchmark_group(format!("per_request/{name}"));
    let auth = OzzobitAuthLayer::builder()
        .token_source(Fixed)
        .build()
        .unwrap();
    rt.block_on(auth.token_cache().token()).unwrap();

    let bare = service_fn(drain::<B>);
    g.bench_function(BenchmarkId::from_parameter("bare"), |b| {
        b.to_async(rt).iter_custom(|iters| run(bare, iters, body))
    });
    let add_auth = AddAuthorizationLayer::bearer(TOKEN).layer(service_fn(drain::<B>));
    g.bench_function(
        BenchmarkId::from_parameter("tower_http_add_authorization"),
        |b| {
            b.to_async(rt)
                .iter_custom(|iters| run(add_auth.clone(), iters, body))
        },
    );
    let ours = auth.layer(service_fn(drain));
    g.bench_function(BenchmarkId::from_parameter("ozzobit_auth"), |b| {
        b.to_async(rt)
            .iter_custom(|iters| run(ours.clone(), iters, body))
    });
    g.finish();
}

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group(c, &rt, "empty", Empty::<Bytes>::new);
    group(c, &rt, "full_1k", || {
        Full::new(Bytes::from_static(&[b'x'; 1024]))
    });
    group(c, &rt, "stream_64k", chunks_64k);
}

criterion_group!(benches, per_request);
criterion_main!(benches);
