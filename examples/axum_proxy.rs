//! An axum server whose handler calls OZZOBiT through the authenticated client: the service's own
//! callers never see a credential, and every handler shares one token cache.
//!
//! ```text
//! cargo run --example axum_proxy
//! ```

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ozzobit_auth::testing::MockServer;
use ozzobit_auth::{BoxError, OzzobitAuth, OzzobitAuthLayer, ReplayBody};
use tower::{Layer, ServiceExt};

type Ozzobit = OzzobitAuth<Client<HttpConnector, ReplayBody<Empty<Bytes>>>>;

#[derive(Clone)]
struct AppState {
    ozzobit: Ozzobit,
    orders_url: String,
}

async fn my_orders(State(state): State<AppState>) -> impl IntoResponse {
    let request = Request::get(&state.orders_url)
        .body(Empty::new())
        .expect("valid request");
    match state.ozzobit.oneshot(request).await {
        Ok(response) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match response.into_body().collect().await {
                Ok(body) => (status, body.to_bytes()).into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        // Token or transport failure: the error says which, without any secret.
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockServer::start().await;
    let auth = OzzobitAuthLayer::builder()
        .credentials(mock.credentials())
        .base_url(mock.base_url())
        .build()?;
    let state = AppState {
        ozzobit: auth.layer(Client::builder(TokioExecutor::new()).build_http()),
        orders_url: mock.url("orders"),
    };
    let app = Router::new()
        .route("/my-orders", get(my_orders))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("proxy listening on http://{addr}/my-orders");

    // Callers of the proxy send no credentials at all.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for _ in 0..3 {
        let response = plain
            .get(format!("http://{addr}/my-orders").parse()?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "GET /my-orders -> {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    println!(
        "token fetches for 3 proxied calls: {}",
        mock.token_requests()
    );
    Ok(())
}
