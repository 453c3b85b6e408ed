//! Faults the consistency testbed injects into an edge's replication: a delay (fixed plus
//! uniform jitter) between a batch's arrival and its application, a pause, and a forced
//! resynchronisation from a snapshot. They act at the [`Upstream`] seam: [`FaultyUpstream`]
//! wraps the edge's upstream and shapes the replication stream it hands the follower, which
//! knows nothing of them. They are only reachable through the admin endpoint a node serves when
//! its config enables the testbed; with none set, the stream passes through untouched.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use driftkv_core::faults::FaultSettings;
use driftkv_core::upstream::{
    BatchOutcome, EventStream, ReplicationEvent, SnapshotStream, Subscription, Upstream,
    WriteRequest,
};
use driftkv_core::{KvError, LiveValue, Namespace, NamespaceId};
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// An edge's fault switches, shared by the admin endpoint and the [`FaultyUpstream`].
#[derive(Debug, Default)]
pub struct Faults {
    settings: watch::Sender<FaultSettings>,
    /// Bumped to make the follower drop its stream and rebuild from a snapshot.
    resyncs: watch::Sender<u64>,
}

impl Faults {
    /// The faults in force.
    pub fn settings(&self) -> FaultSettings {
        self.settings.borrow().clone()
    }

    /// Puts `settings` in force (and clears a pause if they do).
    pub fn set(&self, settings: FaultSettings) {
        self.settings.send_replace(settings);
    }

    /// Drops the replication stream and rebuilds the replica from a snapshot.
    pub fn resync(&self) {
        self.resyncs.send_modify(|n| *n += 1);
    }
}

/// How often a paused stream tells the follower it is still there (central's own heartbeat
/// interval), so that a pause is not taken for a dead connection.
const PAUSED_HEARTBEAT: Duration = Duration::from_secs(1);

/// An [`Upstream`] whose replication stream suffers the [`Faults`] in force. Every other call
/// passes through.
pub struct FaultyUpstream {
    inner: Arc<dyn Upstream>,
    faults: Arc<Faults>,
}

impl FaultyUpstream {
    /// `inner`, with `faults` acting on its replication streams.
    pub fn new(inner: Arc<dyn Upstream>, faults: Arc<Faults>) -> Self {
        FaultyUpstream { inner, faults }
    }
}

#[async_trait]
impl Upstream for FaultyUpstream {
    async fn write_batch(
        &self,
        writer: Option<u64>,
        requests: Vec<WriteRequest>,
    ) -> Result<BatchOutcome, KvError> {
        self.inner.write_batch(writer, requests).await
    }

    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError> {
        self.inner.create_namespace(account_id, title).await
    }

    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError> {
        self.inner.rename_namespace(account_id, id, title).await
    }

    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError> {
        self.inner.delete_namespace(account_id, id).await
    }

    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
    ) -> Result<Option<LiveValue>, KvError> {
        self.inner.get(account_id, id, key).await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<EventStream, KvError> {
        let inner = self.inner.subscribe(subscription).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(shape(inner, self.faults.clone(), tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn snapshot(&self, node_id: u64) -> Result<SnapshotStream, KvError> {
        self.inner.snapshot(node_id).await
    }
}

type Events = mpsc::Sender<Result<ReplicationEvent, KvError>>;

/// Passes `inner`'s events on to `tx` under the faults in force: a delayed event waits in
/// `held` until it is due (never before the one ahead of it: the log applies in order), a pause
/// stops reading (and sends heartbeats meanwhile), a resync ends the stream with
/// "snapshot needed". Ends when either side does.
async fn shape(mut inner: EventStream, faults: Arc<Faults>, tx: Events) {
    let mut settings = faults.settings.subscribe();
    let mut resyncs = faults.resyncs.subscribe();
    let mut held: VecDeque<(Instant, ReplicationEvent)> = VecDeque::new();
    let mut durable = 0;
    let resync = |tx: &Events| {
        tracing::info!("resynchronising from a snapshot, as the testbed asked");
        let needed = ReplicationEvent::SnapshotNeeded { oldest_retained: 0 };
        let tx = tx.clone();
        async move {
            let _ = tx.send(Ok(needed)).await;
        }
    };
    loop {
        let now = settings.borrow_and_update().clone();
        if now.paused {
            tokio::select! {
                changed = settings.changed() => if changed.is_err() { return },
                changed = resyncs.changed() => {
                    if changed.is_ok() {
                        resync(&tx).await;
                    }
                    return;
                }
                () = tokio::time::sleep(PAUSED_HEARTBEAT) => {
                    let beat = ReplicationEvent::Heartbeat { durable_sequence: durable };
                    if tx.send(Ok(beat)).await.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            continue;
        }
        let due = held.front().map(|(at, _)| *at);
        tokio::select! {
            event = inner.next() => {
                let Some(event) = event else { return };
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let ReplicationEvent::Heartbeat { durable_sequence } = &event {
                    durable = *durable_sequence;
                }
                let delay = match event {
                    ReplicationEvent::Entries(_) => now.sample_delay(),
                    _ => Duration::ZERO,
                };
                if delay.is_zero() && held.is_empty() {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                } else {
                    let at = held
                        .back()
                        .map_or(Instant::now() + delay, |(ahead, _)| (*ahead).max(Instant::now() + delay));
                    held.push_back((at, event));
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let (_, event) = held.pop_front().expect("a held event");
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            changed = settings.changed() => if changed.is_err() { return },
            changed = resyncs.changed() => {
                if changed.is_ok() {
                    resync(&tx).await;
                }
                return;
            }
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_fixed_part_plus_jitter() {
        let settings = FaultSettings {
            delay_ms: 100,
            jitter_ms: 50,
            paused: false,
        };
        for _ in 0..200 {
            let delay = settings.sample_delay();
            assert!(delay >= Duration::from_millis(100) && delay <= Duration::from_millis(150));
        }
        assert_eq!(FaultSettings::default().sample_delay(), Duration::ZERO);
    }
}
