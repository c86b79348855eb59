//! End to end over loopback: hyper-util's legacy client → a real hyper HTTP/1.1 server on
//! `127.0.0.1:0`, keep-alive, 32 concurrent callers, a small JSON answer. Peers side by side: the
//! bare client, tower-http `AddAuthorization` with a static bearer, and `OzzobitAuth` with a warm
//! cache. The figure is wall time per request (32 in flight), so the ratio is what the layer
//! costs a real client.
//!
//! The server runs on its own single-threaded runtime and thread, the callers and the client's
//! connection tasks on another: one core each on a 2-core machine. Before the criterion group,
//! the peers run in interleaved rounds (see `common`) and the median per-round ratio is printed.
#![allow(missing_docs)]

mod common;

use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ozzobit_auth::{AccessToken, BoxFuture, Error, OzzobitAuthLayer, TokenSource};
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwIn0.c2ln";
const CALLERS: u64 = 32;
/// Requests per peer per round of the interleaved comparison, and rounds.
const BLOCK: u64 = 3_200;
const INTERLEAVED_ROUNDS: usize = 40;
const JSON: &[u8] = br#"{"orderId":"ord_7f3a","status":"COMPLETED","fiatAmount":"100.00","cryptoAmount":"0.00151"}"#;

struct Fixed;

impl TokenSource for Fixed {
    fn fetch(&self) -> BoxFuture<'_, Result<AccessToken, Error>> {
        Box::pin(async { Ok(AccessToken::new(TOKEN, Duration::from_secs(86_400))) })
    }
}

async fn orders(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(JSON)))
        .unwrap())
}

/// Starts the server on its own thread and runtime; it lives as long as the process.
fn start_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(orders))
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// `iters` requests shared among [`CALLERS`] concurrent callers, each with its own clone of
/// `svc`; returns the wall time for all of them.
async fn drive<S>(svc: S, iters: u64, url: &str) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let n = iters / CALLERS + u64::from(i < iters % CALLERS);
            let mut svc = svc.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                for _ in 0..n {
                    let req = Request::get(url.as_str()).body(Empty::new()).unwrap();
                    let svc = svc.ready().await.unwrap();
                    let response = svc.call(black_box(req)).await.unwrap();
                    assert!(response.status().is_success());
                    black_box(response.into_body().collect().await.unwrap().to_bytes());
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    start.elapsed()
}

fn end_to_end(c: &mut Criterion) {
    let addr = start_server();
    let base_url = format!("http://{addr}");
    let url = format!("{base_url}/orders");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let auth = OzzobitAuthLayer::builder()
        .token_source(Fixed)
        .base_url(&base_url)
        .build()
        .unwrap();
    rt.block_on(auth.token_cache().token()).unwrap();

    let bare = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let add_auth = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let ours = auth.layer(Client::builder(TokioExecutor::new()).build_http());

    common::interleaved(
        "end_to_end/get_json_32_callers",
        &["bare", "tower_http_add_authorization", "ozzobit_auth"],
        INTERLEAVED_ROUNDS,
        |i| {
            let elapsed = match i {
                0 => rt.block_on(drive(bare.clone(), BLOCK, &url)),
                1 => rt.block_on(drive(add_auth.clone(), BLOCK, &url)),
                _ => rt.block_on(drive(ours.clone(), BLOCK, &url)),
            };
            elapsed / BLOCK as u32
        },
    );

    let mut g = c.benchmark_group("end_to_end/get_json_32_callers");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));

    g.bench_function(BenchmarkId::from_parameter("bare"), |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(bare.clone(), iters, &url))
    });
    g.bench_function(
        BenchmarkId::from_parameter("tower_http_add_authorization"),
        |b| {
            b.to_async(&rt)
                .iter_custom(|iters| drive(add_auth.clone(), iters, &url))
        },
    );
    g.bench_function(BenchmarkId::from_parameter("ozzobit_auth"), |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(ours.clone(), iters, &url))
    });
    g.finish();

    let stats = auth.token_cache().stats();
    assert_eq!(stats.fetches, 1, "the cache stayed warm");
    assert_eq!(stats.retries, 0, "the server never answered 401");
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
