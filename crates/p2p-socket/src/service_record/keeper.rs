//! Putting a share's service record on the DHT and keeping it there, and reading a sharer's.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::{RecordError, ServiceRecord};
use crate::dht::{DhtNode, NetworkOptions};
use crate::error::{Error, Result};
use crate::identity::{KeyPair, PublicKey};
use crate::running::Running;

/// Holesail servers put their record again every 50 minutes; DHT nodes keep mutable records
/// for 48 hours, so this only matters when the nodes closest to the key change.
const REFRESH_EVERY: Duration = Duration::from_secs(50 * 60);

/// Longest one put or get may take, joining the DHT included.
const DHT_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps a share's [`ServiceRecord`] on the DHT, signed with the share's key pair, until
/// closed. It joins the DHT only to put the record (at start, then every 50 minutes), so
/// between puts it holds no socket.
pub struct RecordKeeper {
    running: Running,
}

impl RecordKeeper {
    /// Puts the record (returning once DHT nodes stored it) and keeps refreshing it.
    pub async fn start(
        network: &NetworkOptions,
        key_pair: KeyPair,
        record: ServiceRecord,
    ) -> Result<RecordKeeper> {
        let seq = put(network, &key_pair, &record).await?;
        info!(
            seq,
            port = record.port,
            udp = record.udp,
            "service record put on the DHT"
        );
        let network = network.clone();
        let running = Running::spawn(move |mut stop| async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(REFRESH_EVERY) => {}
                }
                match put(&network, &key_pair, &record).await {
                    Ok(seq) => debug!(seq, "service record refreshed"),
                    Err(e) => {
                        warn!(error = %e, "refreshing the service record on the DHT failed; clients that read it may fall back to their own port; retrying in 50 minutes")
                    }
                }
            }
        });
        Ok(RecordKeeper { running })
    }

    /// Stops refreshing. The record stays on the DHT until it expires (holesail's too).
    pub async fn close(self) {
        self.running.stop().await;
    }
}

impl ServiceRecord {
    /// Reads the service record the sharer of `key` keeps on the DHT: its signature is
    /// checked against `key`, and its contents as [`ServiceRecord::parse`] does.
    pub async fn lookup(
        network: &NetworkOptions,
        key: PublicKey,
    ) -> Result<ServiceRecord, RecordError> {
        let node = DhtNode::join(network).await.map_err(RecordError::Dht)?;
        let found =
            tokio::time::timeout(DHT_TIMEOUT, node.handle().mutable_get(key.as_bytes(), 0)).await;
        node.destroy().await;
        match found {
            Ok(Ok(Some(found))) => ServiceRecord::parse(&found.value),
            Ok(Ok(None)) => Err(RecordError::NotFound),
            Ok(Err(e)) => Err(RecordError::Dht(e.into())),
            Err(_) => Err(RecordError::Dht(timed_out("reading the service record"))),
        }
    }
}

fn timed_out(doing: &'static str) -> Error {
    Error::Dht {
        doing,
        source: format!("no answer within {} s", DHT_TIMEOUT.as_secs()).into(),
    }
}

/// One put, as holesail does it: the sequence number of the record found stays when the value
/// is the same and goes one up when it changed (so the newest wins), and starts at 0.
async fn put(network: &NetworkOptions, key_pair: &KeyPair, record: &ServiceRecord) -> Result<u64> {
    let node = DhtNode::join(network).await?;
    let put = tokio::time::timeout(DHT_TIMEOUT, put_on(&node, key_pair, record)).await;
    node.destroy().await;
    put.unwrap_or_else(|_| Err(timed_out("putting the service record")))
}

async fn put_on(node: &DhtNode, key_pair: &KeyPair, record: &ServiceRecord) -> Result<u64> {
    let value = record.to_bytes();
    let dht = node.handle();
    let seq = match dht.mutable_get(key_pair.public_key().as_bytes(), 0).await? {
        Some(old) if old.value == value => old.seq,
        Some(old) => old.seq.saturating_add(1),
        None => 0,
    };
    let stored = dht.mutable_put(&key_pair.to_dht(), &value, seq).await?;
    if stored.closest_nodes.is_empty() {
        return Err(Error::Dht {
            doing: "putting the service record",
            source: "no DHT node took it; the network may be unreachable".into(),
        });
    }
    Ok(seq)
}
