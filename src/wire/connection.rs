//! A client connection after the startup handshake: buffered framing in, buffered
//! messages out. Writes accumulate in `out` and reach the socket on `flush`, which
//! awaits the socket: a client that stops reading stops the producer (backpressure).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use pgwire::messages::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::error::{PgError, SqlState};
use crate::wire::frame::{self, Frame, Split};
use crate::wire::messages;

/// Plain TCP or TLS; both are Unpin so delegation is direct.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Bytes the output buffer may hold before a result stream waits for the socket.
pub const FLUSH_THRESHOLD: usize = 128 * 1024;
/// Buffers larger than this are released when the connection goes idle, so an idle
/// connection that once streamed a big result costs little.
const IDLE_BUFFER: usize = 16 * 1024;
/// Most bytes reserved in one step while a large message arrives: a client claiming
/// a 1 GB message cannot make the server allocate it up front.
const READ_CHUNK: usize = 1024 * 1024;

pub struct Connection {
    stream: ClientStream,
    input: BytesMut,
    pub out: BytesMut,
    /// A copy of everything sent while recording (for the result cache).
    recording: Option<Recording>,
    /// Bytes written to the socket and read from it (metrics, audit, SHOW STATS).
    flushed: u64,
    received: u64,
}

/// Output captured since `start_recording`: `from` is where the unrecorded part of
/// `out` begins; past `limit` bytes the copy is dropped and `overflow` set.
struct Recording {
    copy: BytesMut,
    from: usize,
    limit: usize,
    overflow: bool,
}

impl Recording {
    fn capture(&mut self, out: &[u8]) {
        let new = out.get(self.from..).unwrap_or_default();
        if !self.overflow {
            if self.copy.len() + new.len() > self.limit {
                self.overflow = true;
                self.copy = BytesMut::new();
            } else {
                self.copy.extend_from_slice(new);
            }
        }
        self.from = out.len();
    }
}

/// Why a session ends: the client went away, or broke the protocol.
#[derive(Debug)]
pub enum Disconnect {
    Io(io::Error),
    Protocol(PgError),
}

impl From<io::Error> for Disconnect {
    fn from(e: io::Error) -> Disconnect {
        Disconnect::Io(e)
    }
}

impl Connection {
    pub fn new(stream: ClientStream) -> Connection {
        Connection {
            stream,
            input: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(4096),
            recording: None,
            flushed: 0,
            received: 0,
        }
    }

    /// Starts copying everything sent from now on, up to `limit` bytes.
    pub fn start_recording(&mut self, limit: usize) {
        self.recording = Some(Recording {
            copy: BytesMut::new(),
            from: self.out.len(),
            limit,
            overflow: false,
        });
    }

    /// Stops recording: the bytes sent since `start_recording`, or `None` when they
    /// passed the limit.
    pub fn finish_recording(&mut self) -> Option<BytesMut> {
        let mut r = self.recording.take()?;
        r.capture(&self.out);
        (!r.overflow).then_some(r.copy)
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// The negotiated TLS version (`TLSv1_3`), or `None` for plaintext.
    pub fn tls_version(&self) -> Option<&'static str> {
        match &self.stream {
            ClientStream::Tls(t) => t.get_ref().1.protocol_version().and_then(|v| v.as_str()),
            ClientStream::Plain(_) => None,
        }
    }

    /// The local end of the connection (`SHOW CLIENTS`' local_addr).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.stream {
            ClientStream::Tls(t) => t.get_ref().0.local_addr().ok(),
            ClientStream::Plain(s) => s.local_addr().ok(),
        }
    }

    /// Bytes sent so far, the unflushed output included.
    pub fn bytes_sent(&self) -> u64 {
        self.flushed + self.out.len() as u64
    }

    /// Bytes read from the client so far.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Reads one tagged message; `Ok(None)` on a clean end of stream between messages.
    pub async fn read_frame(
        &mut self,
        max_len: impl Fn(u8) -> usize,
    ) -> Result<Option<Frame>, Disconnect> {
        loop {
            match frame::split_frame(&mut self.input, &max_len).map_err(Disconnect::Protocol)? {
                Split::Whole(frame) => return Ok(Some(frame)),
                Split::NeedBody(missing) => self.input.reserve(missing.min(READ_CHUNK)),
                Split::NeedHeader => self.input.reserve(4096),
            }
            let n = self.stream.read_buf(&mut self.input).await?;
            self.received += n as u64;
            if n == 0 {
                if self.input.is_empty() {
                    return Ok(None);
                }
                return Err(Disconnect::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a message",
                )));
            }
        }
    }

    /// Whether a whole frame is already buffered, so reading would not wait.
    pub fn has_buffered_frame(&self) -> bool {
        frame::has_whole_frame(&self.input)
    }

    /// Appends a pgwire backend message to the output buffer.
    /// Sends a message that is not part of the answer being recorded (a
    /// ParameterStatus the session adds while an upstream answer is recorded for
    /// the result cache): a later hit must not replay it.
    pub fn send_unrecorded<M: Message>(&mut self, message: &M) {
        if let Some(r) = self.recording.as_mut() {
            r.capture(&self.out);
        }
        self.send(message);
        if let Some(r) = self.recording.as_mut() {
            r.from = self.out.len();
        }
    }

    pub fn send<M: Message>(&mut self, message: &M) {
        if let Err(e) = message.encode(&mut self.out) {
            // Only size limits can fail here; report instead of sending a broken frame.
            tracing::error!(error = %e, "cannot encode backend message");
            let e = PgError::new(
                SqlState::INTERNAL_ERROR,
                format!("cannot encode reply: {e}"),
            );
            messages::error_response(&mut self.out, &e);
        }
    }

    pub fn send_error(&mut self, e: &PgError) {
        messages::error_response(&mut self.out, e);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            if let Some(r) = self.recording.as_mut() {
                r.capture(&self.out);
                r.from = 0;
            }
            self.stream.write_all(&self.out).await?;
            self.flushed += self.out.len() as u64;
            self.out.clear();
        }
        self.stream.flush().await
    }

    /// Flushes only when enough output is pending to be worth a syscall.
    pub async fn flush_if_full(&mut self) -> io::Result<()> {
        if self.out.len() >= FLUSH_THRESHOLD {
            self.flush().await?;
        }
        Ok(())
    }

    /// Returns large buffers to the allocator while the session waits for a client.
    pub fn shrink_idle(&mut self) {
        if self.out.is_empty() && self.out.capacity() > IDLE_BUFFER {
            self.out = BytesMut::with_capacity(4096);
        }
        if self.input.is_empty() && self.input.capacity() > IDLE_BUFFER {
            self.input = BytesMut::with_capacity(4096);
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
