//! TCP for the gRPC legs, with writes coalesced under TLS.
//!
//! hyper's HTTP/2 writes a unary call as several flushes: the request's HEADERS go
//! out when the stream opens, its DATA and END_STREAM once the body task has run, and
//! a DATA frame of more than 256 bytes is flushed on its own before the next frame.
//! rustls seals each write into its own record and tokio-rustls sends each record
//! with its own `writev`: a logon made 8 to 10 of them, and on loopback each send
//! also runs the receiver's TCP path. [`Coalesced`] sits between TLS
//! and the socket: TLS records pile up in a buffer, and a flush sends them all with
//! one write. A flush with less than 16 KiB waiting first yields to the runtime
//! once, so the frames another task is about to queue on the same connection (the
//! body after the headers, the other streams' answers) join the same write.
//!
//! Plaintext still goes through TLS record by record; only the system calls are
//! shared (about 6 writes a logon instead of 8 to 10, BENCHMARKS.md). Reads are
//! untouched.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, TryStreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http::Uri;
use tonic::transport::server::{Connected, TcpIncoming};

/// Past this many buffered bytes a write goes to the socket without waiting for a
/// flush, so a writer that never flushes cannot grow the buffer without bound.
/// HTTP/2 flushes after every DATA frame that fills its 16 KiB, so on the gRPC legs
/// a bulk transfer (an import, a catch-up of shipped events) goes frame by frame and
/// the buffer stays below this.
const COALESCE_LIMIT: usize = 64 * 1024;

/// A flush yields only while less than this is waiting: a full 16 KiB HTTP/2 frame
/// of a bulk transfer fills a system call by itself, and holding it back only
/// delays the stream.
const YIELD_BELOW: usize = 16 * 1024;

/// What an idle connection keeps of its buffer: a city's endpoints each hold a
/// connection to their gateway, and one bulk answer should not pin 64 KiB on each.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A byte stream whose writes wait in a buffer until the next flush.
#[derive(Debug)]
pub struct Coalesced<T> {
    io: T,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken (a write can be partial).
    sent: usize,
    /// This flush has already yielded once; the next poll writes.
    yielded: bool,
}

impl<T> Coalesced<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Sends the whole buffer, resuming after a partial write.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n =
                std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.buf.shrink_to(KEEP_CAPACITY);
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: sends what is buffered once the limit would
    /// be passed. Returns whether `len` bytes now fit the buffer.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.buf.len() + len > COALESCE_LIMIT {
            std::task::ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(len <= COALESCE_LIMIT))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !std::task::ready!(self.poll_room(cx, data.len()))? {
            return Pin::new(&mut self.io).poll_write(cx, data);
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if !std::task::ready!(self.poll_room(cx, len))? {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sent < self.buf.len() {
            if !self.yielded && self.buf.len() - self.sent < YIELD_BELOW {
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(self.poll_send(cx))?;
        }
        self.yielded = false;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The server side: accepted connections, without Nagle's delay (an answer would
/// otherwise wait ~40 ms for the client's delayed ACK), coalesced.
pub fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<Coalesced<TcpStream>>> + Send + 'static {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map_ok(Coalesced::new)
}

/// Whether `host` (a URL's host, IPv6 brackets allowed) is this machine: `localhost`
/// or a loopback address. An address, not a name that merely starts like one
/// (`127.evil.example`).
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The client side, for `Endpoint::connect_with_connector`: tonic adds TLS on top for
/// `https://` URLs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connector;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Coalesced<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
                })?
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(Coalesced::new(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// One poll of `flush`, to see whether it yields.
    async fn poll_flush_once(client: &mut Coalesced<DuplexStream>) -> Poll<io::Result<()>> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *client).poll_flush(cx))).await
    }

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_leave_in_one_piece() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut client = Coalesced::new(client);
        client.write_all(b"HEADERS ").await.unwrap();
        client.write_all(b"DATA ").await.unwrap();
        client.write_all(b"END").await.unwrap();
        let mut got = [0u8; 16];
        let early = tokio::time::timeout(std::time::Duration::ZERO, server.read(&mut got)).await;
        assert!(early.is_err(), "nothing may reach the peer before a flush");
        client.flush().await.unwrap();
        let n = server.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"HEADERS DATA END");
    }

    #[tokio::test]
    async fn a_flush_yields_once_so_frames_queued_meanwhile_join_the_write() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut client = Coalesced::new(client);
        client.write_all(b"HEADERS ").await.unwrap();
        let first = poll_flush_once(&mut client).await;
        assert!(first.is_pending(), "the first poll of a flush yields");
        client.write_all(b"DATA").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 16];
        let n = server.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"HEADERS DATA", "one write carries both");
        // Nothing buffered: a flush goes straight through.
        let idle = poll_flush_once(&mut client).await;
        assert!(idle.is_ready());
    }

    #[tokio::test]
    async fn a_flush_of_a_full_frame_does_not_wait() {
        let (client, mut server) = tokio::io::duplex(4 * YIELD_BELOW);
        let mut client = Coalesced::new(client);
        client.write_all(&vec![1u8; YIELD_BELOW]).await.unwrap();
        let flushed = poll_flush_once(&mut client).await;
        assert!(matches!(flushed, std::task::Poll::Ready(Ok(()))));
        let mut got = vec![0u8; YIELD_BELOW];
        server.read_exact(&mut got).await.unwrap();
    }

    #[tokio::test]
    async fn a_bulk_write_streams_past_the_limit_without_a_flush() {
        let (client, mut server) = tokio::io::duplex(4 * COALESCE_LIMIT);
        let mut client = Coalesced::new(client);
        let bulk = vec![7u8; COALESCE_LIMIT + 1];
        client.write_all(b"head").await.unwrap();
        client.write_all(&bulk).await.unwrap();
        let mut got = vec![0u8; 4 + bulk.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_buffered() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut client = Coalesced::new(client);
        client.write_all(b"close_notify").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"close_notify");
    }
}
