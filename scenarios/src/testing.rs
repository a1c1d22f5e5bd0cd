//! `cargo test` integration: which seeds a scenario test runs, and a failure message that says
//! how to replay.
//!
//! By default each scenario runs `DEFAULT_SEED_COUNT` fixed seeds (1, 2, ...), so `cargo test`
//! is fast and reproducible. `SIM_SEEDS=N` runs N seeds instead; `SIM_SEED=S` (decimal or
//! `0x` hex) runs exactly seed S, which is what a failure message tells you to paste.

use crate::outcome::Outcome;
use crate::runner::{RunOptions, Scenario, run_seed};

/// Seeds per scenario in a plain `cargo test`.
pub const DEFAULT_SEED_COUNT: u64 = 3;

/// Errors reading the seed variables.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeedError {
    /// The variable is not a number.
    Malformed {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
}

impl std::fmt::Display for SeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedError::Malformed { variable, value } => {
                write!(f, "{variable}={value:?} is not a decimal or 0x-hex number")
            }
        }
    }
}

impl std::error::Error for SeedError {}

/// Parses a seed written in decimal or `0x` hex.
pub fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.replace('_', "").parse().ok(),
    }
}

/// The seeds to run, given the values of `SIM_SEED` and `SIM_SEEDS`.
pub fn seeds_from(seed: Option<&str>, seeds: Option<&str>) -> Result<Vec<u64>, SeedError> {
    if let Some(value) = seed {
        let malformed = || SeedError::Malformed { variable: "SIM_SEED", value: value.to_string() };
        return Ok(vec![parse_seed(value).ok_or_else(malformed)?]);
    }
    let count = match seeds {
        Some(value) => parse_seed(value).ok_or_else(|| SeedError::Malformed {
            variable: "SIM_SEEDS",
            value: value.to_string(),
        })?,
        None => DEFAULT_SEED_COUNT,
    };
    Ok((1..=count).collect())
}

/// The seeds to run, from the environment.
pub fn seeds_from_env() -> Result<Vec<u64>, SeedError> {
    let seed = std::env::var("SIM_SEED").ok();
    let seeds = std::env::var("SIM_SEEDS").ok();
    seeds_from(seed.as_deref(), seeds.as_deref())
}

/// Runs `scenario` for the environment's seeds; panics on the first failure with the
/// violation, the replay command and the test command. A sweep-only scenario runs only for
/// `SIM_SEED` or `SIM_SEEDS`.
pub fn check_seeds(scenario: &dyn Scenario) -> Vec<Outcome> {
    let asked = std::env::var_os("SIM_SEED").is_some() || std::env::var_os("SIM_SEEDS").is_some();
    if scenario.sweep_only() && !asked {
        return Vec::new();
    }
    let seeds = seeds_from_env().unwrap_or_else(|error| panic!("{error}"));
    let mut outcomes = Vec::new();
    for seed in seeds {
        let outcome = run_seed(scenario, seed, &RunOptions::default());
        if outcome.verdict.is_failure() {
            panic!("{}", failure_message(scenario, &outcome));
        }
        outcomes.push(outcome);
    }
    outcomes
}

/// The message of a failed scenario test.
pub fn failure_message(scenario: &dyn Scenario, outcome: &Outcome) -> String {
    // The headline carries the violation's first line; the rest is the counterexample.
    let violation = outcome.violation.as_ref().map(ToString::to_string).unwrap_or_default();
    let details: String = violation.lines().skip(1).map(|line| format!("{line}\n")).collect();
    format!(
        "{}\n{details}replay: {}\nrerun:  {}",
        outcome.headline(),
        crate::replay_command(scenario, outcome.plan.seed),
        crate::test_command(scenario, outcome.plan.seed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_variables() {
        assert_eq!(seeds_from(None, None), Ok(vec![1, 2, 3]));
        assert_eq!(seeds_from(None, Some("5")), Ok(vec![1, 2, 3, 4, 5]));
        assert_eq!(seeds_from(Some("0x5eed"), Some("5")), Ok(vec![0x5eed]));
        assert_eq!(seeds_from(Some("0x5eed_1234"), None), Ok(vec![0x5eed_1234]));
        let error = seeds_from(Some("nope"), None).expect_err("malformed");
        assert_eq!(error.to_string(), "SIM_SEED=\"nope\" is not a decimal or 0x-hex number");
    }
}
