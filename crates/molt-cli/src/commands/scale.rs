//! `molt scale`: the live environment's instance count and the app's autoscaling bounds.

use anyhow::Result;
use molt_wire::{ScaleOutcome, ScaleRequest};

use super::images::actor;
use crate::client::Client;
use crate::output::print_json;

/// `molt scale APP [COUNT] [--min N] [--max N] [--reset]`.
pub(crate) async fn scale(
    client: &Client,
    app: &str,
    request: ScaleRequest,
    json: bool,
) -> Result<i32> {
    let request = ScaleRequest {
        actor: Some(actor()),
        ..request
    };
    let answer = client
        .post_answer(
            &format!("/v1/apps/{app}/scale"),
            &serde_json::to_value(&request)?,
        )
        .await?;
    let outcome: ScaleOutcome = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(0);
    }
    if outcome.from == outcome.to {
        println!("{app}: {} keeps {} instance(s)", outcome.env, outcome.to);
    } else {
        let how = if outcome.to > outcome.from {
            "new instances start now and take traffic once healthy"
        } else {
            "leaving instances finish their requests, then stop"
        };
        println!(
            "{app}: {} scaled from {} to {} instance(s): {how}",
            outcome.env, outcome.from, outcome.to
        );
    }
    match &outcome.autoscaling {
        Some(s) => println!(
            "autoscaling between {} and {} instances, {} requests in flight per instance{}",
            s.min,
            s.max,
            s.concurrency,
            if s.min == 0 {
                format!(
                    "; to zero after {} without a request",
                    molt_core::format_duration(s.idle)
                )
            } else {
                String::new()
            }
        ),
        None => println!("no autoscaling: the count stays until the next molt scale"),
    }
    Ok(0)
}
