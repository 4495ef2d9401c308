//! Canary deployments (`[deploy] strategy = "canary"`): the steps' weights and the analysis
//! settings, and the two decisions the controller carries out each analysis interval — the
//! interval's verdict from the router's counters ([`judge`]) and what the canary does next
//! ([`next_move`]). Both are pure: the same counts and times give the same answer.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::duration::{parse_duration, serde_text};
use crate::InputError;

/// The steps and analysis of a canary deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanarySpec {
    /// Weights the canary takes in turn (strictly increasing, 1–99), each held at least its
    /// pause and until an interval passed.
    pub steps: Vec<CanaryStep>,
    /// How each interval is judged.
    pub analysis: Analysis,
}

/// One step: the canary's share of the app's traffic and how long it holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// Percent of the app's clients (sticky buckets) sent to the canary.
    pub weight: u32,
    /// Least time at this weight before the next step.
    #[serde(with = "serde_text")]
    pub pause: Duration,
}

/// `[deploy.analysis]`: what an interval of canary traffic must show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Length of one analysis interval.
    #[serde(with = "serde_text")]
    pub interval: Duration,
    /// Least share (0–1) of the canary's answers that are not 5xx.
    pub success_rate: Option<f64>,
    /// Highest p99 latency of the canary to the response head, in ms.
    pub p99_ms: Option<u64>,
    /// Highest ratio of the canary's p99 to the stable environment's (at least 1).
    pub p99_ratio: Option<f64>,
    /// Fewer canary requests in an interval make it inconclusive (no verdict on no data).
    pub min_requests: u64,
    /// Failed intervals that abort the canary.
    pub failure_limit: u32,
    /// Longest a step may last without being able to move on; then the canary is aborted.
    #[serde(with = "serde_text")]
    pub progress_deadline: Duration,
}

// The parser admits no NaN, so equality is reflexive.
impl Eq for Analysis {}

/// What the router counted for one environment during one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Answered requests (router errors included).
    pub requests: u64,
    /// Of them, 5xx answers (the router's 502/503/504 included).
    pub errors: u64,
    /// p99 to the response head in ms (a histogram bucket's upper bound); `None` without
    /// requests, or when it falls past the last bucket (10 s).
    pub p99_ms: Option<f64>,
}

/// The verdict of one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every criterion held.
    Passed,
    /// A criterion did not hold; counts toward `failure_limit`.
    Failed,
    /// Too few canary requests to judge: neither passes nor fails.
    Inconclusive,
}

/// An interval's verdict with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// The canary's counts.
    pub canary: Sample,
    /// The stable environment's counts over the same interval.
    pub stable: Option<Sample>,
    /// Why it failed (or why it is inconclusive), one line each.
    pub reasons: Vec<String>,
}

/// What the canary does after an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Stay at this step.
    Stay,
    /// Move to step `n` (its weight).
    Step(usize),
    /// Every step passed: the canary takes all the traffic.
    Promote,
    /// Weight back to 0 and the canary retired.
    Abort(AbortReason),
}

/// Why a canary was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// `failure_limit` intervals failed.
    FailureLimit,
    /// A step could not move on within `progress_deadline` (too little traffic).
    ProgressDeadline,
    /// `molt abort`.
    User,
}

/// Where a canary stands: journaled with each step and verdict, so a restart resumes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryProgress {
    /// Index of the current step.
    pub step: usize,
    /// The canary's weight now (0 once aborted).
    pub weight: u32,
    /// When the current step began, ms since the epoch.
    pub step_started_ms: u64,
    /// Intervals passed during the current step.
    pub passed_in_step: u32,
    /// Intervals failed during the whole canary.
    pub failed: u32,
    /// Every interval's verdict, oldest first.
    pub verdicts: Vec<IntervalRecord>,
    /// Why it was aborted, once it was.
    #[serde(default)]
    pub aborted: Option<AbortReason>,
}

/// One interval as recorded on the deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// End of the interval, ms since the epoch.
    pub at_ms: u64,
    /// The step it belonged to.
    pub step: usize,
    /// The canary's weight during it.
    pub weight: u32,
    /// The verdict and its numbers.
    #[serde(flatten)]
    pub judgement: Judgement,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    weight: Spanned<i64>,
    pause: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAnalysis {
    interval: Option<Spanned<String>>,
    success_rate: Option<Spanned<f64>>,
    p99: Option<Spanned<String>>,
    p99_ratio: Option<Spanned<f64>>,
    min_requests: Option<Spanned<i64>>,
    failure_limit: Option<Spanned<i64>>,
    progress_deadline: Option<Spanned<String>>,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: Duration::from_secs(10),
            success_rate: Some(0.99),
            p99_ms: None,
            p99_ratio: None,
            min_requests: 20,
            failure_limit: 2,
            progress_deadline: Duration::from_secs(600),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortReason::FailureLimit => "the failure limit was reached",
            AbortReason::ProgressDeadline => "the progress deadline passed",
            AbortReason::User => "aborted by the user",
        })
    }
}

impl Sample {
    /// Share of answers that were not 5xx (1 without requests).
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            1.0 - self.errors.min(self.requests) as f64 / self.requests as f64
        }
    }
}

impl Sample {
    /// The p99 to judge: past the last bucket counts as infinitely slow, no requests as 0.
    fn p99_judged(&self) -> f64 {
        match self.p99_ms {
            Some(ms) => ms,
            None if self.requests == 0 => 0.0,
            None => f64::INFINITY,
        }
    }
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Sample| match s.requests {
            0 => "0 requests".to_string(),
            n => format!(
                "{n} requests, success {:.2} %, p99 {}",
                s.success_rate() * 100.0,
                p99_text(s.p99_judged())
            ),
        };
        write!(f, "{}: canary {}", self.verdict, side(&self.canary))?;
        if let Some(stable) = &self.stable {
            write!(f, "; stable {}", side(stable))?;
        }
        if !self.reasons.is_empty() {
            write!(f, " ({})", self.reasons.join("; "))?;
        }
        Ok(())
    }
}

impl CanaryProgress {
    /// A canary at its first step, begun at `now_ms`.
    pub fn start(spec: &CanarySpec, now_ms: u64) -> CanaryProgress {
        CanaryProgress {
            weight: spec.steps[0].weight,
            step_started_ms: now_ms,
            ..CanaryProgress::default()
        }
    }

    /// Counts an interval's judgement.
    pub fn record(&mut self, judgement: Judgement, at_ms: u64) {
        match judgement.verdict {
            Verdict::Passed => self.passed_in_step += 1,
            Verdict::Failed => self.failed += 1,
            Verdict::Inconclusive => {}
        }
        self.verdicts.push(IntervalRecord {
            at_ms,
            step: self.step,
            weight: self.weight,
            judgement,
        });
    }

    /// Moves to step `step` of `spec` at `now_ms`.
    pub fn enter_step(&mut self, spec: &CanarySpec, step: usize, now_ms: u64) {
        self.step = step;
        self.weight = spec.steps[step].weight;
        self.step_started_ms = now_ms;
        self.passed_in_step = 0;
    }
}

/// The verdict of one interval: inconclusive below `min_requests` canary requests, else
/// failed when the success rate, the p99 or the p99 ratio to the stable environment (judged
/// only when the stable environment had `min_requests` too) does not hold.
pub fn judge(analysis: &Analysis, canary: Sample, stable: Option<Sample>) -> Judgement {
    let mut reasons = Vec::new();
    if canary.requests < analysis.min_requests {
        reasons.push(format!(
            "{} canary requests, fewer than min_requests = {}",
            canary.requests, analysis.min_requests
        ));
        return Judgement {
            verdict: Verdict::Inconclusive,
            canary,
            stable,
            reasons,
        };
    }
    if let Some(want) = analysis.success_rate {
        if canary.success_rate() < want {
            reasons.push(format!(
                "success rate {:.2} % below {:.2} %",
                canary.success_rate() * 100.0,
                want * 100.0
            ));
        }
    }
    if let Some(limit) = analysis.p99_ms {
        let limit_ms = limit as f64;
        if canary.p99_judged() > limit_ms {
            reasons.push(format!(
                "p99 {} above {}",
                p99_text(canary.p99_judged()),
                p99_text(limit_ms)
            ));
        }
    }
    if let (Some(ratio), Some(stable)) = (analysis.p99_ratio, stable) {
        if stable.requests >= analysis.min_requests
            && stable.p99_judged() > 0.0
            && canary.p99_judged() > stable.p99_judged() * ratio
        {
            reasons.push(format!(
                "p99 {} above {ratio} × the stable {}",
                p99_text(canary.p99_judged()),
                p99_text(stable.p99_judged())
            ));
        }
    }
    Judgement {
        verdict: if reasons.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        },
        canary,
        stable,
        reasons,
    }
}

/// What the canary does now: abort once `failure_limit` intervals failed; move on once the
/// step held its pause and an interval of it passed (promote after the last); abort when the
/// step has lasted `progress_deadline` without that; else stay.
pub fn next_move(spec: &CanarySpec, progress: &CanaryProgress, now_ms: u64) -> Move {
    let analysis = &spec.analysis;
    if progress.failed >= analysis.failure_limit {
        return Move::Abort(AbortReason::FailureLimit);
    }
    let held_ms = now_ms.saturating_sub(progress.step_started_ms);
    let pause_ms = spec
        .steps
        .get(progress.step)
        .map(|s| s.pause.as_millis() as u64)
        .unwrap_or(0);
    if held_ms >= pause_ms && progress.passed_in_step > 0 {
        return if progress.step + 1 < spec.steps.len() {
            Move::Step(progress.step + 1)
        } else {
            Move::Promote
        };
    }
    if held_ms >= analysis.progress_deadline.as_millis() as u64 {
        return Move::Abort(AbortReason::ProgressDeadline);
    }
    Move::Stay
}

fn p99_text(ms: f64) -> String {
    if ms.is_finite() {
        format!("≤{ms} ms")
    } else {
        "past 10 s".into()
    }
}

/// `steps` and `[deploy.analysis]` of a canary, each value checked at its line and column.
pub(crate) fn parse_canary(
    steps: &Spanned<Vec<Spanned<RawStep>>>,
    raw: Option<&RawAnalysis>,
    at: &impl Fn(Range<usize>, String) -> InputError,
) -> Result<CanarySpec, InputError> {
    let duration = |v: &Option<Spanned<String>>, default: Duration| match v {
        Some(s) => parse_duration(s.get_ref()).map_err(|e| at(s.span(), e.to_string())),
        None => Ok(default),
    };
    if steps.get_ref().is_empty() {
        return Err(at(
            steps.span(),
            "a canary needs at least one step, e.g. steps = [{ weight = 10, pause = \"1m\" }]"
                .into(),
        ));
    }
    let mut parsed: Vec<CanaryStep> = Vec::new();
    for step in steps.get_ref() {
        let w = &step.get_ref().weight;
        let weight = match u32::try_from(*w.get_ref()) {
            Ok(n) if (1..=99).contains(&n) => n,
            _ => {
                return Err(at(
                    w.span(),
                    format!("weight must be from 1 to 99 (percent), not {}", w.get_ref()),
                ))
            }
        };
        if let Some(prev) = parsed.last() {
            if weight <= prev.weight {
                return Err(at(
                    w.span(),
                    format!(
                        "weights must increase step by step: {weight} follows {}",
                        prev.weight
                    ),
                ));
            }
        }
        let pause = duration(&step.get_ref().pause, Duration::ZERO)?;
        parsed.push(CanaryStep { weight, pause });
    }
    let analysis = parse_analysis(raw, at)?;
    if let Some(slow) = parsed
        .iter()
        .find(|s| s.pause >= analysis.progress_deadline)
    {
        let span = raw
            .and_then(|r| r.progress_deadline.as_ref())
            .map(|s| s.span())
            .unwrap_or_else(|| steps.span());
        return Err(at(
            span,
            format!(
                "progress_deadline ({}) must be longer than every step's pause ({})",
                crate::format_duration(analysis.progress_deadline),
                crate::format_duration(slow.pause)
            ),
        ));
    }
    Ok(CanarySpec {
        steps: parsed,
        analysis,
    })
}

/// `[deploy.analysis]`, each value checked at its line and column.
pub(crate) fn parse_analysis(
    raw: Option<&RawAnalysis>,
    at: &impl Fn(Range<usize>, String) -> InputError,
) -> Result<Analysis, InputError> {
    let duration = |v: &Option<Spanned<String>>, default: Duration| match v {
        Some(s) => parse_duration(s.get_ref()).map_err(|e| at(s.span(), e.to_string())),
        None => Ok(default),
    };
    let d = Analysis::default();
    let empty = RawAnalysis::default();
    let raw = raw.unwrap_or(&empty);
    let fraction = |v: &Option<Spanned<f64>>, ok: fn(f64) -> bool, what: &str| match v {
        Some(x) if !ok(*x.get_ref()) => Err(at(x.span(), what.to_string())),
        Some(x) => Ok(Some(*x.get_ref())),
        None => Ok(None),
    };
    let whole = |v: &Option<Spanned<i64>>, lo: i64, what: &str, default: i64| match v {
        Some(n) if *n.get_ref() < lo => Err(at(
            n.span(),
            format!("{what} must be a whole number from {lo}"),
        )),
        Some(n) => Ok(*n.get_ref()),
        None => Ok(default),
    };
    let success_rate = fraction(
        &raw.success_rate,
        |x| (0.0..=1.0).contains(&x),
        "success_rate is a share from 0 to 1, e.g. 0.99",
    )?;
    let p99_ratio = fraction(
        &raw.p99_ratio,
        |x| x >= 1.0 && x.is_finite(),
        "p99_ratio must be at least 1 (the canary's p99 over the stable one's)",
    )?;
    let p99_ms = match &raw.p99 {
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d.as_millis() as u64),
            Ok(_) => return Err(at(s.span(), "p99 must be more than 0".into())),
            Err(e) => return Err(at(s.span(), e.to_string())),
        },
        None => None,
    };
    let interval = duration(&raw.interval, d.interval)?;
    if interval.is_zero() {
        let span = raw.interval.as_ref().map(|s| s.span()).unwrap_or(0..0);
        return Err(at(span, "interval must be more than 0".into()));
    }
    let progress_deadline = duration(&raw.progress_deadline, d.progress_deadline)?;
    // Without any criterion given, the success rate's default applies.
    let any = success_rate.is_some() || p99_ms.is_some() || p99_ratio.is_some();
    Ok(Analysis {
        interval,
        success_rate: if any { success_rate } else { d.success_rate },
        p99_ms,
        p99_ratio,
        min_requests: whole(&raw.min_requests, 1, "min_requests", d.min_requests as i64)? as u64,
        failure_limit: u32::try_from(whole(
            &raw.failure_limit,
            1,
            "failure_limit",
            i64::from(d.failure_limit),
        )?)
        .unwrap_or(u32::MAX),
        progress_deadline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunConfig;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<crate::Manifest, InputError> {
        crate::Manifest::parse(text, "molt.toml")
    }

    #[test]
    fn canary_strategy_in_molt_toml() {
        let base = "name = \"a\"\ncommand = [\"x\"]\n[deploy]\nstrategy = \"canary\"\n";
        let m = parse(&format!(
            "{base}steps = [{{ weight = 5, pause = \"1m\" }}, {{ weight = 50 }}]\n\
             [deploy.analysis]\ninterval = \"5s\"\np99 = \"500ms\"\np99_ratio = 1.5\n\
             min_requests = 10\nfailure_limit = 3\nprogress_deadline = \"5m\"\n"
        ))
        .unwrap();
        let c = m.config.deploy.canary.clone().unwrap();
        assert_eq!(c.steps.len(), 2);
        assert_eq!(
            (c.steps[0].weight, c.steps[0].pause),
            (5, Duration::from_secs(60))
        );
        assert_eq!(c.steps[1].pause, Duration::ZERO);
        let a = &c.analysis;
        assert_eq!(a.interval, Duration::from_secs(5));
        assert_eq!(
            (a.p99_ms, a.p99_ratio, a.success_rate),
            (Some(500), Some(1.5), None)
        );
        assert_eq!((a.min_requests, a.failure_limit), (10, 3));
        // Stored with the release and read back; blue/green configs stay as they were.
        let json = serde_json::to_string(&m.config).unwrap();
        assert_eq!(serde_json::from_str::<RunConfig>(&json).unwrap(), m.config);
        let plain = parse("name = \"a\"\ncommand = [\"x\"]\n").unwrap().config;
        assert!(!serde_json::to_string(&plain).unwrap().contains("canary"));
        // Without a criterion, the default success rate applies.
        let d = parse(&format!("{base}steps = [{{ weight = 10 }}]\n")).unwrap();
        assert_eq!(
            d.config.deploy.canary.unwrap().analysis.success_rate,
            Some(0.99)
        );
        for (text, want_at, what) in [
            ("steps = []\n", "line 5", "at least one step"),
            (
                "steps = [{ weight = 0 }]\n",
                "line 5, column 21",
                "from 1 to 99",
            ),
            ("steps = [{ weight = 100 }]\n", "line 5", "from 1 to 99"),
            (
                "steps = [{ weight = 20 }, { weight = 20 }]\n",
                "line 5, column 38",
                "increase",
            ),
            (
                "steps = [{ weight = 20, wait = \"1s\" }]\n",
                "line 5",
                "wait",
            ),
            ("steps = [{ weight = 5, pause = \"1x\" }]\n", "line 5", "1x"),
            (
                "steps = [{ weight = 5 }]\n[deploy.analysis]\np99_ratio = 0.5\n",
                "line 7",
                "at least 1",
            ),
            (
                "steps = [{ weight = 5 }]\n[deploy.analysis]\nsuccess_rate = 99\n",
                "line 7",
                "from 0 to 1",
            ),
            (
                "steps = [{ weight = 5 }]\n[deploy.analysis]\nbogus = 1\n",
                "line 7",
                "bogus",
            ),
            (
                "steps = [{ weight = 5 }]\n[deploy.analysis]\nmin_requests = 0\n",
                "line 7",
                "min_requests",
            ),
            (
                "steps = [{ weight = 5, pause = \"10m\" }]\n",
                "line 5",
                "progress_deadline",
            ),
            ("", "line 4", "needs steps"),
        ] {
            let err = parse(&format!("{base}{text}")).unwrap_err().to_string();
            assert!(err.contains(want_at), "{err:?} lacks {want_at:?}");
            assert!(err.contains(what), "{err:?} lacks {what:?}");
        }
        // With blue/green, [deploy.analysis] is the watch's.
        let bg = parse(
            "name = \"a\"\ncommand = [\"x\"]\n[deploy]\nwatch = \"1m\"\n[deploy.analysis]\n\
             interval = \"2s\"\nfailure_limit = 1\n",
        )
        .unwrap();
        let watch = bg.config.deploy.watch_analysis.unwrap();
        assert_eq!(
            (watch.interval, watch.failure_limit),
            (Duration::from_secs(2), 1)
        );
        assert!(bg.config.deploy.canary.is_none());
        // Without [deploy.analysis], blue/green's watch judges by the defaults.
        let plain = parse("name = \"a\"\ncommand = [\"x\"]\n").unwrap();
        assert_eq!(
            plain.config.deploy.watch_analysis,
            Some(Analysis::default())
        );
        let other = "name = \"a\"\ncommand = [\"x\"]\n[deploy]\n";
        for (text, what) in [
            ("strategy = \"rolling\"\n", "unknown strategy"),
            ("steps = [{ weight = 5 }]\n", "steps are for"),
        ] {
            let err = parse(&format!("{other}{text}")).unwrap_err().to_string();
            assert!(err.contains(what), "{err:?} lacks {what:?}");
        }
    }

    fn spec(weights: &[(u32, u64)]) -> CanarySpec {
        CanarySpec {
            steps: weights
                .iter()
                .map(|(weight, pause_s)| CanaryStep {
                    weight: *weight,
                    pause: Duration::from_secs(*pause_s),
                })
                .collect(),
            analysis: Analysis::default(),
        }
    }

    fn sample(requests: u64, errors: u64, p99_ms: f64) -> Sample {
        Sample {
            requests,
            errors,
            p99_ms: p99_ms.is_finite().then_some(p99_ms),
        }
    }

    #[test]
    fn verdicts() {
        let a = Analysis {
            p99_ms: Some(500),
            p99_ratio: Some(2.0),
            ..Analysis::default()
        };
        assert_eq!(
            judge(&a, sample(100, 0, 5.0), None).verdict,
            Verdict::Passed
        );
        assert_eq!(
            judge(&a, sample(100, 1, 5.0), None).verdict,
            Verdict::Passed
        );
        let failing = judge(&a, sample(100, 2, 5.0), None);
        assert_eq!(failing.verdict, Verdict::Failed);
        assert!(failing.reasons[0].contains("success rate 98.00 %"));
        assert_eq!(
            judge(&a, sample(100, 0, 1000.0), None).verdict,
            Verdict::Failed
        );
        assert_eq!(
            judge(&a, sample(100, 0, f64::INFINITY), None).verdict,
            Verdict::Failed
        );
        // Ratio to the stable environment, judged only when it has enough requests.
        let slow = judge(&a, sample(100, 0, 50.0), Some(sample(100, 0, 10.0)));
        assert_eq!(slow.verdict, Verdict::Failed);
        assert!(slow.to_string().contains("stable"), "{slow}");
        let few = judge(&a, sample(100, 0, 50.0), Some(sample(3, 0, 10.0)));
        assert_eq!(few.verdict, Verdict::Passed);
        let none = judge(&a, sample(19, 19, 5000.0), None);
        assert_eq!(none.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn moves_through_the_steps() {
        let s = spec(&[(5, 60), (50, 0)]);
        let mut p = CanaryProgress::start(&s, 1_000);
        assert_eq!(p.weight, 5);
        assert_eq!(next_move(&s, &p, 2_000), Move::Stay);
        let pass = judge(&s.analysis, sample(100, 0, 1.0), None);
        p.record(pass.clone(), 2_000);
        // Passed, but the pause has not elapsed.
        assert_eq!(next_move(&s, &p, 2_000), Move::Stay);
        assert_eq!(next_move(&s, &p, 61_000), Move::Step(1));
        p.enter_step(&s, 1, 61_000);
        assert_eq!((p.weight, p.passed_in_step), (50, 0));
        assert_eq!(next_move(&s, &p, 61_000), Move::Stay);
        p.record(pass, 62_000);
        assert_eq!(next_move(&s, &p, 62_000), Move::Promote);
        assert_eq!(p.verdicts.len(), 2);
    }

    #[test]
    fn aborts_on_failures_and_on_the_deadline() {
        let s = spec(&[(10, 0)]);
        let mut p = CanaryProgress::start(&s, 0);
        let fail = judge(&s.analysis, sample(100, 50, 1.0), None);
        p.record(fail.clone(), 1);
        assert_eq!(next_move(&s, &p, 1), Move::Stay);
        p.record(fail, 2);
        assert_eq!(next_move(&s, &p, 2), Move::Abort(AbortReason::FailureLimit));
        let mut quiet = CanaryProgress::start(&s, 0);
        quiet.record(judge(&s.analysis, sample(1, 0, 1.0), None), 1);
        assert_eq!(next_move(&s, &quiet, 599_999), Move::Stay);
        assert_eq!(
            next_move(&s, &quiet, 600_000),
            Move::Abort(AbortReason::ProgressDeadline)
        );
    }

    fn arb_sample() -> impl Strategy<Value = Sample> {
        (
            0u64..200,
            0u64..200,
            prop_oneof![Just(f64::INFINITY), 0.0f64..20_000.0],
        )
            .prop_map(|(requests, errors, p99_ms)| sample(requests, errors.min(requests), p99_ms))
    }

    fn arb_analysis() -> impl Strategy<Value = Analysis> {
        (
            proptest::option::of(0.0f64..=1.0),
            proptest::option::of(1u64..5_000),
            proptest::option::of(1.0f64..4.0),
            1u64..100,
        )
            .prop_map(|(success_rate, p99, p99_ratio, min_requests)| Analysis {
                success_rate,
                p99_ms: p99,
                p99_ratio,
                min_requests,
                ..Analysis::default()
            })
    }

    proptest! {
        /// Below min_requests an interval is inconclusive and never counts as failed; at or
        /// above it, it is never inconclusive; and the same counts give the same verdict.
        #[test]
        fn inconclusive_is_never_failed(a in arb_analysis(), c in arb_sample(), s in proptest::option::of(arb_sample())) {
            let j = judge(&a, c, s);
            prop_assert_eq!(j.verdict == Verdict::Inconclusive, c.requests < a.min_requests);
            prop_assert_eq!(&judge(&a, c, s), &j);
            prop_assert_eq!(j.verdict == Verdict::Failed, !j.reasons.is_empty() && c.requests >= a.min_requests);
            let mut p = CanaryProgress::default();
            p.record(j.clone(), 0);
            if j.verdict == Verdict::Inconclusive {
                prop_assert_eq!(p.failed, 0);
                prop_assert_eq!(p.passed_in_step, 0);
            }
        }

        /// A canary never moves on without a passed interval, never aborts for failures below
        /// the limit, and only promotes from its last step.
        #[test]
        fn moves_are_earned(passed in 0u32..3, failed in 0u32..4, step in 0usize..3, held in 0u64..1_000_000) {
            let s = spec(&[(5, 30), (20, 30), (60, 30)]);
            let p = CanaryProgress { step, passed_in_step: passed, failed, step_started_ms: 0, ..CanaryProgress::default() };
            match next_move(&s, &p, held) {
                Move::Step(n) => { prop_assert!(passed > 0 && n == step + 1 && held >= 30_000); }
                Move::Promote => { prop_assert!(passed > 0 && step == 2); }
                Move::Abort(AbortReason::FailureLimit) => { prop_assert!(failed >= s.analysis.failure_limit); }
                Move::Abort(_) => { prop_assert!(held >= 600_000); }
                Move::Stay => { prop_assert!(failed < s.analysis.failure_limit); }
            }
        }
    }
}
