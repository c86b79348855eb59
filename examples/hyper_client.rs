//! A hyper-util client with the layer, against the embedded mock OZZOBiT server.
//!
//! ```text
//! cargo run --example hyper_client
//! ```

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ozzobit_auth::testing::MockServer;
use ozzobit_auth::{BoxError, OzzobitAuthLayer, ReplayBody};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockServer::start().await;
    let auth = OzzobitAuthLayer::builder()
        .credentials(mock.credentials())
        .base_url(mock.base_url())
        .build()?;

    // The inner client's body type is the layer's `ReplayBody` around yours.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>();
    let client = ServiceBuilder::new().layer(auth.clone()).service(hyper);

    for _ in 0..3 {
        let request = Request::get(mock.url("orders")).body(Empty::new())?;
        let response = client.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("GET /orders -> {status}: {} bytes", body.len());
    }
    println!(
        "3 requests, {} token fetch (the mock saw {})",
        auth.token_cache().stats().fetches,
        mock.token_requests()
    );
    Ok(())
}
