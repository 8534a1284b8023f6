//! The HTTP client for remote stores, tolerant of one common S3-compatible server quirk.

use async_trait::async_trait;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};

/// Connects with reqwest, wrapped in [`RangeTolerant`].
#[derive(Debug, Default)]
pub(crate) struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(RangeTolerant(inner)))
    }
}

/// Some S3-compatible servers (rclone's `serve s3` among them) answer a ranged GET with
/// `200 OK` yet send exactly the range, saying so in `Content-Range`. The bytes are right,
/// but `object_store` insists on `206` and rejects them. Such an answer is treated as the
/// partial response it is; a `200` without `Content-Range` (the range ignored, the whole
/// object sent) is still rejected.
#[derive(Debug)]
struct RangeTolerant(HttpClient);

#[async_trait]
impl HttpService for RangeTolerant {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let ranged = req.headers().contains_key(http::header::RANGE);
        let mut res = self.0.execute(req).await?;
        if ranged
            && res.status() == http::StatusCode::OK
            && res.headers().contains_key(http::header::CONTENT_RANGE)
        {
            *res.status_mut() = http::StatusCode::PARTIAL_CONTENT;
        }
        Ok(res)
    }
}
