//! [`ReqwestService`]: a `reqwest::Client` as a tower service, so reqwest users get the layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use tower_service::Service;

use crate::BoxError;

/// Wraps a [`reqwest::Client`] as a `Service<http::Request<B>>` answering
/// `http::Response<reqwest::Body>`, so it can sit under [`OzzobitAuthLayer`](crate::OzzobitAuthLayer):
///
/// ```
/// use ozzobit_auth::{Credentials, OzzobitAuthLayer, ReqwestService};
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), ozzobit_auth::Error> {
/// let auth = OzzobitAuthLayer::builder()
///     .credentials(Credentials::new("pk_live_123", "sk_live_456"))
///     .build()?;
/// let client = ServiceBuilder::new()
///     .layer(auth)
///     .service(ReqwestService::new(reqwest::Client::new()));
/// # let _ = client;
/// # Ok(()) }
/// ```
///
/// The client's own settings apply: redirects, timeouts, proxies. Its errors are
/// [`reqwest::Error`]s.
#[derive(Clone, Debug, Default)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> reqwest::Client {
        self.client
    }
}

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, reqwest::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest::Client queues internally and is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let request = reqwest::Request::try_from(req.map(reqwest::Body::wrap));
        let client = self.client.clone();
        Box::pin(async move {
            let response = client.execute(request?).await?;
            Ok(http::Response::from(response))
        })
    }
}
