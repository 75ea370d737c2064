//! Relay to direct, as the sharer: hyperdht's client pairs at the relay it names and punches at
//! the same time; when the punch opens after the relay carried the connection, it moves its
//! stream there (udx's `changeRemote`), sends an empty message on the new path, and closes its
//! relay connection once it hears us there. We follow: a placeholder stream with the
//! connection's id listens on every socket of the punch, and the client's first packet on one
//! of them moves our stream there (`change_remote_into`, which hands over what the placeholder
//! held, so no packet of the client's is lost), after which we confirm with an empty message
//! too and leave the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info};
use udx::{StreamObserver, UdxError, UdxStream};

use crate::holepunch::ServerPunch;
use crate::punch_socket::{ProbeHit, PunchSocket};
use crate::relay::client::Lease;

/// The acceptor's losing stream on a punch socket holds the connection's id there until its
/// socket's driver let it go (a pass or two); a placeholder waits for it this long at most.
const ID_FREE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a relayed connection needs to follow its client to a punched path.
pub(super) struct Upgrade {
    pub(super) punch: Arc<ServerPunch>,
    pub(super) hits: Option<mpsc::UnboundedReceiver<ProbeHit>>,
    pub(super) local_id: u32,
    pub(super) remote_id: u32,
    /// How long the client's punch may take to open.
    pub(super) within: Duration,
}

/// A placeholder that heard the client: on which punch socket, from where.
struct Heard {
    placeholder: UdxStream,
    index: usize,
    from: SocketAddr,
}

/// Listens on punch socket `index` for the client's first packet on the new path.
fn listen(
    listeners: &mut JoinSet<Option<Heard>>,
    listening: &mut Vec<usize>,
    socket: PunchSocket,
    index: usize,
    local_id: u32,
) {
    if listening.contains(&index) {
        return;
    }
    listening.push(index);
    let socket = socket.udx().clone();
    listeners.spawn(async move {
        let deadline = tokio::time::Instant::now() + ID_FREE_TIMEOUT;
        let placeholder = loop {
            match socket.create_stream(local_id) {
                Ok(s) => break s,
                Err(UdxError::StreamIdInUse(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => {
                    debug!(error = %e, index, "cannot listen for the client's move on a punch socket");
                    return None;
                }
            }
        };
        let from = placeholder.first_packet_from().await.ok()?;
        Some(Heard {
            placeholder,
            index,
            from,
        })
    });
}

/// Follows connection `n`, open through the relay (`lease`), to the path the client's punch
/// opens, if it opens in time (`Upgrade::within`); the relay pairing is kept while the
/// connection lives on it. A connection that ends on the relay first lets the pairing go, but
/// the punch goes on: the hole it opens is kept for the client's next connections (ours keeps
/// punching too, for the same reason).
pub(super) async fn follow_to_direct(
    n: u64,
    mut up: Upgrade,
    relayed: StreamObserver,
    lease: Lease,
    routes: mpsc::Sender<PunchSocket>,
) {
    let puncher = Arc::clone(up.punch.puncher());
    let mut listeners = JoinSet::new();
    let mut listening = Vec::new();
    listen(
        &mut listeners,
        &mut listening,
        puncher.main(),
        0,
        up.local_id,
    );
    let deadline = tokio::time::Instant::now() + up.within;
    let mut lease = Some(lease);
    // The punch socket the client's probes reached last.
    let mut last_hit = None;
    let heard = loop {
        tokio::select! {
            Some(hit) = async { up.hits.as_mut()?.recv().await }, if up.hits.is_some() => {
                if let Some(socket) = puncher.socket(hit.index) {
                    last_hit = Some(hit.index);
                    if lease.is_some() {
                        listen(&mut listeners, &mut listening, socket.clone(), hit.index, up.local_id);
                    }
                    socket.probe(hit.from, false);
                }
            }
            Some(done) = listeners.join_next(), if !listeners.is_empty() => {
                if let Ok(Some(heard)) = done {
                    break Some(heard);
                }
            }
            () = relayed.done(), if lease.is_some() => {
                lease = None;
                listeners.abort_all();
            }
            () = tokio::time::sleep_until(deadline) => break None,
        }
        if lease.is_none() && last_hit.is_some() {
            break None;
        }
    };
    // The other placeholders go (unconnected: they send nothing).
    listeners.abort_all();
    let ended = lease.is_none();
    let (
        Heard {
            placeholder,
            index,
            from,
        },
        lease,
    ) = match (heard, lease) {
        (Some(heard), Some(lease)) => (heard, lease),
        (_, lease) => {
            match last_hit
                .filter(|_| ended)
                .and_then(|index| puncher.keep_only(index))
            {
                Some(socket) => keep_route(socket, &routes),
                None => puncher.stop(),
            }
            if let Some(lease) = lease {
                lease.keep_while(&relayed);
            }
            return;
        }
    };
    if let Err(e) = relayed.change_remote_into(placeholder, up.remote_id, from) {
        debug!(connection = n, error = %e, "cannot follow the client to the punched path");
        puncher.stop();
        lease.keep_while(&relayed);
        return;
    }
    if let Some(socket) = puncher.keep_only(index) {
        keep_route(socket, &routes);
    }
    // The client leaves its relay once it hears us on the new path.
    let completed = lease.confirm_move(&relayed).await;
    info!(
        connection = n,
        peer = %from,
        completed,
        "connection moved from the relay to the direct path"
    );
}

/// Keeps a punched socket for the client's next connections, as after a punch that won
/// outright: its keepalive probes get answers.
pub(super) fn keep_route(socket: PunchSocket, routes: &mpsc::Sender<PunchSocket>) {
    socket.set_echo(true);
    // A full queue drops the socket: that client punches again next time.
    let _ = routes.try_send(socket);
}
