//! `HttpImages`: rendered images read back by URL, for delivery to the user's bucket. Image
//! URLs are public (Pictify's CDN, or the emulator), so no API key goes with the request.

use std::time::Duration;

use async_trait::async_trait;

use crate::ports::{FetchedImage, ImageSource, PortError, PortResult};

/// The most one image may be (Pictify's largest canvas as an uncompressed PNG is far less).
const MAX_IMAGE_BYTES: usize = 50 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct HttpImages {
    http: reqwest::Client,
}

impl HttpImages {
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        HttpImages { http }
    }
}

impl Default for HttpImages {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

#[async_trait]
impl ImageSource for HttpImages {
    async fn fetch(&self, url: &str) -> PortResult<FetchedImage> {
        let operation = "download the rendered image";
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| PortError::new(operation, e.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            let refused = Refused(format!("the image URL answered HTTP {}", status.as_u16()));
            // Gone (404/410, past Pictify's retention) stays gone; 5xx and 429 may pass.
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                PortError::new(operation, refused)
            } else {
                PortError::permanent(operation, refused)
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| PortError::new(operation, e.without_url()))?;
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(PortError::permanent(
                operation,
                Refused(format!(
                    "the image is {} bytes, over {MAX_IMAGE_BYTES}",
                    bytes.len()
                )),
            ));
        }
        Ok(FetchedImage {
            bytes: bytes.to_vec(),
            content_type,
        })
    }
}
