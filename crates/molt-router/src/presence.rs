//! Whether the published table routes to an environment, watched by the environment's
//! upgraded connections: once a publish stops routing to it, they close after a grace period
//! ([`RouterConfig::upgrade_grace`](crate::RouterConfig)).

use std::time::Duration;

use tokio::sync::watch;

/// Whether the published table routes to an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Routed,
    Unrouted,
}

/// The [`Presence`] of one environment, published by [`Router::publish`](crate::Router::publish) and watched by the
/// environment's upgraded connections. Lives in the environment's counters, so the request
/// path reaches it without a lock.
#[derive(Debug)]
pub(crate) struct EnvPresence(watch::Sender<Presence>);

impl Default for EnvPresence {
    fn default() -> Self {
        Self(watch::Sender::new(Presence::Routed))
    }
}

impl EnvPresence {
    /// Publishes `presence` (a no-op when it is the current one).
    pub(crate) fn mark(&self, presence: Presence) {
        self.0.send_if_modified(|current| {
            let changed = *current != presence;
            *current = presence;
            changed
        });
    }

    /// Follows the environment's presence from now on.
    pub(crate) fn watch(&self) -> watch::Receiver<Presence> {
        self.0.subscribe()
    }
}

/// Completes once the environment has been unrouted for `grace` without being routed again.
pub(crate) async fn unrouted_for(mut presence: watch::Receiver<Presence>, grace: Duration) {
    loop {
        // The sender lives in the environment's counters, which outlive every tunnel of the
        // environment: a closed channel means nothing will change any more.
        let unrouted = presence
            .wait_for(|now| *now == Presence::Unrouted)
            .await
            .is_ok();
        if !unrouted {
            return std::future::pending().await;
        }
        let routed_again =
            tokio::time::timeout(grace, presence.wait_for(|now| *now == Presence::Routed))
                .await
                .map(|routed| routed.is_ok());
        match routed_again {
            Ok(true) => continue,
            Ok(false) => return std::future::pending().await,
            Err(_elapsed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn closes_within(presence: &watch::Receiver<Presence>, wait: Duration) -> bool {
        tokio::time::timeout(wait, unrouted_for(presence.clone(), GRACE))
            .await
            .is_ok()
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn grace_starts_when_unrouted_and_resets_when_routed_again() {
        let env = EnvPresence::default();
        let presence = env.watch();
        assert!(
            !closes_within(&presence, GRACE * 4).await,
            "routed: stays open"
        );

        env.mark(Presence::Unrouted);
        let watcher = tokio::spawn(unrouted_for(env.watch(), GRACE));
        tokio::time::sleep(GRACE / 2).await;
        env.mark(Presence::Routed);
        tokio::time::sleep(GRACE * 4).await;
        assert!(
            !watcher.is_finished(),
            "routed again within the grace: stays open"
        );

        env.mark(Presence::Unrouted);
        tokio::time::sleep(GRACE - Duration::from_secs(1)).await;
        assert!(!watcher.is_finished(), "still within the grace");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(watcher.is_finished(), "closed once the grace is over");

        // A watcher that starts while already unrouted gets the full grace too.
        assert!(!closes_within(&presence, GRACE - Duration::from_secs(1)).await);
        assert!(closes_within(&presence, GRACE + Duration::from_secs(1)).await);
    }
}
