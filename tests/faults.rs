//! The fault matrix: every way the token endpoint or the API can misbehave, driven through the
//! whole stack (layer + cache + endpoint client over loopback), with the outcome a user sees.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Recorder, Scripted, Stalled, mock_layer, raw_server, read_head};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ozzobit_auth::testing::MockServer;
use ozzobit_auth::{BoxError, Error, OzzobitAuthLayer, ReplayBody};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Hyper<B> = Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<B>>;

fn hyper<B>() -> Hyper<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// One GET /orders through a fresh layer; the token error it fails with.
async fn fetch_error(mock: &MockServer) -> Error {
    let client = ServiceBuilder::new()
        .layer(mock_layer(mock, |b| b))
        .service(hyper::<Empty<Bytes>>());
    let req = Request::get(mock.url("orders")).body(Empty::new()).unwrap();
    let err = client
        .oneshot(req)
        .await
        .expect_err("the token fetch fails");
    *err.downcast::<Error>()
        .expect("token failures are ozzobit_auth::Error")
}

#[tokio::test]
async fn token_endpoint_answers_that_are_errors() {
    // (status, body, predicate, exact Display)
    type Case = (u16, &'static str, fn(&Error) -> bool, &'static str);
    let cases: &[Case] = &[
        (
            500,
            r#"{"message":"Internal error"}"#,
            Error::is_transient,
            "token endpoint unavailable (500 Internal Server Error)",
        ),
        (
            502,
            "<html>Bad gateway</html>",
            Error::is_transient,
            "token endpoint unavailable (502 Bad Gateway)",
        ),
        (
            429,
            r#"{"message":"slow down"}"#,
            Error::is_transient,
            "token endpoint unavailable (429 Too Many Requests)",
        ),
        (
            401,
            r#"{"success":false,"message":"Invalid API key"}"#,
            Error::is_rejected,
            "token request rejected (401 Unauthorized): Invalid API key",
        ),
        (
            403,
            r#"{"message":"IP not allowed"}"#,
            Error::is_rejected,
            "token request rejected (403 Forbidden): IP not allowed",
        ),
        (
            400,
            "<html>nope</html>",
            Error::is_rejected,
            "token request rejected (400 Bad Request): Bad Request",
        ),
        (
            200,
            "not json at all",
            Error::is_invalid_response,
            "invalid token response: body is not JSON",
        ),
        (
            200,
            "<!DOCTYPE html><html><body>Login</body></html>",
            Error::is_invalid_response,
            "invalid token response: body is HTML, not JSON",
        ),
        (
            200,
            r#"{"expiresIn":3600}"#,
            Error::is_invalid_response,
            "invalid token response: accessToken is missing",
        ),
        (
            200,
            r#"{"success":false,"message":"Account suspended"}"#,
            Error::is_rejected,
            "token request rejected (200 OK): Account suspended",
        ),
        (
            200,
            r#"{"accessToken":12345,"expiresIn":3600}"#,
            Error::is_invalid_response,
            "invalid token response: accessToken is not a string",
        ),
        (
            200,
            r#"{"accessToken":"","expiresIn":3600}"#,
            Error::is_invalid_response,
            "invalid token response: accessToken is empty",
        ),
        (
            200,
            r#"{"accessToken":"abc\r\nX-Injected: 1","expiresIn":3600}"#,
            Error::is_invalid_response,
            "invalid token response: accessToken contains characters not allowed in an HTTP header",
        ),
        (
            200,
            r#"{"accessToken":"abc\u0000def","expiresIn":3600}"#,
            Error::is_invalid_response,
            "invalid token response: accessToken contains characters not allowed in an HTTP header",
        ),
        (
            200,
            r#"{"accessToken":"t","expiresIn":0}"#,
            Error::is_invalid_response,
            "invalid token response: expiresIn is not positive",
        ),
        (
            200,
            r#"{"accessToken":"t","expiresIn":-60}"#,
            Error::is_invalid_response,
            "invalid token response: expiresIn is not positive",
        ),
        (
            200,
            r#"{"accessToken":"t","expiresIn":"an hour"}"#,
            Error::is_invalid_response,
            "invalid token response: expiresIn is not a number",
        ),
    ];
    for (status, body, predicate, display) in cases {
        let mock = MockServer::start().await;
        mock.fail_next_token_requests(1, StatusCode::from_u16(*status).unwrap(), body);
        let e = fetch_error(&mock).await;
        assert!(predicate(&e), "{status} {body}: {e:?}");
        assert_eq!(e.to_string(), *display, "{status} {body}");
        assert_eq!(mock.api_requests(), 0, "no API call without a token");
        assert_eq!(mock.token_requests(), 1);
    }
}

#[tokio::test]
async fn odd_but_usable_expiries_are_accepted() {
    for (body, lifetime) in [
        (
            r#"{"accessToken":"t","expiresIn":1.5}"#,
            Duration::from_millis(1500),
        ),
        (
            r#"{"accessToken":"t","expiresIn":"900"}"#,
            Duration::from_secs(900),
        ),
        (
            r#"{"accessToken":"t","expiresIn":1000000000000}"#,
            ozzobit_auth::MAX_TOKEN_LIFETIME,
        ),
    ] {
        let mock = MockServer::start().await;
        mock.fail_next_token_requests(1, StatusCode::OK, body);
        let layer = mock_layer(&mock, |b| b);
        let before = Instant::now();
        let token = layer.token_cache().token().await.unwrap();
        let after = Instant::now();
        assert!(
            token.expires_at() >= before + lifetime && token.expires_at() <= after + lifetime,
            "{body}"
        );
        assert_eq!(token.authorization(), "Bearer t");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_or_without_content_length() {
    let mock = MockServer::start().await;
    let big = format!(
        r#"{{"accessToken":"t","expiresIn":60,"pad":"{}"}}"#,
        "x".repeat(3 << 20)
    );
    mock.fail_next_token_requests(1, StatusCode::OK, &big);
    let e = fetch_error(&mock).await;
    assert_eq!(
        e.to_string(),
        "invalid token response: body exceeds 65536 bytes"
    );

    // Chunked, no length, endless: reading stops at the cap.
    let addr = raw_server(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").await;
        let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
        while s.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;
    let layer = base_layer(&format!("http://{addr}/api/v2"), Duration::from_secs(10));
    let e = layer.token_cache().token().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid token response: body exceeds 65536 bytes"
    );
}

fn base_layer(base_url: &str, fetch_timeout: Duration) -> OzzobitAuthLayer {
    OzzobitAuthLayer::builder()
        .credentials(ozzobit_auth::Credentials::new(
            "pk",
            "sk_canary_never_logged",
        ))
        .base_url(base_url)
        .fetch_timeout(fetch_timeout)
        .build()
        .unwrap()
}

#[tokio::test]
async fn connection_refused_and_closed_connections_are_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = listener.local_addr().unwrap();
    drop(listener);
    let e = base_layer(&format!("http://{refused}/api/v2"), Duration::from_secs(10))
        .token_cache()
        .token()
        .await
        .unwrap_err();
    assert!(e.is_transient() && !e.is_timeout(), "{e:?}");
    assert_eq!(e.to_string(), "token request failed");

    let closes = raw_server(|s| async move { drop(s) }).await;
    let e = base_layer(&format!("http://{closes}/api/v2"), Duration::from_secs(10))
        .token_cache()
        .token()
        .await
        .unwrap_err();
    assert!(e.is_transient() && !e.is_timeout(), "{e:?}");

    let closes_mid_body = raw_server(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"accessTok")
            .await;
    })
    .await;
    let e = base_layer(
        &format!("http://{closes_mid_body}/api/v2"),
        Duration::from_secs(10),
    )
    .token_cache()
    .token()
    .await
    .unwrap_err();
    assert!(e.is_transient() && !e.is_timeout(), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn hanging_and_trickling_endpoints_are_cut_at_fetch_timeout() {
    let hangs = raw_server(|mut s| async move {
        read_head(&mut s).await;
        // Holds the connection open and never answers.
        std::future::pending::<()>().await;
        drop(s);
    })
    .await;
    let started = Instant::now();
    let e = base_layer(&format!("http://{hangs}/api/v2"), Duration::from_secs(5))
        .token_cache()
        .token()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(e.to_string(), "token request timed out after 5s");
    assert_eq!(Instant::now() - started, Duration::from_secs(5));

    let trickles = raw_server(|mut s| async move {
        read_head(&mut s).await;
        let body = br#"{"accessToken":"t","expiresIn":3600}"#;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = s.write_all(head.as_bytes()).await;
        for b in body {
            // One byte a second on the paused clock: 37 s in all, past the 5 s fetch_timeout.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let started = Instant::now();
    let e = base_layer(&format!("http://{trickles}/api/v2"), Duration::from_secs(5))
        .token_cache()
        .token()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(Instant::now() - started, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let mock = MockServer::start().await;
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, "7".parse().unwrap());
    mock.fail_next_token_requests_with_headers(1, StatusCode::SERVICE_UNAVAILABLE, headers, "{}");
    let layer = mock_layer(&mock, |b| b.fetch_timeout(Duration::from_secs(3600)));
    let cache = layer.token_cache();
    let e = cache.token().await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    advance(Duration::from_millis(6900)).await;
    assert_eq!(
        cache.token().await.unwrap_err().status(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(mock.token_requests(), 1, "no request before Retry-After");
    advance(Duration::from_millis(100)).await;
    assert_eq!(cache.token().await.unwrap().generation(), 1);
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_secret_goes_nowhere_else() {
    let elsewhere = Recorder::start(vec![]).await;
    let mock = MockServer::start().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::LOCATION,
        elsewhere.url("/api/v2/auth/token").parse().unwrap(),
    );
    mock.fail_next_token_requests_with_headers(1, StatusCode::TEMPORARY_REDIRECT, headers, "");
    let e = fetch_error(&mock).await;
    assert!(e.is_rejected(), "{e:?}");
    assert_eq!(
        e.to_string(),
        "token request rejected (307 Temporary Redirect): the token endpoint redirected; redirects are not followed, so check base_url"
    );
    assert!(
        elsewhere.seen().is_empty(),
        "nothing was sent to the redirect target"
    );
}

#[tokio::test]
async fn an_endpoint_message_echoing_the_secret_is_withheld() {
    let mock = MockServer::start().await;
    let echo = format!(
        r#"{{"message":"bad secret {}"}}"#,
        ozzobit_auth::testing::MOCK_API_SECRET
    );
    mock.fail_next_token_requests(1, StatusCode::UNAUTHORIZED, &echo);
    let e = fetch_error(&mock).await;
    assert_eq!(
        e.to_string(),
        "token request rejected (401 Unauthorized): (message withheld: it contained the API secret)"
    );
}

#[tokio::test(start_paused = true)]
async fn endpoint_down_at_start_then_back_recovers_without_restart() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let layer = OzzobitAuthLayer::builder()
        .credentials(ozzobit_auth::Credentials::new(
            ozzobit_auth::testing::MOCK_API_KEY,
            ozzobit_auth::testing::MOCK_API_SECRET,
        ))
        .base_url(format!("http://{addr}/api/v2"))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper::<Empty<Bytes>>());
    let orders = format!("http://{addr}/api/v2/orders");
    let err = client
        .clone()
        .oneshot(Request::get(&orders).body(Empty::new()).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<Error>().is_some_and(Error::is_transient),
        "{err:?}"
    );

    let mock = MockServer::start_at(addr).await;
    advance(Duration::from_millis(500)).await; // the first backoff is at most 0.5 s
    let res = client
        .oneshot(Request::get(&orders).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(mock.token_requests(), 1);
    assert_eq!(layer.token_cache().stats().fetch_failures, 1);
}

#[tokio::test]
async fn a_401_mid_upload_that_drops_the_body_resumes_it_on_the_retry() {
    // The server answers before reading the body; hyper then drops the request body part-way.
    // The retry sends the recorded part, then the rest of the caller's body.
    let api = Recorder::start(vec![401]).await;
    let source = Scripted::new(Duration::from_secs(3600));
    let layer = OzzobitAuthLayer::builder()
        .token_source(std::sync::Arc::clone(&source))
        .base_url(api.url("/api/v2"))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper::<Stalled>());
    let res = client
        .oneshot(
            Request::post(api.url("/api/v2/orders/create"))
                .body(Stalled::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        api.seen(),
        vec![
            Some("Bearer tok-1".to_owned()),
            Some("Bearer tok-2".to_owned())
        ]
    );
    let stats = layer.token_cache().stats();
    assert_eq!(
        (stats.retries, stats.forced_refreshes, stats.fetches),
        (1, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_401_while_the_first_attempt_still_streams_the_body_is_returned_and_still_refreshes() {
    use tower_test::mock;
    type Req = Request<ReplayBody<Stalled>>;
    let source = Scripted::new(Duration::from_secs(3600));
    let layer = common::layer_with(&source, |b| b);
    let (inner, mut handle) = mock::pair::<Req, http::Response<Empty<Bytes>>>();
    handle.allow(10);
    let call = tokio::spawn(
        layer.layer(inner).oneshot(
            Request::post("/orders/create")
                .body(Stalled::new())
                .unwrap(),
        ),
    );
    let (mut req, reply) = tokio::time::timeout(Duration::from_secs(60), handle.next_request())
        .await
        .unwrap()
        .unwrap();
    // The inner service reads the first chunk and keeps the body, still streaming.
    http_body_util::BodyExt::frame(req.body_mut())
        .await
        .unwrap()
        .unwrap();
    reply.send_response(
        http::Response::builder()
            .status(401)
            .body(Empty::new())
            .unwrap(),
    );
    let started = Instant::now();
    let res = call.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        Instant::now() - started,
        Duration::from_millis(100),
        "waited the grace, no more"
    );
    let stats = layer.token_cache().stats();
    assert_eq!((stats.retries, stats.forced_refreshes), (0, 1));
    assert_eq!(layer.token_cache().token().await.unwrap().generation(), 2);
    drop(req);
}

#[tokio::test]
async fn an_inner_service_that_panics_does_not_break_the_cache() {
    let source = Scripted::new(Duration::from_secs(3600));
    let layer = common::layer_with(&source, |b| b);
    let inner = tower::service_fn(|req: Request<ReplayBody<Empty<Bytes>>>| async move {
        assert!(req.uri().path() != "/boom", "inner service bug");
        Ok::<_, BoxError>(http::Response::new(Empty::<Bytes>::new()))
    });
    let svc = layer.layer(inner);
    let boom = tokio::spawn(
        svc.clone()
            .oneshot(Request::get("/boom").body(Empty::new()).unwrap()),
    );
    assert!(boom.await.unwrap_err().is_panic());
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::get("/fine").body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(source.fetches(), 1);
    assert_eq!(layer.token_cache().stats().requests_authorized, 4);
}

#[tokio::test]
async fn grpc_unauthenticated_twice_is_returned_after_one_retry() {
    // Covered over a real tonic channel in tests/layer.rs; here the classifier alone, with an
    // inner service answering trailers-only UNAUTHENTICATED to every token.
    let source = Scripted::new(Duration::from_secs(3600));
    let layer = common::layer_with(&source, |b| b);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = tower::service_fn({
        let calls = calls.clone();
        move |_req: Request<ReplayBody<Empty<Bytes>>>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                let res = http::Response::builder()
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .header("grpc-status", "16")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                Ok::<_, BoxError>(res)
            }
        }
    });
    let mut svc = layer.layer(inner);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::post("/pkg.Svc/Call").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "16");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(source.fetches(), 2);
}
