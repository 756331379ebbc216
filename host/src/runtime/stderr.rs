//! A bounded sink for guest stderr: keeps up to a cap per call, counts and drops the rest, and
//! never fails the guest's write (a chatty guest is not a broken guest).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Default)]
struct Inner {
    buf: Vec<u8>,
    dropped: u64,
}

/// Shared handle: the guest writes through clones, the host drains after each call.
#[derive(Clone)]
pub(crate) struct StderrCapture {
    inner: Arc<Mutex<Inner>>,
    cap: usize,
}

impl StderrCapture {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            inner: Arc::default(),
            cap,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(inner.buf.len());
        let keep = room.min(bytes.len());
        inner.buf.extend_from_slice(&bytes[..keep]);
        inner.dropped += (bytes.len() - keep) as u64;
    }

    /// What the guest wrote since the last take (lossy UTF-8) and how many bytes were dropped.
    pub(crate) fn take(&self) -> (String, u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&inner.buf).into_owned();
        let dropped = inner.dropped;
        inner.buf.clear();
        inner.dropped = 0;
        (text, dropped)
    }
}

impl IsTerminal for StderrCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrCapture {
    async fn ready(&mut self) {}
}

impl OutputStream for StderrCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for StderrCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_cap_and_counts_the_rest() {
        let mut s = StderrCapture::new(4);
        OutputStream::write(&mut s, Bytes::from_static(b"abcdef")).unwrap();
        assert_eq!(s.take(), ("abcd".to_string(), 2));
        assert_eq!(s.take(), (String::new(), 0));
        OutputStream::write(&mut s, Bytes::from_static(b"xy")).unwrap();
        assert_eq!(s.take(), ("xy".to_string(), 0));
    }
}
