//! The main job end to end: authenticate, list orders, create an order, and show what the token
//! cache did.
//!
//! With no environment it starts the embedded mock OZZOBiT server, so it runs anywhere:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With `OZZOBIT_API_KEY` and `OZZOBIT_API_SECRET` set (and optionally `OZZOBIT_BASE_URL`), it
//! talks to that endpoint instead, and only lists orders: creating a real order is not a demo.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use ozzobit_auth::testing::MockServer;
use ozzobit_auth::{BoxError, OzzobitAuthLayer, ReqwestService};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "ozzobit_auth=warn".into()))
        .init();

    let real = std::env::var_os("OZZOBIT_API_KEY").is_some()
        || std::env::var_os("OZZOBiT_API_KEY").is_some();
    let (mock, auth, base_url) = if real {
        let auth = OzzobitAuthLayer::from_env()?;
        let base = std::env::var("OZZOBIT_BASE_URL")
            .unwrap_or_else(|_| ozzobit_auth::DEFAULT_BASE_URL.into());
        println!("Using OZZOBiT at {base} (credentials from the environment)");
        (None, auth, base)
    } else {
        let mock = MockServer::start().await;
        println!(
            "No OZZOBIT_API_KEY set: using the embedded mock OZZOBiT server at {}",
            mock.base_url()
        );
        let auth = OzzobitAuthLayer::builder()
            .credentials(mock.credentials())
            .base_url(mock.base_url())
            .build()?;
        let base = mock.base_url();
        (Some(mock), auth, base)
    };

    // The whole integration: one layer over any HTTP client service.
    let mut client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(ReqwestService::new(reqwest::Client::new()));

    let mut send =
        async |method: Method, path: &str, body: &str| -> Result<(u16, Value), BoxError> {
            let request = Request::builder()
                .method(method)
                .uri(format!("{base_url}/{path}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_owned())))?;
            let response = (&mut client).oneshot(request).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        };

    let (status, orders) = send(Method::GET, "orders", "").await?;
    let list = orders["data"]["orders"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let summary: Vec<String> = list
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["orderId"].as_str().unwrap_or("?"),
                o["status"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!(
        "  GET  /orders          -> {status}  ({} orders: {})",
        list.len(),
        summary.join(", ")
    );

    let Some(mock) = mock else {
        report(&auth);
        return Ok(());
    };

    let order = r#"{"fiatAmount":150,"fiatCurrency":"USD","cryptoCurrency":"BTC","walletAddress":"bc1qexample"}"#;
    let (status, created) = send(Method::POST, "orders/create", order).await?;
    println!(
        "  POST /orders/create   -> {status}  (orderId {}, status {})",
        created["data"]["orderId"].as_str().unwrap_or("?"),
        created["data"]["status"].as_str().unwrap_or("?")
    );
    let (status, _) = send(Method::GET, "orders", "").await?;
    println!("  GET  /orders          -> {status}  (same token, no new fetch)");
    println!(
        "  token fetches so far: {} for {} requests",
        mock.token_requests(),
        mock.api_requests()
    );

    // The server revokes the token: the layer sees the 401, refreshes once and retries the POST
    // with the same body.
    mock.revoke_all_tokens();
    let (status, _) = send(Method::POST, "orders/create", order).await?;
    println!(
        "  token revoked by the server; POST /orders/create -> {status}  (the 401 was answered by one refresh and one retry: {} API hits, {} token fetches)",
        mock.api_requests(),
        mock.token_requests()
    );

    // Refresh-ahead, shown with 4-second tokens (a 2 s buffer: half the lifetime).
    mock.set_token_lifetime(Duration::from_secs(4));
    mock.revoke_all_tokens();
    send(Method::GET, "orders", "").await?;
    let before = mock.token_requests();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let started = std::time::Instant::now();
    let (status, _) = send(Method::GET, "orders", "").await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "  inside the refresh window: GET /orders -> {status} in {took:.1?} with the still-valid token, while {} background fetch ran",
        mock.token_requests() - before
    );
    report(&auth);
    Ok(())
}

fn report(auth: &OzzobitAuthLayer) {
    let s = auth.token_cache().stats();
    println!(
        "Token cache: {} fetches, {} failures, {} forced refreshes, {} retries, {} requests authorized",
        s.fetches, s.fetch_failures, s.forced_refreshes, s.retries, s.requests_authorized
    );
}
