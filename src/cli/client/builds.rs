//! `kiln workers`, `kiln builds`, `kiln build` and `kiln logs`: Workers with their latest builds,
//! builds listed, shown and cancelled, a build started (and followed to its outcome), a build's log.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::logs::{FollowEvents, LogLine, follow, page_logs};
use super::output::{
    Out, Table, age, build_duration, build_state, first_line, local_time, log_line, log_time,
    or_dash, print_fields, short_commit, strip_controls, styled_state, text,
};
use super::{Common, Ctx, outcome_code};
use crate::domain::{BuildOutcome, BuildState, BuildStatus};

/// Rows `builds list --worker` shows unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 20;
/// How often `build --wait` asks a queued build's state for its spinner.
const SPINNER_POLL: Duration = Duration::from_secs(2);
/// Characters of a commit message shown in a table.
const MESSAGE_WIDTH: usize = 50;

/// `kiln workers …`
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Every Worker with a trigger or a build: its triggers and its latest build.
    List {
        #[command(flatten)]
        common: Common,
    },
}

/// `kiln builds …`
#[derive(Debug, Subcommand)]
pub enum BuildsCommand {
    /// A Worker's builds, newest first; without `--worker`, each Worker's latest build, running,
    /// then failed, then queued ones first (`--branch` and `--outcome` then filter those).
    List(ListArgs),
    /// A build: its trigger, commit, times; for a queued build, why it waits and when it should
    /// start.
    Show {
        /// The build's id.
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel a queued or running build (needs a token with write permission).
    Cancel {
        /// The build's id.
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// `kiln builds list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The Worker (its script name) whose builds to list.
    #[arg(long)]
    pub worker: Option<String>,
    /// Only builds of this branch (exact name).
    #[arg(long)]
    pub branch: Option<String>,
    /// Only builds with this outcome.
    #[arg(long, value_parser = ["success", "fail", "skipped", "cancelled", "terminated"])]
    pub outcome: Option<String>,
    /// Rows at most (default: 20 with `--worker`, every Worker without).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub common: Common,
}

/// `kiln build`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["branch", "commit"])))]
pub struct BuildArgs {
    /// The trigger's id (`kiln triggers list --worker W` shows them).
    pub trigger: String,
    /// The branch to build (its head, unless `--commit` names a commit of it).
    #[arg(long)]
    pub branch: Option<String>,
    /// The commit to build (40 hex digits).
    #[arg(long)]
    pub commit: Option<String>,
    /// Follow the build's log until it ends and exit with its outcome: 0 success, 1 fail,
    /// 3 cancelled, terminated or skipped (with `--json`, print the finished build, not the log).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `kiln logs`
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The build's id.
    pub id: String,
    /// Follow the log live until the build ends (reconnecting after a dropped connection without
    /// missing or repeating a line).
    #[arg(short, long)]
    pub follow: bool,
    /// Start each line with its time (local, RFC 3339).
    #[arg(short, long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `kiln workers …`
pub async fn workers(command: WorkersCommand) -> anyhow::Result<u8> {
    let WorkersCommand::List { common } = command;
    let ctx = Ctx::connect(&common).await?;
    let workers = ctx.api.get_all(&ctx.path(&["workers"]), &[], None).await?;
    if ctx.out.json {
        ctx.out.print_json(&Value::Array(workers))?;
        return Ok(0);
    }
    let mut table = Table::new(&[
        "WORKER", "TRIGGERS", "LATEST", "BRANCH", "COMMIT", "CREATED", "DURATION", "BUILD",
    ]);
    for w in &workers {
        let b = &w["latest_build"];
        let has_build = b.is_object();
        table.row(vec![
            strip_controls(text(w, "external_script_id")),
            w["triggers"].as_u64().unwrap_or(0).to_string(),
            if has_build {
                styled_state(build_state(b))
            } else {
                "-".into()
            },
            strip_controls(&or_dash(text(&b["build_trigger_metadata"], "branch"))),
            short_commit(text(&b["build_trigger_metadata"], "commit_hash")),
            if has_build {
                age(text(b, "created_on"))
            } else {
                "-".into()
            },
            if has_build {
                build_duration(b)
            } else {
                "-".into()
            },
            or_dash(text(b, "build_uuid")),
        ]);
    }
    table.print()?;
    Ok(0)
}

/// `kiln builds …`
pub async fn builds(command: BuildsCommand) -> anyhow::Result<u8> {
    match command {
        BuildsCommand::List(args) => list(args).await,
        BuildsCommand::Show { id, common } => {
            let ctx = Ctx::connect(&common).await?;
            let build = ctx
                .api
                .get(&ctx.path(&["builds", &id]), &[])
                .await
                .with_context(|| format!("build {id}"))?;
            if ctx.out.json {
                ctx.out.print_json(&build)?;
            } else {
                show(&build)?;
            }
            Ok(0)
        }
        BuildsCommand::Cancel { id, common } => {
            let ctx = Ctx::connect(&common).await?;
            let (result, _) = ctx
                .api
                .call(
                    Method::PUT,
                    &ctx.path(&["builds", &id, "cancel"]),
                    &[],
                    None,
                )
                .await?;
            if ctx.out.json {
                ctx.out.print_json(&result)?;
            } else {
                println!("Cancelled build {id}");
            }
            Ok(0)
        }
    }
}

/// Sorts the overview's builds as the dashboard's Workers overview does: running (and initializing)
/// builds first, then failed (and terminated) ones, then queued ones, then the rest; by Worker
/// within each.
fn overview_order(builds: &mut [Value]) {
    let urgency = |build: &Value| {
        let status = BuildStatus::parse(text(build, "status"));
        let outcome = build["build_outcome"]
            .as_str()
            .and_then(BuildOutcome::parse);
        status
            .and_then(|s| BuildState::from_parts(s, outcome).ok())
            .map_or(4, BuildState::attention)
    };
    builds.sort_by(|a, b| {
        urgency(a).cmp(&urgency(b)).then_with(|| {
            text(&a["trigger"], "external_script_id").cmp(text(&b["trigger"], "external_script_id"))
        })
    });
}

async fn list(args: ListArgs) -> anyhow::Result<u8> {
    let ctx = Ctx::connect(&args.common).await?;
    let limit = args.limit.map(|l| l as usize);
    let (builds, overview) = match &args.worker {
        Some(worker) => {
            let mut query = Vec::new();
            if let Some(branch) = &args.branch {
                query.push(("branch", branch.clone()));
            }
            if let Some(outcome) = &args.outcome {
                query.push(("outcome", outcome.clone()));
            }
            let builds = ctx
                .api
                .get_all(
                    &ctx.path(&["workers", worker, "builds"]),
                    &query,
                    Some(limit.unwrap_or(DEFAULT_LIMIT)),
                )
                .await?;
            (builds, false)
        }
        None => {
            let workers = ctx.api.get_all(&ctx.path(&["workers"]), &[], None).await?;
            let mut builds: Vec<Value> = workers
                .into_iter()
                .map(|mut w| w["latest_build"].take())
                .filter(|b| b.is_object())
                .filter(|b| {
                    let meta = &b["build_trigger_metadata"];
                    args.branch
                        .as_deref()
                        .is_none_or(|want| meta["branch"].as_str() == Some(want))
                        && args
                            .outcome
                            .as_deref()
                            .is_none_or(|want| b["build_outcome"].as_str() == Some(want))
                })
                .collect();
            overview_order(&mut builds);
            if let Some(limit) = limit {
                builds.truncate(limit);
            }
            (builds, true)
        }
    };
    if ctx.out.json {
        ctx.out.print_json(&Value::Array(builds))?;
        return Ok(0);
    }
    let mut header = vec![
        "BUILD", "STATE", "BRANCH", "COMMIT", "SOURCE", "CREATED", "DURATION", "MESSAGE",
    ];
    if overview {
        header.insert(0, "WORKER");
    }
    let mut table = Table::new(&header);
    for b in &builds {
        let meta = &b["build_trigger_metadata"];
        let mut row = vec![
            text(b, "build_uuid").to_owned(),
            styled_state(build_state(b)),
            strip_controls(&or_dash(text(meta, "branch"))),
            short_commit(text(meta, "commit_hash")),
            text(meta, "build_trigger_source").to_owned(),
            age(text(b, "created_on")),
            build_duration(b),
            first_line(text(meta, "commit_message"), MESSAGE_WIDTH),
        ];
        if overview {
            row.insert(0, strip_controls(text(&b["trigger"], "external_script_id")));
        }
        table.row(row);
    }
    table.print()?;
    Ok(0)
}

/// `kiln builds show` in text.
fn show(b: &Value) -> anyhow::Result<()> {
    let meta = &b["build_trigger_metadata"];
    let trigger = &b["trigger"];
    let when = |field: &str| {
        let t = text(b, field);
        if t.is_empty() {
            "-".to_owned()
        } else {
            format!("{} ({})", local_time(t), age(t))
        }
    };
    let mut fields = vec![
        ("Build", text(b, "build_uuid").to_owned()),
        ("State", styled_state(build_state(b))),
        (
            "Worker",
            strip_controls(text(trigger, "external_script_id")),
        ),
        (
            "Trigger",
            format!(
                "{} ({})",
                strip_controls(text(trigger, "trigger_name")),
                text(trigger, "trigger_uuid")
            ),
        ),
        (
            "Repository",
            strip_controls(&format!(
                "{}/{}",
                text(meta, "provider_account_name"),
                text(meta, "repo_name")
            )),
        ),
        ("Branch", strip_controls(&or_dash(text(meta, "branch")))),
        ("Commit", or_dash(text(meta, "commit_hash"))),
        (
            "Message",
            or_dash(&first_line(text(meta, "commit_message"), 200)),
        ),
        ("Author", strip_controls(&or_dash(text(meta, "author")))),
        ("Source", text(meta, "build_trigger_source").to_owned()),
    ];
    if let Some(url) = b["pull_request"]["pull_request_url"].as_str() {
        fields.push(("Pull request", strip_controls(url)));
    }
    fields.extend([
        ("Created", when("created_on")),
        ("Started", when("running_on")),
        ("Stopped", when("stopped_on")),
        ("Duration", build_duration(b)),
        (
            "Build command",
            strip_controls(&or_dash(text(meta, "build_command"))),
        ),
        (
            "Deploy command",
            strip_controls(&or_dash(text(meta, "deploy_command"))),
        ),
        (
            "Root directory",
            strip_controls(text(meta, "root_directory")),
        ),
    ]);
    let queue = &b["queue"];
    if queue.is_object() {
        fields.push(("Queued because", strip_controls(text(queue, "message"))));
        fields.push((
            "Queue position",
            queue["position"]
                .as_u64()
                .map_or("-".into(), |p| p.to_string()),
        ));
        let eta = text(queue, "estimated_start_on");
        fields.push((
            "Estimated start",
            if eta.is_empty() {
                "unknown".to_owned()
            } else {
                local_time(eta)
            },
        ));
    }
    print_fields(&fields)
}

/// Prints a followed log: lines on standard output (JSON lines with `--json`), reconnects and the
/// spinner on standard error.
struct Printer {
    out: Out,
    timestamps: bool,
    /// Print no line (`build --wait --json` prints only the finished build).
    quiet: bool,
    /// Shown until the first line arrives.
    spinner: Option<indicatif::ProgressBar>,
    /// Updates the spinner with the queue's explanation while the build waits.
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl Printer {
    fn new(out: Out, timestamps: bool) -> Printer {
        Printer {
            out,
            timestamps,
            quiet: false,
            spinner: None,
            poller: None,
        }
    }

    /// Shows a spinner (on a terminal) that says why the build waits, until its first line.
    fn wait_for_start(&mut self, ctx: &Ctx, id: &str) {
        if !self.out.stderr_tty {
            return;
        }
        let spinner = self.out.spinner(&format!("Build {id} is queued"));
        let (api, path) = (
            ctx.api.clone(),
            ctx.path(&["builds", id])
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
        let bar = spinner.clone();
        self.poller = Some(tokio::spawn(async move {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            loop {
                if let Ok(b) = api.get(&segments, &[]).await {
                    let message = match text(&b["queue"], "message") {
                        "" => format!("Build is {}", build_state(&b)),
                        why => format!("Queued: {}", strip_controls(why)),
                    };
                    bar.set_message(message);
                }
                tokio::time::sleep(SPINNER_POLL).await;
            }
        }));
        self.spinner = Some(spinner);
    }

    fn stop_spinner(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
    }

    fn print(&mut self, (at, message): &LogLine) -> anyhow::Result<()> {
        self.stop_spinner();
        if self.quiet {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        if self.out.json {
            serde_json::to_writer(&mut stdout, &json!([at, message]))?;
            writeln!(stdout)?;
        } else if self.timestamps {
            writeln!(
                stdout,
                "{} {}",
                log_time(*at),
                log_line(message, self.out.color)
            )?;
        } else {
            writeln!(stdout, "{}", log_line(message, self.out.color))?;
        }
        Ok(())
    }
}

impl FollowEvents for Printer {
    fn line(&mut self, line: &LogLine) -> anyhow::Result<()> {
        self.print(line)
    }

    fn reconnecting(&mut self, why: &str, wait: Duration) {
        let message = format!("{why}; reconnecting in {:.1}s", wait.as_secs_f64());
        match &self.spinner {
            Some(spinner) => spinner.println(message),
            None => eprintln!("kiln: {message}"),
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.stop_spinner();
    }
}

/// `kiln build`
pub async fn build(args: BuildArgs) -> anyhow::Result<u8> {
    let ctx = Ctx::connect(&args.common).await?;
    let mut body = serde_json::Map::new();
    if let Some(branch) = &args.branch {
        body.insert("branch".into(), json!(branch));
    }
    if let Some(commit) = &args.commit {
        body.insert("commit_hash".into(), json!(commit));
    }
    let (created, _) = ctx
        .api
        .call(
            Method::POST,
            &ctx.path(&["triggers", &args.trigger, "builds"]),
            &[],
            Some(&Value::Object(body)),
        )
        .await
        .with_context(|| format!("starting a build of trigger {}", args.trigger))?;
    let id = text(&created, "build_uuid").to_owned();
    anyhow::ensure!(!id.is_empty(), "the server's answer has no build_uuid");
    if !args.wait {
        if ctx.out.json {
            ctx.out.print_json(&created)?;
        } else {
            println!("Queued build {id}");
        }
        return Ok(0);
    }
    if !ctx.out.json {
        eprintln!("Queued build {id}");
    }
    let mut printer = Printer::new(ctx.out, false);
    printer.quiet = ctx.out.json;
    printer.wait_for_start(&ctx, &id);
    let end = follow(&ctx.api, &ctx.account, &id, &mut printer).await;
    printer.stop_spinner();
    let end = end?;
    let code = outcome_code(end.build_outcome.as_deref());
    let build = ctx.api.get(&ctx.path(&["builds", &id]), &[]).await?;
    if ctx.out.json {
        ctx.out.print_json(&build)?;
    } else {
        eprintln!(
            "Build {id} {} after {}",
            console::Style::new()
                .bold()
                .for_stderr()
                .apply_to(or_dash(build_state(&build))),
            build_duration(&build)
        );
    }
    Ok(code)
}

/// `kiln logs`
pub async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let ctx = Ctx::connect(&args.common).await?;
    let mut printer = Printer::new(ctx.out, args.timestamps);
    let done = if args.follow {
        follow(&ctx.api, &ctx.account, &args.id, &mut printer)
            .await
            .map(drop)
    } else {
        page_logs(&ctx.api, &ctx.account, &args.id, |line| printer.print(line)).await
    };
    done.with_context(|| format!("the log of build {}", args.id))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overview_puts_running_then_failed_then_queued_builds_first() {
        let build = |worker: &str, status: &str, outcome: Option<&str>| {
            json!({"status": status, "build_outcome": outcome,
                "trigger": {"external_script_id": worker}})
        };
        let mut builds = vec![
            build("a-ok", "stopped", Some("success")),
            build("b-queued", "queued", None),
            build("c-failed", "stopped", Some("fail")),
            build("d-cancelled", "stopped", Some("cancelled")),
            build("e-running", "running", None),
            build("f-terminated", "stopped", Some("terminated")),
            build("g-initializing", "initializing", None),
        ];
        overview_order(&mut builds);
        let order: Vec<&str> = builds
            .iter()
            .map(|b| text(&b["trigger"], "external_script_id"))
            .collect();
        assert_eq!(
            order,
            [
                "e-running",
                "g-initializing",
                "c-failed",
                "f-terminated",
                "b-queued",
                "a-ok",
                "d-cancelled"
            ]
        );
    }
}
