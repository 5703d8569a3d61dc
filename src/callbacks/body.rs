//! Reading a request body up to a limit, for both callback endpoints (v4 callbacks and v3
//! webhooks): reading stops as soon as the body grows past the limit, since chunked bodies
//! declare no size. Each endpoint maps the outcome onto its own refusals.

use axum::body::Body;
use bytes::BytesMut;
use futures::StreamExt;

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed mid-body.
    Unreadable(String),
    /// The body grew past `limit` bytes.
    TooLarge { limit: usize },
}

/// Reads `body`, stopping as soon as it grows past `limit`.
pub async fn read_limited(body: Body, limit: usize) -> Result<BytesMut, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
