//! The layer with real clients against real loopback servers: hyper-util, reqwest, tonic.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Chunked, Recorder, Scripted, mock_layer, settle};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ozzobit_auth::testing::MockServer;
use ozzobit_auth::{ReplayBody, ReqwestService};
use tower::{Service, ServiceBuilder, ServiceExt};

type HyperClient<B> = Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<B>>;

fn hyper_client<B>() -> HyperClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

const ORDER: &str = r#"{"fiatAmount":150,"fiatCurrency":"USD","cryptoCurrency":"BTC"}"#;

async fn send<S, B>(svc: &mut S, method: Method, url: &str, body: B) -> (StatusCode, Bytes)
where
    S: Service<
            Request<B>,
            Response = http::Response<hyper::body::Incoming>,
            Error = ozzobit_auth::BoxError,
        >,
{
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_200_concurrent_on_cold_cache_one_fetch_exact_header() {
    let mock = MockServer::start().await;
    mock.set_token_latency(Duration::from_millis(50));
    let auth = mock_layer(&mock, |b| b);
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(hyper_client::<Empty<Bytes>>());
    let url = mock.url("orders");
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let mut client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { send(&mut client, Method::GET, &url, Empty::new()).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(mock.token_requests(), 1);
    let want = format!("Bearer {}", mock.issued_tokens()[0]);
    let seen = mock.seen_authorizations();
    assert_eq!(seen.len(), 200);
    assert!(seen.iter().all(|h| *h == want));
    assert_eq!(auth.token_cache().stats().requests_authorized, 200);
}

#[tokio::test]
async fn revoked_token_is_refreshed_and_json_body_replayed_byte_identical() {
    let mock = MockServer::start().await;
    let auth = mock_layer(&mock, |b| b);
    let mut client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(hyper_client::<Full<Bytes>>());
    assert_eq!(
        send(
            &mut client,
            Method::GET,
            &mock.url("orders"),
            Full::default()
        )
        .await
        .0,
        200
    );
    mock.revoke_all_tokens();
    let (api, tokens) = (mock.api_requests(), mock.token_requests());

    let (status, body) = send(
        &mut client,
        Method::POST,
        &mock.url("orders/create"),
        Full::new(Bytes::from(ORDER)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(mock.api_requests() - api, 2);
    assert_eq!(mock.token_requests() - tokens, 1);
    let bodies = mock.order_bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], ORDER.as_bytes());
    assert_eq!(bodies[1], ORDER.as_bytes());
    let seen = mock.seen_authorizations();
    let issued = mock.issued_tokens();
    assert_eq!(seen[seen.len() - 2], format!("Bearer {}", issued[0]));
    assert_eq!(seen[seen.len() - 1], format!("Bearer {}", issued[1]));
    let stats = auth.token_cache().stats();
    assert_eq!(
        (stats.retries, stats.forced_refreshes, stats.fetches),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn streamed_axum_body_under_the_cap_is_replayed_byte_identical() {
    let mock = MockServer::start().await;
    let auth = mock_layer(&mock, |b| b);
    let mut client = ServiceBuilder::new()
        .layer(auth)
        .service(hyper_client::<axum::body::Body>());
    send(
        &mut client,
        Method::GET,
        &mock.url("orders"),
        axum::body::Body::empty(),
    )
    .await;
    mock.revoke_all_tokens();
    // 8 frames of 1 KiB, no size hint: streamed with chunked encoding.
    let body = axum::body::Body::new(Chunked::new(8, 1024, b'7'));
    let (status, _) = send(&mut client, Method::POST, &mock.url("orders/create"), body).await;
    // The mock answers 400 to a body that is not JSON, after authorizing it: so 400, not 401,
    // proves the retry carried a valid token, and the bodies prove what it carried.
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let bodies = mock.order_bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], vec![b'7'; 8192]);
    assert_eq!(bodies[0], bodies[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_401s_for_one_token_cause_one_fetch() {
    let mock = MockServer::start().await;
    mock.set_token_latency(Duration::from_millis(20));
    let auth = mock_layer(&mock, |b| b);
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(hyper_client::<Empty<Bytes>>());
    send(
        &mut client.clone(),
        Method::GET,
        &mock.url("orders"),
        Empty::new(),
    )
    .await;
    mock.revoke_all_tokens();
    let url = mock.url("orders");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (mut client, url, barrier) = (client.clone(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                send(&mut client, Method::GET, &url, Empty::new()).await.0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        mock.token_requests(),
        2,
        "one fetch at start, exactly one after the revocation"
    );
    assert_eq!(auth.token_cache().stats().forced_refreshes, 1);
}

#[tokio::test]
async fn every_token_rejected_gives_the_401_after_exactly_two_hits() {
    let mock = MockServer::start().await;
    let mut client = ServiceBuilder::new()
        .layer(mock_layer(&mock, |b| b))
        .service(hyper_client::<Empty<Bytes>>());
    mock.reject_all_tokens(true);
    let (status, body) = send(&mut client, Method::GET, &mock.url("orders"), Empty::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("Invalid or expired access token")
    );
    assert_eq!(mock.api_requests(), 2);
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn body_over_the_cap_returns_the_401_and_the_next_request_succeeds() {
    let mock = MockServer::start().await;
    let auth = mock_layer(&mock, |b| b.max_replay_bytes(4096));
    let mut client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(hyper_client::<Chunked>());
    send(
        &mut client,
        Method::POST,
        &mock.url("orders/create"),
        Chunked::new(0, 0, 0),
    )
    .await;
    mock.revoke_all_tokens();
    let (status, _) = send(
        &mut client,
        Method::POST,
        &mock.url("orders/create"),
        Chunked::new(8, 1024, b'x'),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(auth.token_cache().stats().retries, 0);
    // The 401 still replaced the token: the next request carries the new one.
    let (status, _) = send(
        &mut client,
        Method::POST,
        &mock.url("orders/create"),
        Chunked::new(2, 1, b'{'),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "authorized (400 is the mock's answer to bad JSON)"
    );
    assert_eq!(mock.token_requests(), 2);
    let issued = mock.issued_tokens();
    assert_eq!(
        mock.seen_authorizations().last().unwrap(),
        &format!("Bearer {}", issued[1])
    );
}

#[tokio::test]
async fn other_origins_get_no_token_and_their_401s_trigger_nothing() {
    let mock = MockServer::start().await;
    let other = Recorder::start(vec![401]).await;
    let auth = mock_layer(&mock, |b| b);
    let mut client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(hyper_client::<Empty<Bytes>>());
    let (status, _) = send(&mut client, Method::GET, &other.url("/x"), Empty::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    send(&mut client, Method::GET, &other.url("/y"), Empty::new()).await;
    assert_eq!(other.seen(), vec![None, None]);
    assert_eq!(mock.token_requests(), 0);
    assert_eq!(auth.token_cache().stats(), Default::default());

    // Allowed explicitly, it gets the token.
    let allowed = mock_layer(&mock, |b| b.allow_origin(format!("http://{}", other.addr)));
    let mut client = ServiceBuilder::new()
        .layer(allowed)
        .service(hyper_client::<Empty<Bytes>>());
    send(&mut client, Method::GET, &other.url("/z"), Empty::new()).await;
    assert_eq!(
        other.seen()[2],
        Some(format!("Bearer {}", mock.issued_tokens()[0]))
    );
}

#[tokio::test]
async fn reqwest_service_retries_once_after_401() {
    let mock = MockServer::start().await;
    let auth = mock_layer(&mock, |b| b);
    let mut client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(ReqwestService::new(reqwest::Client::new()));
    let req = || {
        Request::post(mock.url("orders/create"))
            .body(Full::new(Bytes::from(ORDER)))
            .unwrap()
    };
    assert_eq!((&mut client).oneshot(req()).await.unwrap().status(), 200);
    mock.revoke_all_tokens();
    let res = (&mut client).oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(mock.api_requests(), 3);
    assert_eq!(mock.token_requests(), 2);
    assert_eq!(mock.order_bodies(), vec![ORDER.as_bytes(); 3]);
    assert_eq!(auth.token_cache().stats().retries, 1);
}

#[tokio::test]
async fn token_failure_surfaces_as_ozzobit_error_without_the_secret() {
    let mock = MockServer::start().await;
    mock.fail_next_token_requests(
        1,
        StatusCode::UNAUTHORIZED,
        r#"{"success":false,"message":"Invalid API key"}"#,
    );
    let mut client = ServiceBuilder::new()
        .layer(mock_layer(&mock, |b| b))
        .service(hyper_client::<Empty<Bytes>>());
    let req = Request::get(mock.url("orders")).body(Empty::new()).unwrap();
    let err = client.ready().await.unwrap().call(req).await.unwrap_err();
    let err = err
        .downcast::<ozzobit_auth::Error>()
        .expect("token failures downcast");
    assert!(err.is_rejected());
    assert_eq!(
        err.to_string(),
        "token request rejected (401 Unauthorized): Invalid API key"
    );
    assert!(!format!("{err:?}").contains(ozzobit_auth::testing::MOCK_API_SECRET));
    assert_eq!(mock.api_requests(), 0);
}

#[path = "../examples/support/raw_codec.rs"]
mod raw_codec;

mod grpc {
    use super::raw_codec::Raw;
    use super::*;
    use tower_http::ServiceBuilderExt;

    async fn call<S>(grpc: &mut tonic::client::Grpc<S>) -> Result<Bytes, tonic::Status>
    where
        S: tonic::client::GrpcService<tonic::body::Body>,
        S::Error: Into<ozzobit_auth::BoxError>,
        S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <S::ResponseBody as http_body::Body>::Error: Into<ozzobit_auth::BoxError>,
    {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unknown(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(ozzobit_auth::testing::GRPC_LIST_ORDERS);
        Ok(grpc
            .unary(tonic::Request::new(Bytes::new()), path, Raw)
            .await?
            .into_inner())
    }

    type ToGrpcBody = fn(ReplayBody<tonic::body::Body>) -> tonic::body::Body;
    type Client = tonic::client::Grpc<
        ozzobit_auth::OzzobitAuth<
            tower_http::map_request_body::MapRequestBody<tonic::transport::Channel, ToGrpcBody>,
        >,
    >;

    /// A layer for `mock` and a gRPC client through it over a new HTTP/2 connection.
    async fn connect(mock: &MockServer) -> (ozzobit_auth::OzzobitAuthLayer, Client) {
        let auth = mock_layer(mock, |b| b);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mock.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(auth.clone())
            .map_request_body(tonic::body::Body::new as ToGrpcBody)
            .service(channel);
        (auth, tonic::client::Grpc::new(svc))
    }

    // A fresh server, channel and cache each round, as a process starting up sees them: the
    // server answers UNAUTHENTICATED before reading the request, racing the client's body, and a
    // new HTTP/2 connection loses that race often enough for a regression to show.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tonic_unauthenticated_before_the_body_is_read_is_retried_every_time() {
        for _ in 0..20 {
            let mock = MockServer::start().await;
            let (auth, mut grpc) = connect(&mock).await;
            call(&mut grpc).await.unwrap();
            mock.revoke_all_tokens();
            call(&mut grpc).await.expect("UNAUTHENTICATED was retried");
            assert_eq!(auth.token_cache().stats().retries, 1);
        }
    }

    // Multi-threaded: the server answers UNAUTHENTICATED before reading the request, racing
    // the client's body; ten rounds make a regression in that race show.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tonic_channel_calls_succeed_and_unauthenticated_is_retried() {
        let mock = MockServer::start().await;
        let (auth, mut grpc) = connect(&mock).await;

        let orders = call(&mut grpc).await.unwrap();
        assert!(std::str::from_utf8(&orders).unwrap().contains("ord_1001"));
        assert_eq!(mock.token_requests(), 1);

        for round in 1..=10 {
            mock.revoke_all_tokens();
            let orders = call(&mut grpc).await.unwrap();
            assert!(std::str::from_utf8(&orders).unwrap().contains("ord_1002"));
            assert_eq!(mock.api_requests(), 1 + 2 * round);
            assert_eq!(mock.unauthorized_responses(), round);
            assert_eq!(mock.token_requests(), 1 + round);
            assert_eq!(auth.token_cache().stats().retries, round);
        }

        mock.reject_all_tokens(true);
        let status = call(&mut grpc).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            mock.api_requests(),
            23,
            "one retry, then the status is returned"
        );
    }
}

mod tower_mock {
    use super::*;
    use ozzobit_auth::Retried;
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower_test::mock;

    type Req = Request<ReplayBody<Empty<Bytes>>>;
    type Res = http::Response<Empty<Bytes>>;

    /// The next request the inner service gets; fails (rather than hangs) if none comes.
    async fn next(handle: &mut mock::Handle<Req, Res>) -> (Req, mock::SendResponse<Res>) {
        tokio::time::timeout(Duration::from_secs(60), handle.next_request())
            .await
            .expect("the inner service got no request")
            .expect("the service was dropped")
    }

    fn response(status: u16) -> Res {
        http::Response::builder()
            .status(status)
            .body(Empty::new())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn backpressure_and_the_retry_readies_its_clone_first() {
        let source = Scripted::new(Duration::from_secs(3600));
        let auth = common::layer_with(&source, |b| b);
        let (service, mut handle) = mock::pair::<Req, Res>();
        let mut svc = mock::Spawn::new(tower::Layer::layer(&auth, service));

        handle.allow(0);
        assert_pending!(svc.poll_ready());
        handle.allow(1);
        assert_ready_ok!(svc.poll_ready());

        let req = Request::get("http://127.0.0.1:9/api/v2/orders")
            .body(Empty::new())
            .unwrap();
        let call = tokio::spawn(svc.call(req));
        let (first, reply) = next(&mut handle).await;
        let auth_header = &first.headers()[header::AUTHORIZATION];
        assert_eq!(auth_header, "Bearer tok-1");
        assert!(auth_header.is_sensitive());
        assert!(first.extensions().get::<Retried>().is_none());
        reply.send_response(response(401));

        // The retry waits for readiness: nothing is sent while the service has no capacity.
        settle().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_pending!(handle.poll_request());
        assert_eq!(source.fetches(), 2);
        handle.allow(1);
        let (second, reply) = next(&mut handle).await;
        assert_eq!(second.headers()[header::AUTHORIZATION], "Bearer tok-2");
        assert!(second.extensions().get::<Retried>().is_some());
        reply.send_response(response(401));
        assert_eq!(
            call.await.unwrap().unwrap().status(),
            401,
            "retried once, then returned"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn caller_authorization_and_retried_requests_are_not_retried() {
        let source = Scripted::new(Duration::from_secs(3600));
        let auth = common::layer_with(&source, |b| b);
        let (service, mut handle) = mock::pair::<Req, Res>();
        let mut svc = tower::Layer::layer(&auth, service);
        handle.allow(10);

        let req = Request::get("/x")
            .header(header::AUTHORIZATION, "Basic Y2FsbGVy")
            .body(Empty::new())
            .unwrap();
        let call = tokio::spawn(svc.ready().await.unwrap().call(req));
        let (seen, reply) = next(&mut handle).await;
        assert_eq!(seen.headers()[header::AUTHORIZATION], "Basic Y2FsbGVy");
        reply.send_response(response(401));
        assert_eq!(call.await.unwrap().unwrap().status(), 401);
        assert_eq!(source.fetches(), 0);

        let mut req = Request::get("/x").body(Empty::new()).unwrap();
        req.extensions_mut().insert(Retried);
        let call = tokio::spawn(svc.ready().await.unwrap().call(req));
        let (seen, reply) = next(&mut handle).await;
        assert_eq!(seen.headers()[header::AUTHORIZATION], "Bearer tok-1");
        reply.send_response(response(401));
        assert_eq!(call.await.unwrap().unwrap().status(), 401);
        settle().await;
        assert_eq!(
            source.fetches(),
            2,
            "the token is still replaced for later requests"
        );
        assert_eq!(auth.token_cache().stats().retries, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through_unchanged_without_retry() {
        let source = Scripted::new(Duration::from_secs(3600));
        let auth = common::layer_with(&source, |b| b);
        let (service, mut handle) = mock::pair::<Req, Res>();
        let mut svc = tower::Layer::layer(&auth, service);
        handle.allow(10);
        let call = tokio::spawn(
            svc.ready()
                .await
                .unwrap()
                .call(Request::get("/x").body(Empty::new()).unwrap()),
        );
        let (_, reply) = next(&mut handle).await;
        reply.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "refused");
        assert!(err.downcast_ref::<std::io::Error>().is_some());
        assert_pending!(handle.poll_request());
    }
}
