//! Group commit: the write path of every message.
//!
//! Sends are routed to one of N writer tasks by a hash of their room, so one room always
//! has one writer (its messages commit, and so are published, in the order they arrived)
//! while different rooms spread over writers (a slow batch stalls only its share of rooms).
//! A writer takes every job waiting in its queue, up to `max_batch`, and stores them in one
//! transaction: under load the batches grow by themselves and the database sees one commit
//! (one fsync) for hundreds of messages; when idle a message commits alone, at once. The
//! wait is bounded by one transaction of the batch before it.
//!
//! The writer only stores. Delivery happens when the store publishes the committed event
//! (see `registry.rs`), never from here.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chat_domain::{Clock, NewMessage};
use chat_store::{Appended, Repository, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

struct Job {
    message: NewMessage,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
    /// When the connection queued it: the writer measures the wait for a batch.
    queued_at: std::time::Instant,
}

/// A cloneable handle to the writers. Dropping every handle lets the writers finish the
/// jobs already queued and stop (graceful shutdown).
#[derive(Clone)]
pub struct WriterHandle {
    queues: Arc<[mpsc::Sender<Job>]>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the writer has stopped (server shutting down)")]
    Stopped,
}

impl WriterHandle {
    /// Starts `writers` writer tasks; each queue holds `queue_capacity` jobs before senders wait.
    pub fn spawn(
        store: Arc<dyn Repository>,
        clock: Arc<dyn Clock>,
        writers: usize,
        max_batch: usize,
        queue_capacity: usize,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let writers = writers.max(1);
        let mut queues = Vec::with_capacity(writers);
        let mut tasks = Vec::with_capacity(writers);
        for index in 0..writers {
            let (tx, rx) = mpsc::channel(queue_capacity.max(1));
            queues.push(tx);
            // One span per writer: its log lines carry its index.
            let span = tracing::info_span!("writer", index);
            tasks.push(tokio::spawn(
                run(store.clone(), clock.clone(), rx, max_batch.max(1)).instrument(span),
            ));
        }
        (
            Self {
                queues: queues.into(),
            },
            tasks,
        )
    }

    /// Queues a message for its room's writer and returns the receipt to await. Messages
    /// queued one after another by the same caller commit in that order (same room, same
    /// writer, FIFO queue), so a caller that must keep order queues in order and awaits the
    /// receipts concurrently. Waits only while the writer's queue is full.
    pub async fn enqueue(&self, message: NewMessage) -> Result<Receipt, WriteError> {
        let queue = &self.queues[partition(&message, self.queues.len())];
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job {
                message,
                reply,
                queued_at: std::time::Instant::now(),
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(Receipt(answer))
    }
}

/// The promise of a queued message's outcome.
pub struct Receipt(oneshot::Receiver<Result<Appended, StoreError>>);

impl Receipt {
    /// Resolves once the message is committed (or refused).
    pub async fn committed(self) -> Result<Appended, WriteError> {
        self.0
            .await
            .map_err(|_| WriteError::Stopped)?
            .map_err(WriteError::Store)
    }
}

fn partition(message: &NewMessage, partitions: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    message.room_id.hash(&mut hasher);
    (hasher.finish() % partitions as u64) as usize
}

async fn run(
    store: Arc<dyn Repository>,
    clock: Arc<dyn Clock>,
    mut queue: mpsc::Receiver<Job>,
    max_batch: usize,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut jobs, max_batch).await > 0 {
        let started = std::time::Instant::now();
        for job in &jobs {
            metrics::histogram!(crate::metrics::WRITER_QUEUE_SECONDS)
                .record(started.duration_since(job.queued_at).as_secs_f64());
        }
        let (messages, replies): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|j| (j.message, j.reply)).unzip();
        let count = messages.len();
        metrics::histogram!(crate::metrics::BATCH_SIZE).record(count as f64);
        let started = std::time::Instant::now();
        let outcome = store.append_batch(messages, clock.now()).await;
        metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(results) if results.len() == count => {
                let new = results
                    .iter()
                    .filter(|r| matches!(r, Ok(Appended::New(_))))
                    .count();
                metrics::counter!(crate::metrics::MESSAGES_COMMITTED).increment(new as u64);
                for (reply, result) in replies.into_iter().zip(results) {
                    // The sender may have gone away; the message is stored all the same.
                    let _ = reply.send(result);
                }
            }
            Ok(results) => {
                tracing::error!(
                    expected = count,
                    got = results.len(),
                    "store returned a result per message mismatch"
                );
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Database(
                        "batch result count mismatch".into(),
                    )));
                }
            }
            Err(error) => {
                // Nothing of the batch was committed: every sender gets the error and may retry
                // with the same client_msg_id.
                tracing::error!(batch = count, %error, "group commit failed");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
    tracing::debug!("writer stopped");
}
