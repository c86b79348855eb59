//! A tonic `Channel` with the layer, calling the embedded mock's gRPC method.
//!
//! tonic hands the layer path-only URIs (the channel adds the origin), which the layer treats as
//! in scope. `Channel` takes `tonic::body::Body`, so the stack converts the layer's `ReplayBody`
//! back with `map_request_body(tonic::body::Body::new)`.
//!
//! ```text
//! cargo run --example tonic_client
//! ```

use bytes::Bytes;
use http::uri::PathAndQuery;
use ozzobit_auth::testing::{GRPC_LIST_ORDERS, MockServer};
use ozzobit_auth::{BoxError, OzzobitAuthLayer};
use tower::ServiceBuilder;
use tower_http::ServiceBuilderExt;

#[path = "support/raw_codec.rs"]
mod raw_codec;
use raw_codec::Raw;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockServer::start().await;
    let auth = OzzobitAuthLayer::builder()
        .credentials(mock.credentials())
        .base_url(mock.base_url())
        .build()?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mock.addr()))?
        .connect()
        .await?;
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .map_request_body(tonic::body::Body::new)
        .service(channel);
    // A generated client works the same: `OrdersClient::new(svc)`.
    let mut grpc = tonic::client::Grpc::new(svc);

    for round in ["first call", "after the server revoked the token"] {
        grpc.ready().await?;
        let reply = grpc
            .unary(
                tonic::Request::new(Bytes::new()),
                PathAndQuery::from_static(GRPC_LIST_ORDERS),
                Raw,
            )
            .await?;
        println!("{round}: {} bytes of orders", reply.into_inner().len());
        mock.revoke_all_tokens();
    }
    let stats = auth.token_cache().stats();
    println!(
        "token fetches: {}, UNAUTHENTICATED answers: {}, retries: {}",
        stats.fetches,
        mock.unauthorized_responses(),
        stats.retries
    );
    Ok(())
}
