//! Reading request bodies with a size limit, draining what is over it.
//!
//! A body whose `Content-Length` already exceeds the limit is refused at once, before the client
//! sends it: nothing is read into memory. (A client that waits for `100 Continue` then sends
//! nothing; a raw client that sent only the headers gets its 413 immediately.)
//!
//! An HTTP/1.1 server that answers before reading the whole request body and then closes the
//! connection makes the client's kernel see a reset, and most clients then lose the answer (a
//! 413 or 401 becomes "connection reset"). So bodies over the limit, and bodies of refused
//! requests, are read and dropped — after the answer when the length was declared — up to a cap,
//! past which the connection is given up.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use futures::StreamExt;

use super::ApiError;

/// How long a body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The most bytes drained from a body over its limit.
fn drain_cap(limit: usize) -> usize {
    limit.saturating_mul(2).max(limit.saturating_add(1 << 20))
}

/// Read at most `limit` bytes.
///
/// # Errors
///
/// [`ApiError::PayloadTooLarge`] naming `what` when the body is longer — at once, without reading
/// it, when its `Content-Length` says so; [`ApiError::BadRequest`] when it breaks off or takes
/// longer than a minute.
pub(super) async fn read(body: Body, limit: usize, what: &'static str) -> Result<Bytes, ApiError> {
    // hyper reports `Content-Length` as the exact size (0 when chunked).
    let declared = body.size_hint().lower();
    if declared > limit as u64 {
        // Answer now; drain in the background so a client already sending reads the answer.
        tokio::spawn(discard(body, drain_cap(limit)));
        return Err(ApiError::PayloadTooLarge { what, limit });
    }
    let mut stream = body.into_data_stream();
    // One allocation of the declared size (≤ limit) instead of doubling to it.
    let mut buf = Vec::with_capacity(declared as usize);
    let mut total = 0usize;
    let cap = drain_cap(limit);
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))?;
            total += chunk.len();
            if total <= limit {
                buf.extend_from_slice(&chunk);
            } else if total > cap {
                break;
            }
        }
        Ok::<_, ApiError>(())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{what}: not received within {} s",
                BODY_TIMEOUT.as_secs()
            ))
        })??;
    if total > limit {
        return Err(ApiError::PayloadTooLarge { what, limit });
    }
    Ok(buf.into())
}

/// Read and drop a refused request's body (at most `limit` bytes, a few seconds).
pub(super) async fn discard(body: Body, limit: usize) {
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    let drain = async {
        while let Some(Ok(chunk)) = stream.next().await {
            total += chunk.len();
            if total > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_within_the_limit_and_refuses_beyond_it() {
        assert_eq!(read(Body::from("hello"), 5, "body").await.unwrap(), "hello");
        let e = read(Body::from("hello!"), 5, "command body")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::PayloadTooLarge {
                    what: "command body",
                    limit: 5
                }
            ),
            "{e}"
        );
    }

    /// A body that declares `len` bytes and never sends one (a client that sent only headers).
    struct Silent(u64);

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.0)
        }
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_without_waiting_for_the_body() {
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            read(Body::new(Silent(10 << 30)), 1 << 20, "component"),
        )
        .await
        .expect("answered without the body");
        assert!(
            matches!(
                refused,
                Err(ApiError::PayloadTooLarge {
                    what: "component",
                    limit: 1_048_576
                })
            ),
            "{refused:?}"
        );
        // Within the limit, the reader does wait for the body.
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            read(Body::new(Silent(10)), 1 << 20, "component"),
        )
        .await;
        assert!(waiting.is_err(), "{waiting:?}");
    }
}
