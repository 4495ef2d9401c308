//! What garbage collection keeps, and that its windows pass on the controller's clock.

use std::time::Duration;

use molt_core::DeployState;
use molt_store::{EnvState, InstanceState};

use super::{Fixture, WINDOW};

#[tokio::test]
async fn an_env_is_kept_for_its_rollback_window_then_collected() {
    let f = Fixture::new().await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Healthy).await;
    f.route(&green).await;

    let plan = f.controller.gc(true).await.expect("dry run");
    assert_eq!(plan.kept[&green], "routed");
    assert_eq!(plan.kept[&blue], "rollback window (900s left)");
    assert!(plan.envs.is_empty(), "{plan:?}");

    f.clock.advance(WINDOW - Duration::from_millis(1));
    let plan = f.controller.gc(true).await.expect("dry run");
    assert_eq!(plan.kept[&blue], "rollback window (1s left)");

    f.clock.advance(Duration::from_millis(1));
    let plan = f.controller.gc(true).await.expect("dry run");
    assert_eq!(plan.envs, vec![blue.clone()]);
    // A dry run changes nothing.
    assert_eq!(f.env_record(&blue).await.state, EnvState::Ready);

    let done = f.controller.gc(false).await.expect("gc");
    assert_eq!(done.envs, vec![blue.clone()]);
    assert_eq!(f.env_record(&blue).await.state, EnvState::Retired);
    // The image runs a release among the newest: kept.
    assert!(done.images.is_empty(), "{done:?}");
    assert!(f.images.contains(&image));
    f.stop().await;
}

#[tokio::test]
async fn an_env_of_an_unfinished_deployment_is_kept_whatever_the_clock() {
    let f = Fixture::with(|c| c.pause_at = Some(DeployState::EnvCreated)).await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let d = f.deploy(v1).await;
    let d = f.reach(d.id, DeployState::EnvCreated).await;
    let env = d.env.expect("an environment");
    f.clock.advance(Duration::from_secs(24 * 3600));
    let plan = f.controller.gc(true).await.expect("dry run");
    assert_eq!(plan.kept[&env], "deployment in progress");
    f.stop().await;
}

#[tokio::test]
async fn an_image_nothing_keeps_is_collected_after_the_grace_period() {
    let f = Fixture::with(|c| c.keep_releases = 1).await;
    let old = f.image("v1").await;
    let new = f.image("v2").await;
    f.release(&old).await;
    f.release(&new).await;

    // v1 is neither routed, pinned nor the newest release, but its image is young.
    let plan = f.controller.gc(true).await.expect("dry run");
    assert!(plan.images.is_empty(), "{plan:?}");
    f.clock.advance(Duration::from_secs(3600));
    let plan = f.controller.gc(true).await.expect("dry run");
    assert_eq!(plan.images, vec![old.clone()]);

    // A pin keeps it.
    f.controller.pin("shop", 1, true).await.expect("pin");
    assert!(f
        .controller
        .gc(true)
        .await
        .expect("dry run")
        .images
        .is_empty());
    f.controller.pin("shop", 1, false).await.expect("unpin");

    let done = f.controller.gc(false).await.expect("gc");
    assert_eq!(done.images, vec![old.clone()]);
    assert!(f
        .controller
        .images()
        .await
        .expect("images")
        .iter()
        .all(|i| i.digest != old));
    assert!(f.images.contains(&new));
    f.stop().await;
}
