//! Each app's running deployment task, and taking an app over from it.
//!
//! Every action that changes what serves an app — a new deployment, a swap, a rollback — first
//! *takes the app over*: the app's running deployment is cancelled and the action waits until
//! it has stepped aside (before its swap its environment is torn down; after it, only its watch
//! ends). Takeovers of one app are serialised, so a deployment registered by one action is
//! never replaced unseen by another started at the same moment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use super::shadow::ShadowDecision;

/// Longest a takeover waits for the superseded deployment to step aside.
const STEP_ASIDE_TIMEOUT: Duration = Duration::from_secs(30);

/// The running deployment task of each app.
#[derive(Default)]
pub(crate) struct ActiveDeployments {
    running: Mutex<HashMap<String, Running>>,
    /// One lock per app, held by a takeover until its action has started.
    takeovers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What the controller keeps of a running deployment task.
struct Running {
    id: u64,
    cancel: CancellationToken,
    done: Arc<Notify>,
    finished: Arc<AtomicBool>,
    /// Promote/abandon decisions for a shadow deployment, taken by its task.
    decisions: mpsc::Sender<ShadowDecision>,
}

/// The right to change what serves an app: nothing else takes the app over while it is held,
/// and the deployment that ran before has stepped aside.
pub(crate) struct Takeover {
    app: String,
    _serialised: OwnedMutexGuard<()>,
}

/// The task's side of a registered deployment: how it is told to stop, the shadow decisions
/// handed to it, and how it reports its end.
pub(crate) struct Registration {
    app: String,
    /// The deployment.
    pub(crate) id: u64,
    /// Cancelled when a newer action takes the app over (or molt shuts down).
    pub(crate) cancel: CancellationToken,
    /// Promote/abandon decisions, for a shadow deployment in its shadow phase.
    pub(crate) decisions: mpsc::Receiver<ShadowDecision>,
    done: Arc<Notify>,
    finished: Arc<AtomicBool>,
}

impl Takeover {
    /// The app taken over.
    pub(crate) fn app(&self) -> &str {
        &self.app
    }
}

impl ActiveDeployments {
    /// Takes `app` over: waits for any other takeover of it to finish, then supersedes its
    /// running deployment (the only place one is superseded) and waits, bounded, until that
    /// deployment has stepped aside.
    pub(crate) async fn take_over(&self, app: &str) -> Takeover {
        let lock = {
            let mut takeovers = self.takeovers.lock().unwrap_or_else(|p| p.into_inner());
            takeovers.entry(app.to_string()).or_default().clone()
        };
        let serialised = lock.lock_owned().await;
        let previous = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.remove(app)
        };
        if let Some(prev) = previous {
            let notified = prev.done.notified();
            prev.cancel.cancel();
            if !prev.finished.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(STEP_ASIDE_TIMEOUT, notified).await;
            }
        }
        Takeover {
            app: app.to_string(),
            _serialised: serialised,
        }
    }

    /// Records deployment `id` as the running one of the app taken over; `cancel` stops it.
    pub(crate) fn register(
        &self,
        takeover: &Takeover,
        id: u64,
        cancel: CancellationToken,
    ) -> Registration {
        let done = Arc::new(Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (decisions, decided) = mpsc::channel(1);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.insert(
            takeover.app.clone(),
            Running {
                id,
                cancel: cancel.clone(),
                done: done.clone(),
                finished: finished.clone(),
                decisions,
            },
        );
        Registration {
            app: takeover.app.clone(),
            id,
            cancel,
            decisions: decided,
            done,
            finished,
        }
    }

    /// The task of `registration` has ended: whoever waits for it to step aside goes on.
    pub(crate) fn end(&self, registration: Registration) {
        registration.finished.store(true, Ordering::SeqCst);
        registration.done.notify_waiters();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running
            .get(&registration.app)
            .is_some_and(|r| r.id == registration.id)
        {
            running.remove(&registration.app);
        }
    }

    /// Where to send a promote/abandon decision for deployment `id` of `app`, if its task runs.
    pub(crate) fn decisions(&self, app: &str, id: u64) -> Option<mpsc::Sender<ShadowDecision>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .get(app)
            .filter(|r| r.id == id)
            .map(|r| r.decisions.clone())
    }
}
