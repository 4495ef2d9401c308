//! Superseding a deployment, and its watch after the swap.

use std::time::Duration;

use molt_core::DeployState;
use molt_store::{EnvState, InstanceState};

use super::{Fixture, WATCH};

#[tokio::test]
async fn a_newer_deployment_supersedes_one_before_its_swap_and_tears_its_env_down() {
    let f = Fixture::with(|c| c.pause_at = Some(DeployState::EnvCreated)).await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let first = f.deploy(v2).await;
    // Held at env_created: its environment exists, the route has not moved.
    let first = f.reach(first.id, DeployState::EnvCreated).await;
    let green = first.env.clone().expect("an environment");

    let second = f.deploy(v2).await;
    let first = f.reach(first.id, DeployState::Superseded).await;
    assert_eq!(first.env.as_deref(), Some(green.as_str()));
    assert_eq!(f.env_record(&green).await.state, EnvState::Retired);
    assert_eq!(f.routed().await.as_deref(), Some(blue.as_str()));
    f.reach(second.id, DeployState::EnvCreated).await;
    let events = f.events().await;
    let superseded = format!("superseded: deployment {} superseded", first.id);
    assert!(events.contains(&superseded), "{events:?}");
    f.stop().await;
}

#[tokio::test]
async fn a_deployment_superseded_after_its_swap_keeps_its_env_and_ends_its_watch() {
    let f = Fixture::new().await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Healthy).await;
    let d = f.drained(v2, &blue, &green).await;
    f.launch(d.clone()).await;

    // A swap by hand takes the app over: the watch ends, the environment stays (it may be
    // swapped back to), and the route moves.
    let swap = f.controller.swap("shop", &blue).await.expect("swap");
    assert_eq!(swap.from.as_deref(), Some(green.as_str()));
    f.reach(d.id, DeployState::Superseded).await;
    assert_eq!(f.env_record(&green).await.state, EnvState::Ready);
    assert_eq!(f.routed().await.as_deref(), Some(blue.as_str()));
    f.stop().await;
}

#[tokio::test]
async fn the_watch_swaps_back_when_the_new_env_serves_nothing_and_the_old_is_warm() {
    let f = Fixture::new().await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Unhealthy).await;
    let d = f.drained(v2, &blue, &green).await;
    assert!(f.env_record(&blue).await.warm_until_ms.is_some());
    f.launch(d.clone()).await;

    let d = f.reach(d.id, DeployState::RolledBack).await;
    assert_eq!(f.routed().await.as_deref(), Some(blue.as_str()));
    let why = d.error.expect("why it swapped back");
    assert!(
        why.contains("turned unhealthy during the watch window"),
        "{why}"
    );
    // The route is back on blue, so blue's window is over; green gets none.
    assert_eq!(f.env_record(&blue).await.warm_until_ms, None);
    assert_eq!(f.env_record(&green).await.warm_until_ms, None);
    // The history line is written once the route has moved back, just after the journal.
    f.event("auto-rollback:").await;
    f.stop().await;
}

#[tokio::test]
async fn a_drifted_env_is_being_repaired_and_is_not_swapped_away_from() {
    let f = Fixture::new().await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Drifted).await;
    let d = f.drained(v2, &blue, &green).await;
    f.launch(d.clone()).await;

    f.clock.advance(WATCH);
    f.reach(d.id, DeployState::Succeeded).await;
    assert_eq!(f.routed().await.as_deref(), Some(green.as_str()));
    f.stop().await;
}

#[tokio::test]
async fn the_watch_ends_when_the_clock_passes_its_window() {
    let f = Fixture::new().await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    let blue = f.env(v1, InstanceState::Healthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Healthy).await;
    let d = f.drained(v2, &blue, &green).await;
    f.launch(d.clone()).await;

    // Wall time alone does not end the window: several looks later it still watches.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = d.id;
    assert_eq!(
        f.db(move |s| s.deployment(id)).await.state,
        DeployState::Drained
    );
    f.clock.advance(WATCH - Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        f.db(move |s| s.deployment(id)).await.state,
        DeployState::Drained
    );
    f.clock.advance(Duration::from_millis(1));
    f.reach(d.id, DeployState::Succeeded).await;
    assert_eq!(f.routed().await.as_deref(), Some(green.as_str()));
    f.stop().await;
}

#[tokio::test]
async fn with_nowhere_to_go_back_to_the_watch_says_so_once_and_goes_on() {
    let f = Fixture::new().await;
    let image = f.image("v1").await;
    let v1 = f.release(&image).await;
    // The previous environment is no longer warm: none of its instances is healthy.
    let blue = f.env(v1, InstanceState::Unhealthy).await;
    f.route(&blue).await;
    let v2 = f.release(&image).await;
    let green = f.env(v2, InstanceState::Unhealthy).await;
    let d = f.drained(v2, &blue, &green).await;
    f.launch(d.clone()).await;

    // Looks every 20 ms (the health interval) all find the same: one event says it.
    f.event("unhealthy:").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = f.events().await;
    let stranded = events.iter().filter(|e| e.starts_with("unhealthy:"));
    assert_eq!(stranded.count(), 1, "{events:?}");
    assert_eq!(f.routed().await.as_deref(), Some(green.as_str()));
    f.clock.advance(WATCH);
    f.reach(d.id, DeployState::Succeeded).await;
    f.stop().await;
}
