use super::*;
use molt_core::Manifest;
use molt_core::{DeployEvent, DeployState, Digest, RunConfig};

fn config() -> RunConfig {
    Manifest::parse("name = \"shop\"\ncommand = [\"./s\"]\n", "t")
        .unwrap()
        .config
}

fn digest(n: u8) -> Digest {
    Digest::from_sha256(&[n; 32])
}

fn store_with_release() -> Store {
    let mut s = Store::open_in_memory().unwrap();
    s.put_image(&digest(1), 10).unwrap();
    s.create_release("shop", &digest(1), &config(), "deploy")
        .unwrap();
    s
}

#[test]
fn releases_are_numbered_per_app() {
    let mut s = store_with_release();
    let r2 = s
        .create_release("shop", &digest(1), &config(), "config")
        .unwrap();
    assert_eq!(r2.number, 2);
    let other = s
        .create_release("blog", &digest(1), &config(), "deploy")
        .unwrap();
    assert_eq!(other.number, 1);
    assert_eq!(s.releases(Some("shop")).unwrap().len(), 2);
    assert_eq!(s.latest_release("shop").unwrap().unwrap().number, 2);
    assert_eq!(s.release("shop", 1).unwrap().config, config());
}

#[test]
fn unknown_image_is_refused() {
    let mut s = Store::open_in_memory().unwrap();
    let err = s
        .create_release("shop", &digest(9), &config(), "deploy")
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "image", .. }),
        "{err}"
    );
    assert!(s.apps().unwrap().is_empty());
}

#[test]
fn tags_never_move() {
    let mut s = store_with_release();
    s.put_image(&digest(2), 10).unwrap();
    s.tag_image("shop:1", &digest(1)).unwrap();
    s.tag_image("shop:1", &digest(1)).unwrap();
    assert!(matches!(
        s.tag_image("shop:1", &digest(2)),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.resolve_image("shop:1").unwrap().digest, digest(1));
    assert_eq!(s.resolve_image(digest(2).hex()).unwrap().digest, digest(2));
    assert!(s.resolve_image("nope:1").is_err());
}

#[test]
fn deployment_journal_and_swap_are_atomic() {
    let mut s = store_with_release();
    let d = s.create_deployment("shop", 1, None, None).unwrap();
    let env = s.create_env("shop", 1, None).unwrap();
    assert_eq!(
        s.attach_env(d.id, &env.id).unwrap(),
        DeployState::EnvCreated
    );
    // Swapping before healthy is refused and changes nothing.
    let err = s
        .swap_route(
            "shop",
            &env.id,
            Some((d.id, DeployEvent::Swapped, "swap")),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)));
    assert!(s.routes().unwrap().is_empty());
    s.advance(d.id, DeployEvent::InstancesStarted, "started")
        .unwrap();
    s.advance(d.id, DeployEvent::BecameHealthy, "healthy")
        .unwrap();
    s.swap_route(
        "shop",
        &env.id,
        Some((d.id, DeployEvent::Swapped, "swap")),
        None,
    )
    .unwrap();
    assert_eq!(
        s.routes().unwrap(),
        vec![("shop".to_string(), env.id.clone())]
    );
    assert_eq!(s.deployment(d.id).unwrap().state, DeployState::Swapped);
    let states: Vec<_> = s
        .journal(d.id)
        .unwrap()
        .into_iter()
        .map(|j| j.state)
        .collect();
    assert_eq!(
        states,
        vec![
            DeployState::Pending,
            DeployState::EnvCreated,
            DeployState::InstancesStarted,
            DeployState::Healthy,
            DeployState::Swapped
        ]
    );
    assert_eq!(s.unfinished_deployments().unwrap().len(), 1);
}

#[test]
fn records_are_stamped_by_the_store_clock() {
    let clock = std::sync::Arc::new(molt_core::ManualClock::new(5_000));
    let mut s = Store::open_in_memory().unwrap();
    s.set_clock(clock.clone());
    s.put_image(&digest(1), 10).unwrap();
    s.create_release("shop", &digest(1), &config(), "deploy")
        .unwrap();
    assert_eq!(s.image(&digest(1)).unwrap().created_ms, 5_000);
    let blue = s.create_env("shop", 1, None).unwrap();
    let green = s.create_env("shop", 1, None).unwrap();
    s.swap_route("shop", &blue.id, None, None).unwrap();
    clock.advance(std::time::Duration::from_millis(250));
    let d = s
        .create_deployment("shop", 1, Some(&blue.id), None)
        .unwrap();
    assert_eq!(d.created_ms, 5_250);
    // The rollback window of the environment the route leaves starts at the clock's now.
    s.swap_route("shop", &green.id, None, Some(1_000)).unwrap();
    assert_eq!(s.env(&blue.id).unwrap().warm_until_ms, Some(6_250));
    assert_eq!(s.env(&green.id).unwrap().warm_until_ms, None);
}

#[test]
fn a_full_disk_is_told_apart_from_other_sqlite_failures() {
    let failure = |code| {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    };
    assert!(failure(rusqlite::ffi::SQLITE_FULL).is_disk_full());
    assert!(!failure(rusqlite::ffi::SQLITE_BUSY).is_disk_full());
    assert!(!StoreError::Conflict("database or disk is full".into()).is_disk_full());
}

#[test]
fn retired_envs_cannot_be_routed() {
    let mut s = store_with_release();
    let env = s.create_env("shop", 1, None).unwrap();
    s.set_env_state(&env.id, EnvState::Retired).unwrap();
    assert!(matches!(
        s.swap_route("shop", &env.id, None, None),
        Err(StoreError::Conflict(_))
    ));
    assert!(s.envs(Some("shop"), false).unwrap().is_empty());
    assert_eq!(s.envs(Some("shop"), true).unwrap().len(), 1);
}

#[test]
fn instances_and_images_in_use() {
    let mut s = store_with_release();
    let env = s.create_env("shop", 1, None).unwrap();
    let i = s.create_instance(&env.id, "127.0.0.1", 4000).unwrap();
    s.set_instance_process(&i.id, 42, 7).unwrap();
    s.set_instance_state(&i.id, InstanceState::Healthy, None)
        .unwrap();
    let got = s.instance(&i.id).unwrap();
    assert_eq!(
        (got.pid, got.start_time, got.state),
        (Some(42), Some(7), InstanceState::Healthy)
    );
    assert!(matches!(
        s.remove_image(&digest(1)),
        Err(StoreError::Conflict(_))
    ));
    s.set_env_state(&env.id, EnvState::Retired).unwrap();
    s.remove_image(&digest(1)).unwrap();
}

#[test]
fn drifted_instances_are_marked_together_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (env, ids) = {
        let mut s = Store::open(&path).unwrap();
        s.put_image(&digest(1), 10).unwrap();
        s.create_release("shop", &digest(1), &config(), "deploy")
            .unwrap();
        let env = s.create_env("shop", 1, None).unwrap();
        let healthy = s.create_instance(&env.id, "127.0.0.1", 4000).unwrap();
        s.set_instance_state(&healthy.id, InstanceState::Healthy, None)
            .unwrap();
        let starting = s.create_instance(&env.id, "127.0.0.1", 4001).unwrap();
        let stopped = s.create_instance(&env.id, "127.0.0.1", 4002).unwrap();
        s.set_instance_state(&stopped.id, InstanceState::Stopped, Some("gone"))
            .unwrap();
        let marked = s.mark_drifted(&env.id).unwrap();
        let mut ids: Vec<String> = marked.iter().map(|i| i.id.clone()).collect();
        ids.sort();
        let mut want = vec![healthy.id, starting.id];
        want.sort();
        assert_eq!(ids, want);
        assert!(marked.iter().all(|i| i.state == InstanceState::Drifted));
        assert_eq!(
            s.instance(&stopped.id).unwrap().state,
            InstanceState::Stopped
        );
        (env, ids)
    };
    let s = Store::open(&path).unwrap();
    let drifted: Vec<String> = s
        .instances(Some(&env.id), false)
        .unwrap()
        .into_iter()
        .filter(|i| i.state == InstanceState::Drifted)
        .map(|i| i.id)
        .collect();
    assert_eq!(drifted.len(), ids.len());
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut s = Store::open(&path).unwrap();
        s.put_image(&digest(1), 1).unwrap();
        s.create_release("shop", &digest(1), &config(), "deploy")
            .unwrap();
        s.record_event("shop", "deploy", "hello").unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.releases(None).unwrap().len(), 1);
    assert_eq!(s.events(Some("shop"), 10).unwrap()[0].message, "hello");
}

#[test]
fn shadow_mode_is_set_and_cleared() {
    let mut s = store_with_release();
    assert_eq!(s.app("shop").unwrap().shadow, None);
    let mode = ShadowMode {
        env: "shop-v1-ab12".into(),
        share_percent: 10,
    };
    assert_eq!(
        s.set_shadow("shop", Some(&mode)).unwrap().shadow,
        Some(mode.clone())
    );
    assert_eq!(s.apps().unwrap()[0].shadow, Some(mode));
    assert_eq!(s.set_shadow("shop", None).unwrap().shadow, None);
    assert!(matches!(
        s.set_shadow("nope", None),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn tags_never_move_unless_forced_and_every_change_is_recorded() {
    let mut s = store_with_release();
    s.put_image(&digest(2), 20).unwrap();
    assert_eq!(
        s.set_tag("shop:42", &digest(1), TagMove::Refuse, "ann")
            .unwrap(),
        None
    );
    // The same digest again is no change and no history line.
    s.set_tag("shop:42", &digest(1), TagMove::Refuse, "ann")
        .unwrap();
    let err = s
        .set_tag("shop:42", &digest(2), TagMove::Refuse, "bob")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Conflict(_)));
    assert!(
        msg.contains(digest(1).as_str()) && msg.contains(digest(2).as_str()),
        "{msg}"
    );
    assert_eq!(s.resolve_image("shop:42").unwrap().digest, digest(1));

    let old = s
        .set_tag("shop:42", &digest(2), TagMove::Force, "bob")
        .unwrap();
    assert_eq!(old, Some(digest(1)));
    assert_eq!(s.resolve_image("shop:42").unwrap().digest, digest(2));
    s.tag_image("shop:43", &digest(2)).unwrap();

    let history = s.tag_history(Some("shop:42")).unwrap();
    let lines: Vec<_> = history
        .iter()
        .map(|e| {
            (
                e.change.as_str(),
                e.old_digest.clone(),
                e.new_digest.clone(),
                e.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("created", None, Some(digest(1)), "ann"),
            ("moved", Some(digest(1)), Some(digest(2)), "bob"),
        ]
    );
    assert_eq!(s.tag_history(None).unwrap().len(), 3);
    assert_eq!(s.image_tag_history(&digest(1)).unwrap().len(), 2);

    // Removing the image removes its tags, and says so in the history.
    s.remove_image(&digest(2)).unwrap();
    assert!(s.resolve_image("shop:42").is_err());
    let last = s.tag_history(Some("shop:43")).unwrap().pop().unwrap();
    assert_eq!(
        (last.change.as_str(), last.old_digest, last.new_digest),
        ("removed", Some(digest(2)), None)
    );
    // A tag cannot name an image the store does not have.
    assert!(matches!(
        s.set_tag("x", &digest(9), TagMove::Force, "ann"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn image_releases_lists_every_release_that_runs_an_image() {
    let mut s = store_with_release();
    s.create_release("blog", &digest(1), &config(), "deploy")
        .unwrap();
    s.put_image(&digest(2), 20).unwrap();
    s.create_release("shop", &digest(2), &config(), "deploy")
        .unwrap();
    let users: Vec<_> = s
        .image_releases(&digest(1))
        .unwrap()
        .into_iter()
        .map(|r| (r.app, r.number))
        .collect();
    assert_eq!(
        users,
        vec![("blog".to_string(), 1), ("shop".to_string(), 1)]
    );
}

fn summary(env: &str, requests: u64) -> TrafficSummary {
    TrafficSummary {
        env: env.to_string(),
        requests,
        classes: [("2xx".to_string(), requests)].into_iter().collect(),
        failed: 0,
        mean_ms: 1.5,
        p50_ms: Some(1.0),
        p99_ms: None,
    }
}

#[test]
fn a_shadow_deployment_records_its_comparison_as_it_stops_mirroring() {
    let mut s = store_with_release();
    let d = s.create_deployment("shop", 1, None, Some(25)).unwrap();
    assert_eq!(d.shadow_share, Some(25));
    let env = s.create_env("shop", 1, None).unwrap();
    s.attach_env(d.id, &env.id).unwrap();
    let mode = ShadowMode {
        env: env.id.clone(),
        share_percent: 25,
    };
    s.advance(d.id, DeployEvent::InstancesStarted, "started")
        .unwrap();
    s.advance(d.id, DeployEvent::BecameHealthy, "healthy")
        .unwrap();
    // Mirroring is set first (the router must have it before the state says so), then
    // journaled.
    s.set_shadow("shop", Some(&mode)).unwrap();
    assert_eq!(
        s.advance(d.id, DeployEvent::ShadowStarted, "mirror")
            .unwrap(),
        DeployState::Shadowing
    );
    let comparison = ShadowComparison {
        share_percent: 25,
        since_ms: 1,
        until_ms: 2,
        live: Some(summary("live", 8)),
        shadow: summary(&env.id, 2),
        verdict: None,
    };
    assert_eq!(
        s.end_shadow(d.id, DeployEvent::Abandoned, "abandoned", Some(&comparison))
            .unwrap(),
        DeployState::Abandoned
    );
    let done = s.deployment(d.id).unwrap();
    assert_eq!(done.shadow, Some(comparison.clone()));
    assert_eq!(s.app("shop").unwrap().shadow, None);
    assert!(s.unfinished_deployments().unwrap().is_empty());
    // A shadow setting that names another environment is left alone.
    let d2 = s.create_deployment("shop", 1, None, Some(5)).unwrap();
    let other = ShadowMode {
        env: "elsewhere".into(),
        share_percent: 5,
    };
    s.set_shadow("shop", Some(&other)).unwrap();
    s.end_shadow(d2.id, DeployEvent::Superseded, "superseded", None)
        .unwrap();
    assert_eq!(s.app("shop").unwrap().shadow, Some(other));
    assert_eq!(s.deployment(d2.id).unwrap().shadow, None);
    // A shadow deployment cannot be promoted or abandoned before it shadows.
    let d3 = s.create_deployment("shop", 1, None, Some(5)).unwrap();
    assert!(matches!(
        s.end_shadow(d3.id, DeployEvent::Promoted, "promoted", Some(&comparison)),
        Err(StoreError::Transition(_))
    ));
    assert_eq!(s.deployment(d3.id).unwrap().shadow, None, "rolled back");
}

#[test]
fn engine_instances_keep_the_engines_identity_and_are_recorded_once() {
    let mut s = store_with_release();
    let env = s.create_env("shop", 1, None).unwrap();
    let a = s
        .record_engine_instance(&env.id, "e1-task123", "10.0.1.7", 8080)
        .unwrap();
    assert_eq!(
        (a.id.as_str(), a.host.as_str(), a.port, a.pid),
        ("e1-task123", "10.0.1.7", 8080, None)
    );
    assert_eq!(a.state, InstanceState::Starting);
    s.set_instance_state(&a.id, InstanceState::Healthy, None)
        .unwrap();
    // Seen again on the next look: nothing changes.
    let again = s
        .record_engine_instance(&env.id, "e1-task123", "10.0.1.7", 8080)
        .unwrap();
    assert_eq!(again.state, InstanceState::Healthy);
    assert_eq!(s.instances(Some(&env.id), false).unwrap().len(), 1);
}

#[test]
fn a_canary_splits_the_route_until_a_swap_or_weight_zero() {
    let mut s = store_with_release();
    let stable = s.create_env("shop", 1, None).unwrap();
    s.swap_route("shop", &stable.id, None, None).unwrap();
    let d = s
        .create_deployment("shop", 1, Some(&stable.id), None)
        .unwrap();
    let canary = s.create_env("shop", 1, None).unwrap();
    s.attach_env(d.id, &canary.id).unwrap();
    s.advance(d.id, DeployEvent::InstancesStarted, "started")
        .unwrap();
    s.advance(d.id, DeployEvent::BecameHealthy, "healthy")
        .unwrap();
    let mut progress = molt_core::CanaryProgress {
        weight: 10,
        ..Default::default()
    };
    let state = s
        .canary_step(d.id, DeployEvent::CanaryStarted, &progress, "10 %")
        .unwrap();
    assert_eq!(state, DeployState::Canarying);
    assert_eq!(
        s.canary_splits().unwrap(),
        vec![("shop".to_string(), canary.id.clone(), 10)]
    );
    assert_eq!(s.deployment(d.id).unwrap().canary, Some(progress.clone()));
    // The route still names the stable environment.
    assert_eq!(s.app("shop").unwrap().routed_env, Some(stable.id.clone()));
    progress.weight = 0;
    s.canary_step(d.id, DeployEvent::CanaryAborted, &progress, "aborted")
        .unwrap();
    assert!(s.canary_splits().unwrap().is_empty());
    assert_eq!(s.deployment(d.id).unwrap().state, DeployState::Aborted);
    // A swap ends any split.
    let d2 = s
        .create_deployment("shop", 1, Some(&stable.id), None)
        .unwrap();
    s.attach_env(d2.id, &canary.id).unwrap();
    s.advance(d2.id, DeployEvent::InstancesStarted, "started")
        .unwrap();
    s.advance(d2.id, DeployEvent::BecameHealthy, "healthy")
        .unwrap();
    progress.weight = 50;
    s.canary_step(d2.id, DeployEvent::CanaryStarted, &progress, "50 %")
        .unwrap();
    s.swap_route("shop", &canary.id, None, None).unwrap();
    assert!(s.canary_splits().unwrap().is_empty());
}
