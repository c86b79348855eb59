//! Callers dropped at every await point leave no stuck state: the fetch they started finishes,
//! and the next request is served at once.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Scripted, layer_with, settle};
use http::{Request, Response, header};
use http_body_util::Empty;
use ozzobit_auth::{BoxError, ReplayBody};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Req = Request<ReplayBody<Empty<Bytes>>>;
type Res = Response<Empty<Bytes>>;

fn res(status: u16) -> Res {
    Response::builder()
        .status(status)
        .body(Empty::new())
        .unwrap()
}

async fn next(handle: &mut mock::Handle<Req, Res>) -> (Req, mock::SendResponse<Res>) {
    tokio::time::timeout(Duration::from_secs(60), handle.next_request())
        .await
        .expect("the inner service got no request")
        .expect("the service was dropped")
}

struct Fixture {
    source: std::sync::Arc<Scripted>,
    layer: ozzobit_auth::OzzobitAuthLayer,
    svc: ozzobit_auth::OzzobitAuth<mock::Mock<Req, Res>>,
    handle: mock::Handle<Req, Res>,
}

fn fixture() -> Fixture {
    let source = Scripted::new(Duration::from_secs(3600));
    source.set_latency(Duration::from_secs(1));
    let layer = layer_with(&source, |b| b);
    let (inner, mut handle) = mock::pair::<Req, Res>();
    handle.allow(100);
    let svc = layer.layer(inner);
    Fixture {
        source,
        layer,
        svc,
        handle,
    }
}

fn spawn_call(
    svc: &ozzobit_auth::OzzobitAuth<mock::Mock<Req, Res>>,
) -> tokio::task::JoinHandle<Result<Res, BoxError>> {
    tokio::spawn(
        svc.clone()
            .oneshot(Request::get("/orders").body(Empty::new()).unwrap()),
    )
}

/// After the cancellations: a request goes through with generation `want`, without waiting for
/// any fetch (the cache is not stuck in "fetching").
async fn next_request_works(f: &mut Fixture, want: &str) {
    let call = spawn_call(&f.svc);
    let (req, reply) = next(&mut f.handle).await;
    assert_eq!(req.headers()[header::AUTHORIZATION], want);
    reply.send_response(res(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn dropped_while_waiting_for_the_token() {
    let mut f = fixture();
    let callers: Vec<_> = (0..5).map(|_| spawn_call(&f.svc)).collect();
    settle().await;
    callers.iter().for_each(|c| c.abort());
    advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(f.source.fetches(), 1);
    next_request_works(&mut f, "Bearer tok-1").await;
    assert_eq!(f.source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropped_during_the_inner_call() {
    let mut f = fixture();
    f.layer.token_cache().token().await.unwrap();
    let caller = spawn_call(&f.svc);
    let (_req, reply) = next(&mut f.handle).await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    drop(reply);
    next_request_works(&mut f, "Bearer tok-1").await;
    assert_eq!(f.source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropped_while_the_retry_waits_for_the_refresh() {
    let mut f = fixture();
    f.layer.token_cache().token().await.unwrap();
    let caller = spawn_call(&f.svc);
    let (_req, reply) = next(&mut f.handle).await;
    reply.send_response(res(401));
    settle().await; // now refreshing (1 s)
    caller.abort();
    advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(
        f.source.fetches(),
        2,
        "the refresh finished without its caller"
    );
    next_request_works(&mut f, "Bearer tok-2").await;
    assert_eq!(f.source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropped_while_the_retry_waits_for_readiness() {
    let mut f = fixture();
    f.layer.token_cache().token().await.unwrap();
    f.handle.allow(1);
    let caller = spawn_call(&f.svc);
    let (_req, reply) = next(&mut f.handle).await;
    reply.send_response(res(401));
    advance(Duration::from_secs(1)).await;
    settle().await; // refreshed; the retry now waits for capacity
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    f.handle.allow(10);
    next_request_works(&mut f, "Bearer tok-2").await;
    assert_eq!(f.source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropped_during_the_retried_call() {
    let mut f = fixture();
    f.layer.token_cache().token().await.unwrap();
    let caller = spawn_call(&f.svc);
    let (_req, reply) = next(&mut f.handle).await;
    reply.send_response(res(401));
    advance(Duration::from_secs(1)).await;
    let (retry, _reply) = next(&mut f.handle).await;
    assert_eq!(retry.headers()[header::AUTHORIZATION], "Bearer tok-2");
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    next_request_works(&mut f, "Bearer tok-2").await;
    assert_eq!(f.layer.token_cache().stats().retries, 1);
}
