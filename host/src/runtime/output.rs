//! Guest stdout/stderr: a pipe that keeps the newest bytes and never refuses a write.
//!
//! A guest that prints must never trap for it (a 64 KiB pipe that filled up made every later
//! `print!` fail and the guest abort). [`GuestOutput`] keeps the last `capacity` bytes — what a
//! panic message or a failure needs — and drops older ones. Invariant: `write` always
//! succeeds and the kept bytes are a suffix of everything written since the last `clear`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// See the module docs.
#[derive(Clone)]
pub struct GuestOutput {
    capacity: usize,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tail: Arc::default(),
        }
    }

    /// The newest bytes written.
    pub fn contents(&self) -> Vec<u8> {
        self.tail.lock().expect("poisoned").clone()
    }

    /// Forgets what was written (after each call, so a failure shows its own output).
    pub fn clear(&self) {
        self.tail.lock().expect("poisoned").clear();
    }

    fn push(&self, bytes: &[u8]) {
        let mut tail = self.tail.lock().expect("poisoned");
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let over = (tail.len() + bytes.len()).saturating_sub(self.capacity);
        tail.drain(..over);
        tail.extend_from_slice(bytes);
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(self.capacity.max(1))
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_and_never_refuses() {
        let mut out = GuestOutput::new(8);
        for chunk in [&b"hello "[..], b"world", b"!"] {
            out.write(Bytes::copy_from_slice(chunk)).unwrap();
        }
        assert_eq!(out.contents(), b"o world!");
        out.write(Bytes::from(vec![b'x'; 100])).unwrap();
        assert_eq!(out.contents(), b"xxxxxxxx");
        out.clear();
        assert!(out.contents().is_empty());
    }
}
