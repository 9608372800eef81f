//! Framing: one request and one response per bidirectional QUIC stream, each
//! a `u32` big-endian length followed by that many body bytes (postcard).
//!
//! Check, then parse: the length is checked against [`MAX_FRAME_LEN`] before
//! anything is allocated, and the body buffer grows only as bytes actually
//! arrive, so a peer announcing a large frame and sending nothing costs no
//! memory.

use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};

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
    let len = check_len(u64::from(len))? as usize;
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK);
        match recv.read_chunk(want, true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
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
