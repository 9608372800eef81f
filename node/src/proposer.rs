//! Group commit: the writes waiting at this node are proposed as one Raft
//! entry (a [`Batch`]).
//!
//! openraft 0.9 appends and flushes each entry before it takes the next client
//! write, so one entry per command costs one fsync per command on the leader.
//! Here a write waits only while [`MAX_IN_FLIGHT_BATCHES`] batches are being
//! committed; everything that queued meanwhile goes into the next entry. An
//! idle node proposes a lone write at once, so latency at low load is unchanged.

use std::fmt;
use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use qk_raft::{Batch, NodeId, QkNode, Raft};
use qk_state::{Command, Response};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Batches being committed at once; more queue for the next one.
const MAX_IN_FLIGHT_BATCHES: usize = 2;
/// Upper bound on the commands of one entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// Upper bound on the encoded commands of one entry (a single command up to
/// [`MAX_COMMAND_BYTES`] still goes alone).
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Upper bound on one encoded command: larger ones are refused before they
/// reach the log, so that every entry fits in an AppendEntries frame
/// (`qk_net::MAX_FRAME_LEN`, with [`MAX_ENTRIES_PER_APPEND`] entries each).
pub const MAX_COMMAND_BYTES: usize = 2 * 1024 * 1024;
/// Entries per AppendEntries (openraft's `max_payload_entries`).
pub const MAX_ENTRIES_PER_APPEND: u64 = 16;
const _: () = assert!(
    (MAX_ENTRIES_PER_APPEND as usize) * (MAX_COMMAND_BYTES + MAX_BATCH_BYTES)
        < qk_net::MAX_FRAME_LEN as usize
);
/// Writes that may wait for a batch before callers are held back.
const QUEUE_DEPTH: usize = 16 * 1024;

/// Why a write was not committed.
#[derive(Debug)]
pub enum WriteError {
    /// Raft refused or failed the proposal (for instance: not the leader).
    Raft(Box<RaftError<NodeId, ClientWriteError<NodeId, QkNode>>>),
    /// The node is shutting down; the write may or may not have been
    /// committed (a retry with the same request id applies it once).
    Stopped,
    /// The command is larger than one log entry may be; never proposed.
    TooLarge { bytes: usize },
    /// The state machine answered a different number of responses than the
    /// batch had commands (a bug; the commands may have been applied).
    ResponseCount { commands: usize, responses: usize },
}

impl WriteError {
    /// The leader (id, node) to forward to, when this node is not the leader.
    pub fn forward_to_leader(&self) -> Option<(Option<NodeId>, Option<QkNode>)> {
        match self {
            WriteError::Raft(e) => match e.as_ref() {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    Some((f.leader_id, f.leader_node.clone()))
                }
                _ => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Raft(e) => write!(f, "{e}"),
            WriteError::Stopped => write!(f, "the node is shutting down"),
            WriteError::TooLarge { bytes } => write!(
                f,
                "the command is {bytes} bytes encoded, over the {MAX_COMMAND_BYTES}-byte limit of one log entry; send less in one request"
            ),
            WriteError::ResponseCount {
                commands,
                responses,
            } => write!(
                f,
                "the state machine returned {responses} responses for {commands} commands"
            ),
        }
    }
}

/// The log index of the entry that carried the command, and its response.
pub type WriteResult = Result<(u64, Response), WriteError>;

struct Pending {
    command: Command,
    encoded_bytes: usize,
    reply: oneshot::Sender<WriteResult>,
}

/// Hands commands to the batching task. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl fmt::Debug for Proposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

impl Proposer {
    /// Starts the batching task; it ends when every `Proposer` is dropped.
    pub fn spawn(raft: Raft) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(raft, rx));
        Proposer { queue }
    }

    /// Proposes `command` (in the next batch) and waits until it is applied.
    pub async fn write(&self, command: Command) -> WriteResult {
        let encoded_bytes = encoded_len(&command);
        check_size(encoded_bytes)?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            command,
            encoded_bytes,
            reply,
        };
        if self.queue.send(pending).await.is_err() {
            return Err(WriteError::Stopped);
        }
        answer.await.unwrap_or(Err(WriteError::Stopped))
    }
}

async fn run(raft: Raft, mut queue: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BATCHES));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (batch, rest) = take_batch(first, &mut queue);
        carried = rest;
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(slot);
        });
    }
}

/// The command's encoded size, counted without encoding it (the log
/// encodes it once, when the entry is written).
fn encoded_len(command: &Command) -> usize {
    postcard::experimental::serialized_size(command).unwrap_or(usize::MAX)
}

fn check_size(encoded_bytes: usize) -> Result<(), WriteError> {
    if encoded_bytes > MAX_COMMAND_BYTES {
        return Err(WriteError::TooLarge {
            bytes: encoded_bytes,
        });
    }
    Ok(())
}

/// `first` plus whatever is queued now, within the batch bounds. Returns the
/// first write that did not fit, for the next batch.
fn take_batch(
    first: Pending,
    queue: &mut mpsc::Receiver<Pending>,
) -> (Vec<Pending>, Option<Pending>) {
    let mut bytes = first.encoded_bytes;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_COMMANDS {
        let Ok(next) = queue.try_recv() else {
            break;
        };
        if bytes.saturating_add(next.encoded_bytes) > MAX_BATCH_BYTES {
            return (batch, Some(next));
        }
        bytes += next.encoded_bytes;
        batch.push(next);
    }
    (batch, None)
}

async fn commit(raft: &Raft, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<WriteResult>>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let commands_len = commands.len();
    match raft.client_write(Batch(commands)).await {
        Ok(written) if written.data.0.len() == commands_len => {
            let index = written.log_id.index;
            for (reply, response) in replies.into_iter().zip(written.data.0) {
                let _ = reply.send(Ok((index, response)));
            }
        }
        Ok(written) => {
            let responses = written.data.0.len();
            tracing::error!(
                commands = commands_len,
                responses,
                "state machine answered a batch with the wrong number of responses"
            );
            for reply in replies {
                let _ = reply.send(Err(WriteError::ResponseCount {
                    commands: commands_len,
                    responses,
                }));
            }
        }
        Err(RaftError::Fatal(Fatal::Stopped)) => {
            for reply in replies {
                let _ = reply.send(Err(WriteError::Stopped));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(WriteError::Raft(Box::new(e.clone()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counted_size_is_the_encoded_size() {
        let command = Command {
            request_id: qk_state::RequestId([7; 16]),
            time_ms: 1_700_000_000_000,
            principal: "admin".into(),
            op: qk_state::Operation::SetTag {
                name: "payments".into(),
                tag: "team".into(),
                value: Some(vec![0xAB; 300]),
            },
            proof: None,
        };
        let encoded = postcard::to_allocvec(&command).expect("encodes");
        assert_eq!(encoded_len(&command), encoded.len());
        assert!(encoded.len() > 300);
    }

    #[test]
    fn a_command_over_the_entry_limit_is_refused_with_its_size() {
        check_size(MAX_COMMAND_BYTES).expect("at the limit");
        let Err(e) = check_size(MAX_COMMAND_BYTES + 1) else {
            panic!("one byte over the limit was accepted");
        };
        let text = e.to_string();
        assert!(
            text.contains(&(MAX_COMMAND_BYTES + 1).to_string()),
            "{text}"
        );
        assert!(text.contains("send less"), "{text}");
        assert!(e.forward_to_leader().is_none(), "never forwarded");
    }
}
