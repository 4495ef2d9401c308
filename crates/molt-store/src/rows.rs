//! SELECT lists and row decoders shared by the queries.

use rusqlite::Row;

use crate::records::*;
use crate::{corrupt, Result};

pub(crate) const RELEASE_SELECT: &str =
    "SELECT app, number, image, config, created_ms, pinned, note FROM releases";
pub(crate) const ENV_SELECT: &str =
    "SELECT id, app, release, state, created_ms, warm_until_ms, retired_ms, instances FROM environments";
pub(crate) const INSTANCE_SELECT: &str =
    "SELECT id, env, app, state, pid, start_time, port, started_ms, exit, host FROM instances";
pub(crate) const DEPLOYMENT_SELECT: &str =
    "SELECT id, app, release, env, prev_env, state, created_ms,
    updated_ms, error, figures, shadow_share, shadow, canary FROM deployments";

pub(crate) fn app_row(r: &Row<'_>) -> rusqlite::Result<AppRecord> {
    let maintenance: Option<String> = r.get(3)?;
    let shadow: Option<String> = r.get(4)?;
    let scale: Option<String> = r.get(5)?;
    Ok(AppRecord {
        name: r.get(0)?,
        created_ms: r.get::<_, i64>(1)? as u64,
        routed_env: r.get(2)?,
        // Written by this crate only; an unreadable value is treated as "not in maintenance".
        maintenance: maintenance.and_then(|m| serde_json::from_str(&m).ok()),
        // Likewise: an unreadable value means "no shadow traffic".
        shadow: shadow.and_then(|m| serde_json::from_str(&m).ok()),
        // Likewise: an unreadable value means "the release's bounds".
        scale: scale.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

pub(crate) fn release_row(r: &Row<'_>) -> rusqlite::Result<Result<ReleaseRecord>> {
    let image: String = r.get(2)?;
    let config: String = r.get(3)?;
    Ok((|| {
        Ok(ReleaseRecord {
            app: r.get(0)?,
            number: r.get::<_, i64>(1)? as u64,
            image: image.parse().map_err(corrupt)?,
            config: serde_json::from_str(&config).map_err(corrupt)?,
            created_ms: r.get::<_, i64>(4)? as u64,
            pinned: r.get(5)?,
            note: r.get(6)?,
        })
    })())
}

pub(crate) fn env_state_str(s: EnvState) -> &'static str {
    match s {
        EnvState::Starting => "starting",
        EnvState::Ready => "ready",
        EnvState::Retired => "retired",
    }
}

pub(crate) fn env_row(r: &Row<'_>) -> rusqlite::Result<Result<EnvRecord>> {
    let state: String = r.get(3)?;
    let state = match state.as_str() {
        "starting" => EnvState::Starting,
        "ready" => EnvState::Ready,
        "retired" => EnvState::Retired,
        other => return Ok(Err(corrupt(format!("environment state '{other}'")))),
    };
    Ok(Ok(EnvRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        release: r.get::<_, i64>(2)? as u64,
        state,
        created_ms: r.get::<_, i64>(4)? as u64,
        warm_until_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        retired_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        instances: r
            .get::<_, Option<i64>>(7)?
            .map(|v| v.clamp(0, u32::MAX as i64) as u32),
    }))
}

pub(crate) fn instance_state_str(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Starting => "starting",
        InstanceState::Healthy => "healthy",
        InstanceState::Unhealthy => "unhealthy",
        InstanceState::Drifted => "drifted",
        InstanceState::Stopping => "stopping",
        InstanceState::Stopped => "stopped",
    }
}

pub(crate) fn instance_row(r: &Row<'_>) -> rusqlite::Result<Result<InstanceRecord>> {
    let state: String = r.get(3)?;
    let state = match state.as_str() {
        "starting" => InstanceState::Starting,
        "healthy" => InstanceState::Healthy,
        "unhealthy" => InstanceState::Unhealthy,
        "drifted" => InstanceState::Drifted,
        "stopping" => InstanceState::Stopping,
        "stopped" => InstanceState::Stopped,
        other => return Ok(Err(corrupt(format!("instance state '{other}'")))),
    };
    Ok(Ok(InstanceRecord {
        id: r.get(0)?,
        env: r.get(1)?,
        app: r.get(2)?,
        state,
        pid: r.get(4)?,
        start_time: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        host: r.get(9)?,
        port: r.get(6)?,
        started_ms: r.get::<_, i64>(7)? as u64,
        exit: r.get(8)?,
    }))
}

pub(crate) fn deployment_row(r: &Row<'_>) -> rusqlite::Result<Result<DeploymentRecord>> {
    let state: String = r.get(5)?;
    let figures: Option<String> = r.get(9)?;
    let shadow: Option<String> = r.get(11)?;
    let canary: Option<String> = r.get(12)?;
    Ok((|| {
        Ok(DeploymentRecord {
            id: r.get::<_, i64>(0)? as u64,
            app: r.get(1)?,
            release: r.get::<_, i64>(2)? as u64,
            env: r.get(3)?,
            prev_env: r.get(4)?,
            state: state.parse().map_err(corrupt)?,
            created_ms: r.get::<_, i64>(6)? as u64,
            updated_ms: r.get::<_, i64>(7)? as u64,
            error: r.get(8)?,
            figures: figures
                .map(|f| serde_json::from_str(&f))
                .transpose()
                .map_err(corrupt)?,
            shadow_share: r.get::<_, Option<i64>>(10)?.map(|n| n as u32),
            shadow: shadow
                .map(|c| serde_json::from_str(&c))
                .transpose()
                .map_err(corrupt)?,
            canary: canary
                .map(|c| serde_json::from_str(&c))
                .transpose()
                .map_err(corrupt)?,
        })
    })())
}
