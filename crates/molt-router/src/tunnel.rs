//! Upgraded connections (WebSocket and other protocols) once both sides have switched:
//! bytes copied both ways, the tunnel counted in flight for its environment until it closes,
//! and closed early when its environment has been unrouted for the grace period or the
//! router shuts down. The tasks are owned by the router ([`Tunnels`]).

use std::future::Future;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::presence::{unrouted_for, Presence};
use crate::stats::InFlight;

/// The tasks relaying upgraded connections, owned by the router so that shutdown can wait for
/// them and close the rest.
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    tasks: TaskTracker,
    abort: CancellationToken,
}

/// One upgraded connection: both halves, the in-flight mark of its environment and what
/// closes it early.
struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
    presence: watch::Receiver<Presence>,
    grace: Duration,
    abort: CancellationToken,
}

impl Tunnels {
    /// Lets [`Tunnels::wait`] return once the open tunnels have closed.
    pub(crate) fn close(&self) {
        self.tasks.close();
    }

    /// Waits until closed and every tunnel has ended.
    pub(crate) async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// Closes every open tunnel now.
    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// Number of open tunnels (and of their upstream connections still being set up).
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Cancelled when every tunnel is to close now ([`Tunnels::abort`]).
    pub(crate) fn aborted(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// Runs `task` (an upstream connection on its way to an upgrade) among the tunnels' tasks,
    /// so shutdown waits for it.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Relays one upgraded connection on a task of its own until it closes (see
    /// [`Tunnel::relay`]); `in_flight` counts it for its environment and instance meanwhile.
    pub(crate) fn open(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        in_flight: InFlight,
        presence: watch::Receiver<Presence>,
        grace: Duration,
    ) {
        let tunnel = Tunnel {
            client,
            upstream,
            in_flight,
            presence,
            grace,
            abort: self.abort.clone(),
        };
        self.tasks.spawn(tunnel.relay());
    }
}

impl Tunnel {
    /// Copies bytes both ways until both sides are done, the environment has been unrouted
    /// for longer than the grace period, or the router shuts down.
    async fn relay(self) {
        let Tunnel {
            client,
            upstream,
            in_flight,
            presence,
            grace,
            abort,
        } = self;
        let joined = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(error) => {
                    debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((sent, received)) => debug!(sent, received, "upgraded connection closed"),
                Err(error) => debug!(%error, "upgraded connection ended with an error"),
            }
        };
        tokio::select! {
            () = joined => {}
            () = unrouted_for(presence, grace) => {
                debug!("closing an upgraded connection: its environment is no longer routed");
            }
            () = abort.cancelled() => debug!("closing an upgraded connection: shutting down"),
        }
        drop(in_flight);
    }
}
