//! The steps of a build, read back from the system lines the runner writes into its log (the hosted
//! product's lines, PRODUCT-NOTES §10): each step starts at its line and ends where the next one
//! starts, the last one where the build stopped.
//!
//! The runner writes these lines with the constants and functions of this module, and
//! [`derive_steps`] recognises them with the same ones, so the two cannot drift apart.

use super::{BuildOutcome, Timestamp};

/// First line of every build (the `initialize` step).
pub const INIT_LINE: &str = "Initializing build environment...";
/// The `clone` step's line.
pub const CLONE_LINE: &str = "Cloning repository...";
/// Start of the dependency install step's line; the install command follows.
pub const INSTALL_PREFIX: &str = "Installing project dependencies: ";
/// Start of the build command step's line; the command follows.
pub const BUILD_PREFIX: &str = "Executing user build command: ";
/// Start of the deploy command step's line; the command follows.
pub const DEPLOY_PREFIX: &str = "Executing user deploy command: ";
/// Start of a cache restore step's line ("Restoring from dependencies cache").
const RESTORE_PREFIX: &str = "Restoring from ";
const RESTORE_SUFFIX: &str = " cache";
/// Start of a cache save step's line ("Saving dependencies to the build cache").
const SAVE_PREFIX: &str = "Saving ";
const SAVE_SUFFIX: &str = " to the build cache";

/// The line the runner writes before installing dependencies with `command`.
pub fn install_line(command: &str) -> String {
    format!("{INSTALL_PREFIX}{command}")
}

/// The line the runner writes before running the trigger's build (`deploy: false`) or deploy
/// command.
pub fn command_line(deploy: bool, command: &str) -> String {
    let prefix = if deploy { DEPLOY_PREFIX } else { BUILD_PREFIX };
    format!("{prefix}{command}")
}

/// The line the runner writes before restoring the `label` cache ("dependencies", "build output").
pub fn restore_cache_line(label: &str) -> String {
    format!("{RESTORE_PREFIX}{label}{RESTORE_SUFFIX}")
}

/// The line the runner writes before saving the `label` cache.
pub fn save_cache_line(label: &str) -> String {
    format!("{SAVE_PREFIX}{label}{SAVE_SUFFIX}")
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Initialize,
    Clone,
    RestoreCache,
    Install,
    Build,
    Deploy,
    SaveCache,
}

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// A later step started, or the build succeeded.
    Done,
    /// The build is still in it.
    Running,
    /// The build failed (or timed out, or its runner was lost) in it.
    Failed,
    /// The build was cancelled in it.
    Cancelled,
}

/// One step of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    /// The step's name, with its command or cache when it has one ("Build: npm run build").
    pub title: String,
    /// Number of the line that started it in the build's log, from 0.
    pub line: i64,
    pub started: Timestamp,
    /// When it ended; `None` while it runs.
    pub ended: Option<Timestamp>,
    pub state: StepState,
}

impl Step {
    /// How long it took (so far, for a running step at `now`), in milliseconds.
    pub fn duration_ms(&self, now: Timestamp) -> i64 {
        (self.ended.unwrap_or(now).millis() - self.started.millis()).max(0)
    }
}

/// The step a line starts, with its title, if it is one of the runner's step lines.
fn step_of(line: &str) -> Option<(StepKind, String)> {
    if line == INIT_LINE {
        return Some((StepKind::Initialize, "Initialize build environment".into()));
    }
    if line == CLONE_LINE {
        return Some((StepKind::Clone, "Clone repository".into()));
    }
    if let Some(command) = line.strip_prefix(INSTALL_PREFIX) {
        return Some((
            StepKind::Install,
            format!("Install dependencies: {command}"),
        ));
    }
    if let Some(command) = line.strip_prefix(BUILD_PREFIX) {
        return Some((StepKind::Build, format!("Build: {command}")));
    }
    if let Some(command) = line.strip_prefix(DEPLOY_PREFIX) {
        return Some((StepKind::Deploy, format!("Deploy: {command}")));
    }
    if let Some(label) = line
        .strip_prefix(RESTORE_PREFIX)
        .and_then(|l| l.strip_suffix(RESTORE_SUFFIX))
    {
        return Some((StepKind::RestoreCache, format!("Restore {label} cache")));
    }
    if let Some(label) = line
        .strip_prefix(SAVE_PREFIX)
        .and_then(|l| l.strip_suffix(SAVE_SUFFIX))
    {
        return Some((StepKind::SaveCache, format!("Save {label} cache")));
    }
    None
}

/// Collects a build's step lines as its log is read, then derives its steps.
///
/// Steps come in the runner's order: a line that looks like a step line but would go back to an
/// earlier step (a build's own output imitating Kiln's lines) is ordinary output. Only the
/// initialize step must come first, as it does in every build.
#[derive(Debug, Default)]
pub struct StepLines {
    /// The step lines seen: line number, time, kind and title.
    seen: Vec<(i64, Timestamp, StepKind, String)>,
    /// Time of the last line of the log.
    last_at: Option<Timestamp>,
}

/// Where each kind stands in the runner's order (restore and save may repeat: two caches).
fn rank(kind: StepKind) -> u8 {
    match kind {
        StepKind::Initialize => 0,
        StepKind::Clone => 1,
        StepKind::RestoreCache => 2,
        StepKind::Install => 3,
        StepKind::Build => 4,
        StepKind::Deploy => 5,
        StepKind::SaveCache => 6,
    }
}

impl StepLines {
    /// Takes the log's line number `seq`, written at `at`, in order.
    pub fn push(&mut self, seq: i64, at: Timestamp, line: &str) {
        self.last_at = Some(at);
        let Some((kind, title)) = step_of(line) else {
            return;
        };
        let in_order = match self.seen.last() {
            None => kind == StepKind::Initialize,
            // The build output cache is restored after the install: restore may follow install.
            Some((_, _, last, _)) => {
                rank(kind) > rank(*last)
                    || kind == *last && matches!(kind, StepKind::RestoreCache | StepKind::SaveCache)
                    || kind == StepKind::RestoreCache && *last == StepKind::Install
            }
        };
        if in_order {
            self.seen.push((seq, at, kind, title));
        }
    }

    /// The steps of a build whose log was pushed whole: each ends where the next starts; the last
    /// ends at `stopped_on` (the time of the log's last line if later, as the runner logs a moment
    /// after the status changed) with the build's `outcome`, or runs while the build does.
    pub fn steps(self, stopped_on: Option<Timestamp>, outcome: Option<BuildOutcome>) -> Vec<Step> {
        let count = self.seen.len();
        let mut steps: Vec<Step> = Vec::with_capacity(count);
        let mut iter = self.seen.into_iter().peekable();
        while let Some((line, started, kind, title)) = iter.next() {
            let (ended, state) = match iter.peek() {
                Some((_, next, _, _)) => (Some(*next), StepState::Done),
                None => match stopped_on {
                    None => (None, StepState::Running),
                    Some(stopped) => {
                        let end = self.last_at.map_or(stopped, |last| last.max(stopped));
                        let state = match outcome {
                            Some(BuildOutcome::Success | BuildOutcome::Skipped) => StepState::Done,
                            Some(BuildOutcome::Cancelled) => StepState::Cancelled,
                            _ => StepState::Failed,
                        };
                        (Some(end), state)
                    }
                },
            };
            steps.push(Step {
                kind,
                title,
                line,
                started,
                ended: ended.map(|e| e.max(started)),
                state,
            });
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + s * 1000)
    }

    fn collect(lines: &[(i64, &str)]) -> StepLines {
        let mut s = StepLines::default();
        for (i, (t, line)) in lines.iter().enumerate() {
            s.push(i as i64, at(*t), line);
        }
        s
    }

    #[test]
    fn the_runners_lines_are_recognised() {
        let lines = [
            INIT_LINE.to_owned(),
            CLONE_LINE.to_owned(),
            restore_cache_line("dependencies"),
            install_line("npm ci"),
            command_line(false, "npm run build"),
            command_line(true, "npx wrangler deploy"),
            save_cache_line("dependencies"),
        ];
        let kinds: Vec<StepKind> = lines
            .iter()
            .filter_map(|l| step_of(l))
            .map(|s| s.0)
            .collect();
        assert_eq!(
            kinds,
            [
                StepKind::Initialize,
                StepKind::Clone,
                StepKind::RestoreCache,
                StepKind::Install,
                StepKind::Build,
                StepKind::Deploy,
                StepKind::SaveCache
            ]
        );
        assert_eq!(step_of("Success: Build command completed"), None);
        assert_eq!(step_of("Restoring from dependencies"), None);
    }

    #[test]
    fn steps_end_where_the_next_starts_and_the_last_where_the_build_stopped() {
        let s = collect(&[
            (0, INIT_LINE),
            (1, "Success: Finished initializing build environment"),
            (2, CLONE_LINE),
            (5, "Executing user build command: npm run build"),
            (6, "> build"),
            (9, "Failed: error occurred while running build command"),
        ]);
        let steps = s.steps(Some(at(8)), Some(BuildOutcome::Fail));
        let shown: Vec<(StepKind, i64, i64, StepState)> = steps
            .iter()
            .map(|s| (s.kind, s.line, s.duration_ms(at(100)), s.state))
            .collect();
        assert_eq!(
            shown,
            [
                (StepKind::Initialize, 0, 2000, StepState::Done),
                (StepKind::Clone, 2, 3000, StepState::Done),
                // Up to the last line, logged after the status changed.
                (StepKind::Build, 3, 4000, StepState::Failed),
            ]
        );
        assert_eq!(steps[2].title, "Build: npm run build");
    }

    #[test]
    fn a_running_build_has_a_running_last_step() {
        let s = collect(&[(0, INIT_LINE), (3, CLONE_LINE)]);
        let steps = s.steps(None, None);
        assert_eq!(steps[1].state, StepState::Running);
        assert_eq!(steps[1].ended, None);
        assert_eq!(steps[1].duration_ms(at(10)), 7000);
        let cancelled =
            collect(&[(0, INIT_LINE)]).steps(Some(at(1)), Some(BuildOutcome::Cancelled));
        assert_eq!(cancelled[0].state, StepState::Cancelled);
    }

    #[test]
    fn output_imitating_step_lines_out_of_order_is_output() {
        let s = collect(&[
            (0, INIT_LINE),
            (1, CLONE_LINE),
            (2, "Executing user build command: make"),
            // The build prints these itself.
            (3, "Cloning repository..."),
            (3, "Initializing build environment..."),
            (4, "Executing user deploy command: deploy"),
        ]);
        let kinds: Vec<StepKind> = s.steps(None, None).iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Initialize,
                StepKind::Clone,
                StepKind::Build,
                StepKind::Deploy
            ]
        );
        // Nothing before the first line of a build counts.
        let none = collect(&[(0, CLONE_LINE)]).steps(None, None);
        assert!(none.is_empty());
    }

    #[test]
    fn both_caches_are_restored_and_saved() {
        let s = collect(&[
            (0, INIT_LINE),
            (1, CLONE_LINE),
            (2, "Restoring from dependencies cache"),
            (3, "Installing project dependencies: npm ci"),
            (4, "Restoring from build output cache"),
            (5, "Executing user build command: b"),
            (6, "Saving dependencies to the build cache"),
            (7, "Saving build output to the build cache"),
        ]);
        let titles: Vec<String> = s
            .steps(Some(at(8)), Some(BuildOutcome::Success))
            .into_iter()
            .map(|s| s.title)
            .collect();
        assert_eq!(
            titles,
            [
                "Initialize build environment",
                "Clone repository",
                "Restore dependencies cache",
                "Install dependencies: npm ci",
                "Restore build output cache",
                "Build: b",
                "Save dependencies cache",
                "Save build output cache"
            ]
        );
    }
}
