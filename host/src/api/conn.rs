//! Connections: admission, and the timeouts that keep slow, idle or non-reading clients from
//! holding the host.
//!
//! Admission: at most `connections_max` open connections in all, and at most
//! `connections_per_address_max` from one client address, so one client cannot take every
//! slot. A connection over either limit is answered `503` once its request head has been read
//! (so the client sees the answer rather than a reset) and closed; at most
//! [`REFUSALS_ANSWERED_MAX`] are being answered at once, beyond that they are closed at once.
//!
//! Timeouts: hyper's header-read timeout bounds the wait for every request head, which covers
//! both a slowloris head and an idle keep-alive connection (waiting for the next head is
//! waiting for a head); a body must arrive within `body_read_timeout`; and [`Watched`] fails a
//! connection whose writes make no progress for `write_stall_timeout` (a client that does not
//! read its answers), which frees the answer it held. A long answer that keeps moving is never
//! cut: only a stall is.
//!
//! Invariant: every admitted connection holds one [`Ticket`] until it closes; the per-address
//! counts are the tickets alive.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connection limits of a host (each a `sluice serve` flag).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub connections_max: usize,
    pub connections_per_address_max: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub write_stall_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            connections_max: 1024,
            connections_per_address_max: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Host,
    Address,
}

/// Counts open connections, in all and per client address.
pub struct Admission {
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted connection's place; released when dropped.
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    addr: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut m = self.admission.per_address.lock().expect("poisoned");
        if let Some(n) = m.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(limits.connections_max.max(1))),
            per_address: Mutex::new(HashMap::new()),
            limits,
        })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Admits a connection from `addr`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Ticket, Refusal> {
        let mut m = self.per_address.lock().expect("poisoned");
        let n = m.entry(addr).or_insert(0);
        if *n >= self.limits.connections_per_address_max.max(1) {
            if *n == 0 {
                m.remove(&addr);
            }
            return Err(Refusal::Address);
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            if *n == 0 {
                m.remove(&addr);
            }
            return Err(Refusal::Host);
        };
        *n += 1;
        Ok(Ticket {
            _slot: slot,
            admission: Arc::clone(self),
            addr,
        })
    }
}

/// Refused connections being answered at once; beyond, a refused connection is closed.
pub const REFUSALS_ANSWERED_MAX: usize = 256;

/// The most of a refused connection's request read before answering it.
const REFUSED_HEAD_BYTES_MAX: usize = 16 << 10;
/// How long a refused connection may take to send its head, and to take the answer.
const REFUSED_WAIT: Duration = Duration::from_secs(2);

/// Answers a refused connection: reads its request head (bounded in bytes and time), then a
/// 503 with `Retry-After`, then closes.
pub async fn refuse(mut stream: tokio::net::TcpStream, refusal: Refusal, limits: &ConnLimits) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (code, message) = match refusal {
        Refusal::Host => (
            "too-many-connections",
            format!(
                "the host already has the connections_max limit of {} open connections",
                limits.connections_max
            ),
        ),
        Refusal::Address => (
            "too-many-connections-from-address",
            format!(
                "this client address already has the connections_per_address_max limit of {} open connections",
                limits.connections_per_address_max
            ),
        ),
    };
    let read_head = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while buf.len() < REFUSED_HEAD_BYTES_MAX && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    if !tokio::time::timeout(REFUSED_WAIT, read_head)
        .await
        .unwrap_or(false)
    {
        return;
    }
    let body = super::ApiError::new(hyper::StatusCode::SERVICE_UNAVAILABLE, code, message)
        .to_json()
        .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSED_WAIT, async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Drain what else the client sent, so closing does not reset the answer away.
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// An I/O stream whose writes fail with `TimedOut` once they made no progress for `stall`.
pub struct Watched<T> {
    inner: T,
    stall: Duration,
    since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            since: None,
        }
    }

    /// After a write poll: progress resets the watch; `Pending` starts it (or checks it).
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.since = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = self.stall;
                let sleep = self
                    .since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if sleep.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client took nothing for {} ms", stall.as_millis()),
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_slot() {
        let a = Admission::new(ConnLimits {
            connections_max: 3,
            connections_per_address_max: 2,
            ..ConnLimits::default()
        });
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let t1 = a.admit(x).unwrap();
        let _t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::Address));
        let _t3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).err(), Some(Refusal::Host));
        drop(t1);
        assert!(
            a.admit(x).is_ok(),
            "a closed connection frees its address's share"
        );
        assert_eq!(a.per_address.lock().unwrap().get(&x), Some(&1));
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_stall_timeout() {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(1024);
        let mut w = Watched::new(server, Duration::from_millis(50));
        let started = std::time::Instant::now();
        let e = w.write_all(&vec![7u8; 1 << 20]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(client);
        // A reader that keeps reading is never cut, however long the answer.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut w = Watched::new(server, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k,
                }
            }
        });
        w.write_all(&vec![7u8; 256 << 10]).await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), 256 << 10);
    }
}
