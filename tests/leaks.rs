//! Secrets never leak: a canary secret and every token issued appear in no `tracing` output
//! (TRACE, all targets, the endpoint client's and hyper's included), no `Debug` and no error
//! `Display`, across the whole fault matrix.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::mock_layer;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ozzobit_auth::testing::{MOCK_API_KEY, MockServer};
use ozzobit_auth::{AccessToken, Credentials, OzzobitAuthLayer, ReplayBody};
use tower::{ServiceBuilder, ServiceExt};

const CANARY: &str = "sk_canary_6f1d3a9e_must_never_appear";
const WRONG_CANARY: &str = "sk_canary_wrong_b77e_must_never_appear";
const BAD_TOKEN: &str = "canarytoken\r\nX-Injected: yes";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_in_logs_debug_or_errors() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut shown = Vec::<String>::new(); // every Debug and Display produced below
    let mock = MockServer::start().await;
    mock.set_credentials(MOCK_API_KEY, CANARY);
    let layer = OzzobitAuthLayer::builder()
        .credentials(Credentials::new(MOCK_API_KEY, CANARY))
        .base_url(mock.base_url())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let call = |method: &str, path: &str, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(mock.url(path))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let client = client.clone();
        async move {
            let res = client.oneshot(req).await;
            match res {
                Ok(res) => format!(
                    "{:?} {:?}",
                    res.status(),
                    res.into_body().collect().await.map(|b| b.to_bytes())
                ),
                Err(e) => format!("{e} / {e:?}"),
            }
        }
    };

    // Success, a body, a revoked token answered by refresh + retry, every token rejected.
    shown.push(call("GET", "orders", "").await);
    shown.push(call("POST", "orders/create", r#"{"fiatAmount":1}"#).await);
    mock.revoke_all_tokens();
    shown.push(call("POST", "orders/create", r#"{"fiatAmount":2}"#).await);
    mock.reject_all_tokens(true);
    shown.push(call("GET", "orders", "").await);
    mock.reject_all_tokens(false);

    // Token endpoint faults, each on a fresh layer so no backoff hides the next.
    let mut retry_after = HeaderMap::new();
    retry_after.insert(header::RETRY_AFTER, "3".parse().unwrap());
    let echo = format!(r#"{{"message":"secret {CANARY} is wrong"}}"#);
    let bad_token = format!(
        r#"{{"accessToken":{},"expiresIn":60}}"#,
        serde_json::to_string(BAD_TOKEN).unwrap()
    );
    let faults: Vec<(StatusCode, HeaderMap, String)> = vec![
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            "{}".into(),
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            "<html>down</html>".into(),
        ),
        (StatusCode::UNAUTHORIZED, HeaderMap::new(), echo),
        (
            StatusCode::OK,
            HeaderMap::new(),
            "<html>login</html>".into(),
        ),
        (StatusCode::OK, HeaderMap::new(), bad_token),
    ];
    for (status, headers, body) in faults {
        mock.fail_next_token_requests_with_headers(1, status, headers, &body);
        let fresh = mock_layer(&mock, |b| {
            b.credentials(Credentials::new(MOCK_API_KEY, CANARY))
        });
        let e = fresh.token_cache().token().await.unwrap_err();
        shown.push(format!("{e} / {e:?} / {fresh:?}"));
    }

    // Rejected credentials (a wrong secret), and a timeout.
    let wrong = mock_layer(&mock, |b| {
        b.credentials(Credentials::new(MOCK_API_KEY, WRONG_CANARY))
    });
    let e = wrong.token_cache().token().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "token request rejected (401 Unauthorized): Invalid API secret"
    );
    shown.push(format!("{e} / {e:?} / {wrong:?}"));
    mock.set_token_latency(Duration::from_secs(5));
    let slow = mock_layer(&mock, |b| {
        b.credentials(Credentials::new(MOCK_API_KEY, CANARY))
            .fetch_timeout(Duration::from_millis(100))
    });
    let e = slow.token_cache().token().await.unwrap_err();
    assert!(e.is_timeout());
    shown.push(format!("{e} / {e:?}"));
    mock.set_token_latency(Duration::ZERO);

    // Debug of every public type that holds a secret or a token.
    let token = layer.token_cache().token().await.unwrap();
    let builder = OzzobitAuthLayer::builder().credentials(Credentials::new(MOCK_API_KEY, CANARY));
    shown.push(format!(
        "{token:?} {:?} {builder:?} {layer:?} {:?}",
        token.authorization(),
        layer.token_cache()
    ));
    shown.push(format!("{:?}", Credentials::new(MOCK_API_KEY, CANARY)));
    shown.push(format!(
        "{:?}",
        AccessToken::new(CANARY, Duration::from_secs(1))
    ));
    shown.push(format!("{:?}", client));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The capture works: the events this crate promises are there.
    for event in [
        "token fetch started",
        "token fetched",
        "token fetch failed",
        "token rejected by the API",
        "unauthorized; refreshing",
    ] {
        assert!(
            logs.contains(event),
            "no {event:?} event in the captured logs"
        );
    }
    let issued = mock.issued_tokens();
    assert!(issued.len() >= 3);
    let mut secrets: Vec<&str> = vec![CANARY, WRONG_CANARY, "canarytoken"];
    secrets.extend(issued.iter().map(String::as_str));
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "a secret or token in the tracing output: {secret}"
        );
        for text in &shown {
            assert!(!text.contains(secret), "a secret or token in {text}");
        }
    }
}
