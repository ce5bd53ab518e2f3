//! `kiln triggers`: a Worker's triggers (commands, branch filters, watch paths, root directory,
//! build cache).

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Table, local_time, or_dash, print_fields, strip_controls, text};
use super::{Common, Ctx};

/// `kiln triggers …`
#[derive(Debug, Subcommand)]
pub enum TriggersCommand {
    /// A Worker's triggers.
    List {
        /// The Worker (its script name).
        #[arg(long)]
        worker: String,
        #[command(flatten)]
        common: Common,
    },
    /// One trigger with all its settings.
    Show {
        /// The trigger's id.
        id: String,
        /// The trigger's Worker (default: looked for among the account's Workers).
        #[arg(long)]
        worker: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Create a trigger: which repository connection builds which Worker, how and when.
    Create(CreateArgs),
    /// Change a trigger's settings (flags not given stay as they are).
    Update(UpdateArgs),
    /// Delete a trigger (its builds stay readable).
    Delete {
        /// The trigger's id.
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a trigger's build cache: its next build runs without it.
    PurgeCache {
        /// The trigger's id.
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Settings `triggers create` and `triggers update` share; each flag left out is left to the
/// server (create: its default; update: unchanged).
#[derive(Debug, Args)]
pub struct TriggerSettings {
    /// The trigger's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The build token (Cloudflare API token) builds deploy with, by id (create: default the
    /// account's only one).
    #[arg(long)]
    pub build_token: Option<String>,
    /// The build command ('' for none).
    #[arg(long)]
    pub build_command: Option<String>,
    /// The deploy command.
    #[arg(long)]
    pub deploy_command: Option<String>,
    /// The directory builds run in, relative to the repository's root (`/` is the root).
    #[arg(long)]
    pub root_directory: Option<String>,
    /// A branch pattern that builds (repeatable; `*` matches any run of characters; one '' alone
    /// empties the list).
    #[arg(long = "branch-include", value_name = "PATTERN")]
    pub branch_includes: Option<Vec<String>>,
    /// A branch pattern that does not build (repeatable; '' alone empties the list).
    #[arg(long = "branch-exclude", value_name = "PATTERN")]
    pub branch_excludes: Option<Vec<String>>,
    /// A watch path: a push builds when a changed path matches one (repeatable; '' alone empties
    /// the list).
    #[arg(long = "path-include", value_name = "PATTERN")]
    pub path_includes: Option<Vec<String>>,
    /// A path whose changes alone do not build (repeatable; '' alone empties the list).
    #[arg(long = "path-exclude", value_name = "PATTERN")]
    pub path_excludes: Option<Vec<String>>,
    /// The build cache: `on` or `off`.
    #[arg(long, value_parser = ["on", "off"])]
    pub build_cache: Option<String>,
}

impl TriggerSettings {
    /// The request body fields these flags give.
    fn body(&self) -> serde_json::Map<String, Value> {
        let mut body = serde_json::Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                body.insert(key.to_owned(), v);
            }
        };
        let list = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|items| json!(items.iter().filter(|p| !p.is_empty()).collect::<Vec<_>>()))
        };
        put("trigger_name", self.name.as_ref().map(|v| json!(v)));
        put(
            "build_token_uuid",
            self.build_token.as_ref().map(|v| json!(v)),
        );
        put(
            "build_command",
            self.build_command.as_ref().map(|v| json!(v)),
        );
        put(
            "deploy_command",
            self.deploy_command.as_ref().map(|v| json!(v)),
        );
        put(
            "root_directory",
            self.root_directory.as_ref().map(|v| json!(v)),
        );
        put("branch_includes", list(&self.branch_includes));
        put("branch_excludes", list(&self.branch_excludes));
        put("path_includes", list(&self.path_includes));
        put("path_excludes", list(&self.path_excludes));
        put(
            "build_caching_enabled",
            self.build_cache.as_deref().map(|v| json!(v == "on")),
        );
        body
    }
}

/// `kiln triggers create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The Worker (its script name) the trigger builds.
    #[arg(long)]
    pub worker: String,
    /// The repository connection's id.
    #[arg(long)]
    pub connection: String,
    #[command(flatten)]
    pub settings: TriggerSettings,
    #[command(flatten)]
    pub common: Common,
}

/// `kiln triggers update`
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The trigger's id.
    pub id: String,
    #[command(flatten)]
    pub settings: TriggerSettings,
    #[command(flatten)]
    pub common: Common,
}

/// A list of patterns in one cell: `a, b`, or `-`.
fn patterns(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(strip_controls)
                .collect()
        })
        .unwrap_or_default();
    or_dash(&items.join(", "))
}
fn show_trigger(t: &Value) -> anyhow::Result<()> {
    let conn = &t["repo_connection"];
    print_fields(&[
        ("Trigger", text(t, "trigger_uuid").to_owned()),
        ("Name", strip_controls(text(t, "trigger_name"))),
        ("Worker", strip_controls(text(t, "external_script_id"))),
        (
            "Repository",
            format!(
                "{}/{} ({})",
                strip_controls(text(conn, "provider_account_name")),
                strip_controls(text(conn, "repo_name")),
                text(conn, "repo_connection_uuid")
            ),
        ),
        (
            "Build token",
            format!(
                "{} ({})",
                strip_controls(&or_dash(text(t, "build_token_name"))),
                text(t, "build_token_uuid")
            ),
        ),
        (
            "Build command",
            strip_controls(&or_dash(text(t, "build_command"))),
        ),
        (
            "Deploy command",
            strip_controls(&or_dash(text(t, "deploy_command"))),
        ),
        ("Root directory", strip_controls(text(t, "root_directory"))),
        ("Branch includes", patterns(&t["branch_includes"])),
        ("Branch excludes", patterns(&t["branch_excludes"])),
        ("Path includes", patterns(&t["path_includes"])),
        ("Path excludes", patterns(&t["path_excludes"])),
        (
            "Build cache",
            if t["build_caching_enabled"] == json!(true) {
                "on"
            } else {
                "off"
            }
            .to_owned(),
        ),
        ("Created", local_time(text(t, "created_on"))),
        ("Modified", local_time(text(t, "modified_on"))),
    ])
}

/// Finds a trigger by id: among `worker`'s triggers, else among those of every Worker of the
/// account that has one (the API has no read of a single trigger).
async fn find_trigger(ctx: &Ctx, id: &str, worker: Option<&str>) -> anyhow::Result<Value> {
    let workers: Vec<String> = match worker {
        Some(w) => vec![w.to_owned()],
        None => ctx
            .api
            .get_all(&ctx.path(&["workers"]), &[], None)
            .await?
            .iter()
            .filter(|w| w["triggers"].as_u64().unwrap_or(0) > 0)
            .filter_map(|w| w["external_script_id"].as_str().map(str::to_owned))
            .collect(),
    };
    for w in &workers {
        let triggers = ctx
            .api
            .get(&ctx.path(&["workers", w, "triggers"]), &[])
            .await?;
        if let Some(t) = triggers
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["trigger_uuid"].as_str() == Some(id)))
        {
            return Ok(t.clone());
        }
    }
    match worker {
        Some(w) => anyhow::bail!("Worker {w} has no trigger {id}"),
        None => anyhow::bail!("no trigger {id} in account {}", ctx.account),
    }
}

/// `kiln triggers …`
pub async fn triggers(command: TriggersCommand) -> anyhow::Result<u8> {
    match command {
        TriggersCommand::List { worker, common } => {
            let ctx = Ctx::connect(&common).await?;
            let triggers = ctx
                .api
                .get(&ctx.path(&["workers", &worker, "triggers"]), &[])
                .await?;
            ctx.print(&triggers, |ts| {
                let mut table = Table::new(&[
                    "TRIGGER",
                    "NAME",
                    "BRANCHES",
                    "EXCLUDED",
                    "WATCH PATHS",
                    "ROOT",
                    "CACHE",
                    "BUILD COMMAND",
                ]);
                for t in ts.as_array().into_iter().flatten() {
                    table.row(vec![
                        text(t, "trigger_uuid").to_owned(),
                        strip_controls(text(t, "trigger_name")),
                        patterns(&t["branch_includes"]),
                        patterns(&t["branch_excludes"]),
                        patterns(&t["path_includes"]),
                        strip_controls(text(t, "root_directory")),
                        if t["build_caching_enabled"] == json!(true) {
                            "on"
                        } else {
                            "off"
                        }
                        .into(),
                        strip_controls(&or_dash(text(t, "build_command"))),
                    ]);
                }
                table.print()
            })?;
        }
        TriggersCommand::Show { id, worker, common } => {
            let ctx = Ctx::connect(&common).await?;
            let trigger = find_trigger(&ctx, &id, worker.as_deref()).await?;
            ctx.print(&trigger, show_trigger)?;
        }
        TriggersCommand::Create(args) => {
            let ctx = Ctx::connect(&args.common).await?;
            let mut body = args.settings.body();
            body.insert("external_script_id".into(), json!(args.worker));
            body.insert("repo_connection_uuid".into(), json!(args.connection));
            if !body.contains_key("trigger_name") {
                anyhow::bail!("give the trigger's name with --name");
            }
            let (trigger, _) = ctx
                .api
                .call(
                    Method::POST,
                    &ctx.path(&["triggers"]),
                    &[],
                    Some(&Value::Object(body)),
                )
                .await?;
            ctx.print(&trigger, |t| {
                println!("Created trigger {}", text(t, "trigger_uuid"));
                show_trigger(t)
            })?;
        }
        TriggersCommand::Update(args) => {
            let ctx = Ctx::connect(&args.common).await?;
            let body = args.settings.body();
            anyhow::ensure!(
                !body.is_empty(),
                "nothing to change: give a setting's flag (see --help)"
            );
            let (trigger, _) = ctx
                .api
                .call(
                    Method::PATCH,
                    &ctx.path(&["triggers", &args.id]),
                    &[],
                    Some(&Value::Object(body)),
                )
                .await?;
            ctx.print(&trigger, |t| {
                println!("Updated trigger {}", text(t, "trigger_uuid"));
                show_trigger(t)
            })?;
        }
        TriggersCommand::Delete { id, common } => {
            let ctx = Ctx::connect(&common).await?;
            let (result, _) = ctx
                .api
                .call(Method::DELETE, &ctx.path(&["triggers", &id]), &[], None)
                .await?;
            ctx.print(&result, |_| {
                println!("Deleted trigger {id}");
                Ok(())
            })?;
        }
        TriggersCommand::PurgeCache { id, common } => {
            let ctx = Ctx::connect(&common).await?;
            let (result, _) = ctx
                .api
                .call(
                    Method::POST,
                    &ctx.path(&["triggers", &id, "purge_build_cache"]),
                    &[],
                    None,
                )
                .await?;
            ctx.print(&result, |_| {
                println!("Purged the build cache of trigger {id}");
                Ok(())
            })?;
        }
    }
    Ok(0)
}
