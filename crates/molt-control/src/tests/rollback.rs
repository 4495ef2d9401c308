//! Warm and cold rollbacks.

use molt_core::DeployState;
use molt_store::InstanceState;

use super::{Fixture, WINDOW};
use crate::ErrorKind;

#[tokio::test]
async fn a_rollback_to_a_warm_env_is_one_swap_and_starts_the_windows_over() {
    let f = Fixture::new().await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Healthy).await;
    f.route(&green).await;

    let rollback = f.controller.rollback("shop", None).await.expect("rollback");
    assert_eq!((rollback.kind.as_str(), rollback.release), ("warm", v1));
    let swap = rollback.swap.expect("a swap");
    assert_eq!(swap.from.as_deref(), Some(green.as_str()));
    assert!(rollback.deployment.is_none());
    assert_eq!(f.routed().await.as_deref(), Some(blue.as_str()));
    // Green now stays warm for the window, from the clock's now; blue's window is over.
    let now = molt_core::Clock::now_ms(f.clock.as_ref());
    let window = WINDOW.as_millis() as u64;
    assert_eq!(f.env_record(&green).await.warm_until_ms, Some(now + window));
    assert_eq!(f.env_record(&blue).await.warm_until_ms, None);
    f.stop().await;
}

#[tokio::test]
async fn a_warm_env_that_cannot_take_traffic_makes_the_rollback_cold() {
    let f = Fixture::with(|c| c.pause_at = Some(DeployState::Pending)).await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    // Ready, but its only instance failed its checks: the swap is refused, so redeploy.
    let blue = f.env(v1, InstanceState::Unhealthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Healthy).await;
    f.route(&green).await;

    let rollback = f.controller.rollback("shop", None).await.expect("rollback");
    assert_eq!((rollback.kind.as_str(), rollback.release), ("cold", v1));
    let d = rollback.deployment.expect("a deployment");
    assert_eq!(
        (d.release, d.prev_env.as_deref()),
        (v1, Some(green.as_str()))
    );
    assert_eq!(f.routed().await.as_deref(), Some(green.as_str()));
    f.stop().await;
}

#[tokio::test]
async fn with_nothing_warm_a_rollback_redeploys_unless_the_image_is_gone() {
    let f = Fixture::with(|c| c.pause_at = Some(DeployState::Pending)).await;
    let old = f.image("v1").await;
    let new = f.image("v2").await;
    let v1 = f.release(&old).await;
    let v2 = f.release(&new).await;
    let green = f.env(v2, InstanceState::Healthy).await;
    f.route(&green).await;

    // Nothing runs v1 any more: the release before the serving one is deployed again.
    let rollback = f.controller.rollback("shop", None).await.expect("rollback");
    assert_eq!((rollback.kind.as_str(), rollback.release), ("cold", v1));
    let cold = rollback.deployment.expect("a deployment");
    f.reach(cold.id, DeployState::Pending).await;
    let events = f.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("rollback: cold rollback to v1")),
        "{events:?}"
    );

    // Once v1's image is collected, there is nothing to roll back with: said, and the
    // deployment started before is superseded by the attempt all the same.
    f.images.remove(&old).expect("remove");
    let refused = f.controller.rollback("shop", None).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    assert!(refused.to_string().contains("was collected"), "{refused}");
    f.reach(cold.id, DeployState::Superseded).await;
    assert_eq!(f.routed().await.as_deref(), Some(green.as_str()));
    f.stop().await;
}

#[tokio::test]
async fn a_rollback_says_why_it_cannot_happen() {
    let f = Fixture::new().await;
    let unknown_app = f.controller.rollback("shop", None).await.unwrap_err();
    assert_eq!(unknown_app.kind(), ErrorKind::NotFound);
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let nothing = f.controller.rollback("shop", None).await.unwrap_err();
    assert_eq!(nothing.kind(), ErrorKind::Conflict);
    assert!(
        nothing.to_string().contains("nothing deployed"),
        "{nothing}"
    );
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let first = f.controller.rollback("shop", None).await.unwrap_err();
    assert!(
        first.to_string().contains("no release before v1"),
        "{first}"
    );
    let same = f.controller.rollback("shop", Some(v1)).await.unwrap_err();
    assert!(same.to_string().contains("already serves v1"), "{same}");
    let unknown = f.controller.rollback("shop", Some(9)).await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound);
    f.stop().await;
}
