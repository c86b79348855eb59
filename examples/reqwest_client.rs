//! `reqwest::Client` under the layer through `ReqwestService`, against the embedded mock.
//!
//! ```text
//! cargo run --example reqwest_client
//! ```

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use ozzobit_auth::testing::MockServer;
use ozzobit_auth::{BoxError, OzzobitAuthLayer, ReqwestService};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockServer::start().await;
    let auth = OzzobitAuthLayer::builder()
        .credentials(mock.credentials())
        .base_url(mock.base_url())
        .build()?;
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(ReqwestService::new(reqwest::Client::new()));

    let order = r#"{"fiatAmount":100,"fiatCurrency":"USD","cryptoCurrency":"ETH"}"#;
    let create = || {
        Request::post(mock.url("orders/create"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(order.as_bytes())))
    };

    let response = client.clone().oneshot(create()?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "POST /orders/create -> {status}: {}",
        String::from_utf8_lossy(&body)
    );

    // The server revokes every token: the next call is answered 401, refreshed and retried.
    mock.revoke_all_tokens();
    let response = client.oneshot(create()?).await?;
    println!(
        "after revocation -> {} ({} API hits, {} token fetches, {} retry)",
        response.status(),
        mock.api_requests(),
        mock.token_requests(),
        auth.token_cache().stats().retries
    );
    Ok(())
}
