//! Framing: one request and one response per bidirectional QUIC stream, each
//! a `u32` big-endian length followed by that many body bytes (postcard).
//!
//! Check, then parse: the length is checked against [`MAX_FRAME_LEN`] before
//! anything is allocated, and the body buffer grows only as bytes actually
//! arrive, so a peer announcing a large frame and sending nothing costs no
//! memory.

use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest frame body accepted or sent: 64 MiB. The biggest legitimate
/// messages are AppendEntries batches and InstallSnapshot chunks (openraft
/// sends 3 MiB chunks by default); 64 MiB leaves ample room for a state
/// snapshot sent whole while keeping what one request can make a node buffer
/// bounded. openraft is told to split AppendEntries that exceed it.
pub const MAX_FRAME_LEN: u32 = 64 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Largest piece read from the stream at once; the buffer grows by at most
/// this much per read, tracking what the peer really sent.
const READ_CHUNK: usize = 64 * 1024;

/// Framing failures on one stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; send smaller batches or \
         snapshot chunks"
    )]
    TooLarge { len: u64, max: u32 },
    #[error("the stream ended after {got} of {expected} bytes (truncated frame)")]
    Truncated { expected: u64, got: u64 },
    #[error("the stream ended before a frame started")]
    Empty,
    #[error("reading the stream failed: {0}")]
    Read(#[from] ReadError),
    #[error("writing the stream failed: {0}")]
    Write(#[from] WriteError),
    #[error("the stream was already closed")]
    Closed,
    #[error("the server holds as many request bytes as it accepts at once; retry in a moment")]
    Busy,
}

impl FrameError {
    /// Whether the error came from the connection rather than this stream's
    /// contents (the connection should be dropped and redialed).
    pub fn is_connection_lost(&self) -> bool {
        self.connection_error().is_some()
    }

    /// The connection's error, when the connection (not the stream) failed.
    pub fn connection_error(&self) -> Option<&quinn::ConnectionError> {
        match self {
            FrameError::Read(ReadError::ConnectionLost(e))
            | FrameError::Write(WriteError::ConnectionLost(e)) => Some(e),
            _ => None,
        }
    }
}

/// Checks a length against [`MAX_FRAME_LEN`].
pub fn check_len(len: u64) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(l) if l <= MAX_FRAME_LEN => Ok(l),
        _ => Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        }),
    }
}

/// Writes one frame; does not finish the stream.
pub async fn write_frame(send: &mut SendStream, body: &[u8]) -> Result<(), FrameError> {
    let len = check_len(body.len() as u64)?;
    send.write_all(&len.to_be_bytes()).await?;
    send.write_all(body).await?;
    Ok(())
}

/// Reads and checks a frame header; returns the body length.
pub async fn read_frame_header(recv: &mut RecvStream) -> Result<u32, FrameError> {
    let mut header = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(FrameError::Empty),
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(FrameError::Truncated {
                expected: LEN_PREFIX as u64,
                got: got as u64,
            })
        }
        Err(ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    check_len(u64::from(u32::from_be_bytes(header)))
}

/// Reads a body of `len` bytes (already checked by [`read_frame_header`]).
pub async fn read_frame_body(recv: &mut RecvStream, len: u32) -> Result<Vec<u8>, FrameError> {
    read_frame_body_within(recv, len, None).await
}

/// Bytes of a shared budget held by one frame being read, taken chunk by
/// chunk as the body arrives (a header announcing a large frame takes
/// nothing by itself), at most `cap` in all; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Semaphore>,
    cap: usize,
    held: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    pub fn new(budget: Arc<Semaphore>, cap: usize) -> Reservation {
        Reservation {
            budget,
            cap,
            held: None,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Takes `want` more bytes, or fails with [`FrameError::Busy`] when the
    /// budget has not that many left: a frame never waits while holding
    /// part of the budget (two waiting frames could hold it all between
    /// them). Past the cap nothing more is taken, so one frame larger than
    /// the whole budget can still be read.
    fn take(&mut self, want: usize) -> Result<(), FrameError> {
        let more = want.min(self.cap.saturating_sub(self.held()));
        if more == 0 {
            return Ok(());
        }
        let more = u32::try_from(more).map_err(|_| FrameError::Busy)?;
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| FrameError::Busy)?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

/// [`read_frame_body`], taking each chunk's bytes from `reservation` (when
/// given) as it is received; a full budget ends the read with
/// [`FrameError::Busy`].
pub async fn read_frame_body_within(
    recv: &mut RecvStream,
    len: u32,
    mut reservation: Option<&mut Reservation>,
) -> Result<Vec<u8>, FrameError> {
    let len = check_len(u64::from(len))? as usize;
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK);
        match recv.read_chunk(want, true).await? {
            Some(chunk) => {
                // Counted once received (QUIC flow control bounds what a
                // stream may have buffered before): the reservation follows
                // the bytes held, never the length announced.
                if let Some(r) = reservation.as_deref_mut() {
                    r.take(chunk.bytes.len())?;
                }
                body.extend_from_slice(&chunk.bytes)
            }
            None => {
                return Err(FrameError::Truncated {
                    expected: len as u64,
                    got: body.len() as u64,
                })
            }
        }
    }
    Ok(body)
}

/// Reads one whole frame.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, FrameError> {
    let len = read_frame_header(recv).await?;
    read_frame_body(recv, len).await
}
