//! The lifecycle of a build: the states it passes through and the changes that move it between them.
//! [`transition`] is the one rule for every status change; the store applies what it returns
//! ([`crate::store`]'s `change_build`) and records each change as a build event (DESIGN §3c).
//!
//! ```text
//!   (new) --Queue--> queued --Claim--> initializing --Run--> running
//!                      |                    |                   |
//!                      | Cancel             | Finish(outcome)   | Finish(outcome)
//!                      | Supersede          | Cancel, Lost      | Cancel, Lost
//!                      | Unreadable         v                   v
//!                      +--------------> stopped(outcome) <------+
//! ```

use super::{BuildOutcome, BuildStatus};

/// Where a build is in its lifecycle: its status and, once stopped, how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildState {
    Queued,
    Initializing,
    Running,
    Stopped(BuildOutcome),
}

impl BuildState {
    /// Every state, in lifecycle order (each outcome of `stopped` is a state of its own).
    pub fn all() -> Vec<BuildState> {
        let mut all = vec![
            BuildState::Queued,
            BuildState::Initializing,
            BuildState::Running,
        ];
        all.extend(BuildOutcome::ALL.iter().map(|&o| BuildState::Stopped(o)));
        all
    }

    /// The status column of this state.
    pub fn status(self) -> BuildStatus {
        match self {
            BuildState::Queued => BuildStatus::Queued,
            BuildState::Initializing => BuildStatus::Initializing,
            BuildState::Running => BuildStatus::Running,
            BuildState::Stopped(_) => BuildStatus::Stopped,
        }
    }

    /// The outcome column of this state: set exactly when stopped.
    pub fn outcome(self) -> Option<BuildOutcome> {
        match self {
            BuildState::Stopped(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// The state a stored status and outcome stand for; an error for a pair Kiln never writes (a
    /// stopped build without an outcome, or an outcome on a build that has not stopped).
    pub fn from_parts(status: BuildStatus, outcome: Option<BuildOutcome>) -> anyhow::Result<Self> {
        Ok(match (status, outcome) {
            (BuildStatus::Queued, None) => BuildState::Queued,
            (BuildStatus::Initializing, None) => BuildState::Initializing,
            (BuildStatus::Running, None) => BuildState::Running,
            (BuildStatus::Stopped, Some(outcome)) => BuildState::Stopped(outcome),
            (status, outcome) => anyhow::bail!(
                "a build cannot be {} with outcome {:?}",
                status.as_str(),
                outcome.map(BuildOutcome::as_str)
            ),
        })
    }

    /// Initializing or running: a runner holds the build.
    pub fn in_progress(self) -> bool {
        matches!(self, BuildState::Initializing | BuildState::Running)
    }

    /// Where a Worker whose newest build is in this state goes in an overview (the dashboard's and
    /// `kiln builds list`'s), lowest first: 0 in progress, 1 failed or terminated, 2 queued, 3 the rest.
    pub fn attention(self) -> u8 {
        match self {
            BuildState::Initializing | BuildState::Running => 0,
            BuildState::Stopped(BuildOutcome::Fail | BuildOutcome::Terminated) => 1,
            BuildState::Queued => 2,
            BuildState::Stopped(_) => 3,
        }
    }
}

/// Why a build's status changes. Each change has one target state and the states it may start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildChange {
    /// A new build waits for a runner: `(new) → queued`.
    Queue,
    /// A runner claims the oldest queued build its account may start: `queued → initializing`.
    Claim,
    /// Its runner has prepared the build and starts its steps: `initializing → running`.
    Run,
    /// Its runner ends the build with the outcome it reached (`terminated` for a timeout, a lost
    /// claim or a shutdown; `cancelled` when it saw the cancel first): `initializing | running →
    /// stopped(outcome)`.
    Finish(BuildOutcome),
    /// A user cancels the build, or its trigger or Worker configuration is deleted:
    /// `queued | initializing | running → stopped(cancelled)`.
    Cancel,
    /// A newer build of the same trigger and branch was queued: `queued → stopped(skipped)`.
    Supersede,
    /// Its stored settings cannot be read when it is claimed (the secret key changed):
    /// `queued → stopped(fail)`.
    Unreadable,
    /// Its runner was lost (its lease expired, or its node restarted):
    /// `initializing | running → stopped(terminated)`.
    Lost,
}

impl BuildChange {
    /// The state the build is in after this change.
    pub fn target(self) -> BuildState {
        match self {
            BuildChange::Queue => BuildState::Queued,
            BuildChange::Claim => BuildState::Initializing,
            BuildChange::Run => BuildState::Running,
            BuildChange::Finish(outcome) => BuildState::Stopped(outcome),
            BuildChange::Cancel => BuildState::Stopped(BuildOutcome::Cancelled),
            BuildChange::Supersede => BuildState::Stopped(BuildOutcome::Skipped),
            BuildChange::Unreadable => BuildState::Stopped(BuildOutcome::Fail),
            BuildChange::Lost => BuildState::Stopped(BuildOutcome::Terminated),
        }
    }

    /// Whether this change may start from `from` (`None`: the build does not exist yet).
    fn starts_from(self, from: Option<BuildState>) -> bool {
        use BuildState::*;
        match self {
            BuildChange::Queue => from.is_none(),
            BuildChange::Claim | BuildChange::Supersede | BuildChange::Unreadable => {
                from == Some(Queued)
            }
            BuildChange::Run => from == Some(Initializing),
            BuildChange::Finish(_) | BuildChange::Lost => from.is_some_and(BuildState::in_progress),
            BuildChange::Cancel => matches!(from, Some(Queued | Initializing | Running)),
        }
    }
}

/// A change refused because the build's state does not allow it (it already stopped, was never
/// claimed, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a build that is {} cannot take the change {change:?}", from.map_or("new", |s| s.status().as_str()))]
pub struct IllegalTransition {
    pub from: Option<BuildState>,
    pub change: BuildChange,
}

/// Whether a build may go from `from` (`None`: it does not exist yet) to `to` at all, whatever
/// the cause: created queued; claimed; started; stopped with any outcome while in progress;
/// stopped `cancelled`, `skipped` or `fail` while queued; nothing once stopped.
pub fn is_legal(from: Option<BuildState>, to: BuildState) -> bool {
    use BuildState::*;
    match (from, to) {
        (None, Queued) => true,
        (Some(Queued), Initializing) => true,
        (Some(Queued), Stopped(o)) => matches!(
            o,
            BuildOutcome::Cancelled | BuildOutcome::Skipped | BuildOutcome::Fail
        ),
        (Some(Initializing), Running) => true,
        (Some(Initializing | Running), Stopped(_)) => true,
        _ => false,
    }
}

/// The state a build in `from` (`None`: not created yet) moves to through `change`, or why it
/// may not.
pub fn transition(
    from: Option<BuildState>,
    change: BuildChange,
) -> Result<BuildState, IllegalTransition> {
    let to = change.target();
    if change.starts_from(from) && is_legal(from, to) {
        Ok(to)
    } else {
        Err(IllegalTransition { from, change })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BuildOutcome::*;
    use BuildState::*;

    fn states() -> Vec<Option<BuildState>> {
        std::iter::once(None)
            .chain(BuildState::all().into_iter().map(Some))
            .collect()
    }

    fn changes() -> Vec<BuildChange> {
        let mut all = vec![
            BuildChange::Queue,
            BuildChange::Claim,
            BuildChange::Run,
            BuildChange::Cancel,
            BuildChange::Supersede,
            BuildChange::Unreadable,
            BuildChange::Lost,
        ];
        all.extend(BuildOutcome::ALL.iter().map(|&o| BuildChange::Finish(o)));
        all
    }

    /// Every (from, to) pair, against the list of the legal ones written out.
    #[test]
    fn exactly_the_listed_pairs_are_legal() {
        let mut legal = vec![
            (None, Queued),
            (Some(Queued), Initializing),
            (Some(Queued), Stopped(Cancelled)),
            (Some(Queued), Stopped(Skipped)),
            (Some(Queued), Stopped(Fail)),
            (Some(Initializing), Running),
        ];
        for from in [Initializing, Running] {
            for &o in BuildOutcome::ALL {
                legal.push((Some(from), Stopped(o)));
            }
        }
        let mut checked = 0;
        for from in states() {
            for to in BuildState::all() {
                assert_eq!(
                    is_legal(from, to),
                    legal.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
                checked += 1;
            }
        }
        // 9 starting points (new, queued, initializing, running, five stopped) × 8 targets.
        assert_eq!(checked, 9 * 8);
    }

    /// Every (from, change) pair: the change applies exactly from the states it names, lands on
    /// its target, and never makes an illegal pair.
    #[test]
    fn each_change_applies_only_from_its_states() {
        let expect = |change: BuildChange| -> Vec<Option<BuildState>> {
            match change {
                BuildChange::Queue => vec![None],
                BuildChange::Claim | BuildChange::Supersede | BuildChange::Unreadable => {
                    vec![Some(Queued)]
                }
                BuildChange::Run => vec![Some(Initializing)],
                BuildChange::Finish(_) | BuildChange::Lost => {
                    vec![Some(Initializing), Some(Running)]
                }
                BuildChange::Cancel => vec![Some(Queued), Some(Initializing), Some(Running)],
            }
        };
        for change in changes() {
            for from in states() {
                let got = transition(from, change);
                if expect(change).contains(&from) {
                    let to = got.unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(to, change.target());
                    assert!(is_legal(from, to));
                } else {
                    assert_eq!(
                        got,
                        Err(IllegalTransition { from, change }),
                        "{from:?} {change:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_stopped_build_takes_no_change() {
        for &o in BuildOutcome::ALL {
            for change in changes() {
                assert!(
                    transition(Some(Stopped(o)), change).is_err(),
                    "{o:?} {change:?}"
                );
            }
        }
        let e = transition(Some(Stopped(Success)), BuildChange::Cancel).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a build that is stopped cannot take the change Cancel"
        );
    }

    #[test]
    fn stored_parts_round_trip_and_odd_pairs_are_refused() {
        for state in BuildState::all() {
            assert_eq!(
                BuildState::from_parts(state.status(), state.outcome()).unwrap(),
                state
            );
        }
        assert!(BuildState::from_parts(BuildStatus::Stopped, None).is_err());
        assert!(BuildState::from_parts(BuildStatus::Running, Some(Success)).is_err());
    }
}
