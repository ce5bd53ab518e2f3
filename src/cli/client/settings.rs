//! `kiln triggers`, `kiln env` and `kiln hooks`: a Worker's triggers (commands, branch filters, watch
//! paths, root directory, build cache), a trigger's environment variables (secret values read from
//! standard input or a prompt, never the command line) and a Worker's deploy hooks.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Table, age, local_time, or_dash, print_fields, strip_controls, text};
use super::{Common, Ctx, read_secret};

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

/// `kiln env …`
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// A trigger's variables (secret values are never shown).
    List {
        /// The trigger's id.
        trigger: String,
        #[command(flatten)]
        common: Common,
    },
    /// Set variables: `NAME=VALUE` for a plain value, or `NAME` alone to read the value from
    /// standard input (one variable: all of it; several: one line each) or from a prompt.
    Set {
        /// The trigger's id.
        trigger: String,
        /// `NAME=VALUE` or `NAME` (with `--secret`, `NAME` only: secrets never go on the command
        /// line).
        #[arg(required = true, value_name = "NAME[=VALUE]")]
        vars: Vec<String>,
        /// Store the values as secrets (never shown again, masked in build logs).
        #[arg(long)]
        secret: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Delete variables.
    Delete {
        /// The trigger's id.
        trigger: String,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// `kiln hooks …`
#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// A Worker's deploy hooks.
    List {
        /// The Worker (its script name).
        #[arg(long)]
        worker: String,
        #[command(flatten)]
        common: Common,
    },
    /// Create a deploy hook; its URL (a secret: whoever has it can start builds) is printed.
    Create {
        /// The Worker (its script name); it needs a trigger.
        #[arg(long)]
        worker: String,
        /// The hook's name (unique among the Worker's hooks).
        #[arg(long)]
        name: String,
        /// The branch the hook builds.
        #[arg(long)]
        branch: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a deploy hook.
    Delete {
        /// The hook's id.
        id: String,
        /// The hook's Worker.
        #[arg(long)]
        worker: String,
        #[command(flatten)]
        common: Common,
    },
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

/// Prints `result` as JSON, or the text `human` makes of it.
fn print(
    ctx: &Ctx,
    result: &Value,
    human: impl FnOnce(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if ctx.out.json {
        ctx.out.print_json(result)
    } else {
        human(result)
    }
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
            print(&ctx, &triggers, |ts| {
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
            print(&ctx, &trigger, show_trigger)?;
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
            print(&ctx, &trigger, |t| {
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
            print(&ctx, &trigger, |t| {
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
            print(&ctx, &result, |_| {
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
            print(&ctx, &result, |_| {
                println!("Purged the build cache of trigger {id}");
                Ok(())
            })?;
        }
    }
    Ok(0)
}

/// Prints a trigger's variables as a table.
fn env_table(vars: &Value) -> anyhow::Result<()> {
    let mut table = Table::new(&["NAME", "TYPE", "VALUE", "CREATED"]);
    for (name, v) in vars.as_object().into_iter().flatten() {
        let secret = v["is_secret"] == json!(true);
        table.row(vec![
            strip_controls(name),
            if secret { "secret" } else { "plain" }.into(),
            match v["value"].as_str() {
                Some(value) => strip_controls(value),
                None if secret => "(hidden)".into(),
                None => "-".into(),
            },
            local_time(text(v, "created_on")),
        ]);
    }
    table.print()
}

/// The values of `env set`'s variables: `NAME=VALUE` as given (plain only), the others read from
/// standard input (one variable: all of it; several: a line each) or a prompt.
fn env_values(vars: &[String], secret: bool) -> anyhow::Result<Vec<(String, String)>> {
    let mut given = Vec::new();
    let mut missing = Vec::new();
    for var in vars {
        match var.split_once('=') {
            Some((name, _)) if secret => anyhow::bail!(
                "{name}: secret values are read from standard input or a prompt, never from the \
                 command line (where other local users can read them): give the name alone"
            ),
            Some((name, value)) => given.push((name.to_owned(), value.to_owned())),
            None => missing.push(var.clone()),
        }
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        for name in missing {
            let value = if secret {
                read_secret(&format!("Value of {name}"))?
            } else {
                console::Term::stderr().write_str(&format!("Value of {name}: "))?;
                console::Term::stderr().read_line()?
            };
            given.push((name, value));
        }
    } else if let [name] = missing.as_slice() {
        given.push((name.clone(), read_secret(&format!("the value of {name}"))?));
    } else {
        let mut lines = stdin.lock().lines();
        for name in missing {
            let line = lines
                .next()
                .transpose()
                .context("reading values from standard input")?
                .with_context(|| format!("no line for {name} on standard input"))?;
            given.push((name, line.trim_end_matches('\r').to_owned()));
        }
    }
    Ok(given)
}

/// `kiln env …`
pub async fn env(command: EnvCommand) -> anyhow::Result<u8> {
    match command {
        EnvCommand::List { trigger, common } => {
            let ctx = Ctx::connect(&common).await?;
            let vars = ctx
                .api
                .get(
                    &ctx.path(&["triggers", &trigger, "environment_variables"]),
                    &[],
                )
                .await?;
            print(&ctx, &vars, env_table)?;
        }
        EnvCommand::Set {
            trigger,
            vars,
            secret,
            common,
        } => {
            // Values first: a prompt comes before any request.
            let values = env_values(&vars, secret)?;
            let ctx = Ctx::connect(&common).await?;
            let body: serde_json::Map<String, Value> = values
                .iter()
                .map(|(name, value)| (name.clone(), json!({"is_secret": secret, "value": value})))
                .collect();
            let (result, _) = ctx
                .api
                .call(
                    Method::PATCH,
                    &ctx.path(&["triggers", &trigger, "environment_variables"]),
                    &[],
                    Some(&Value::Object(body)),
                )
                .await?;
            print(&ctx, &result, |vars| {
                for (name, _) in &values {
                    println!("Set {}{name}", if secret { "secret " } else { "" });
                }
                env_table(vars)
            })?;
        }
        EnvCommand::Delete {
            trigger,
            names,
            common,
        } => {
            let ctx = Ctx::connect(&common).await?;
            let mut result = Value::Null;
            for name in &names {
                result = ctx
                    .api
                    .call(
                        Method::DELETE,
                        &ctx.path(&["triggers", &trigger, "environment_variables", name]),
                        &[],
                        None,
                    )
                    .await
                    .with_context(|| format!("deleting {name}"))?
                    .0;
                if !ctx.out.json {
                    println!("Deleted {name}");
                }
            }
            if ctx.out.json {
                ctx.out.print_json(&result)?;
            }
        }
    }
    Ok(0)
}

/// The public URL that starts a deploy hook's build.
fn hook_url(ctx: &Ctx, id: &str) -> anyhow::Result<String> {
    Ok(ctx
        .api
        .url(&["workers", "builds", "deploy_hooks", id])?
        .to_string())
}

/// `kiln hooks …`
pub async fn hooks(command: HooksCommand) -> anyhow::Result<u8> {
    match command {
        HooksCommand::List { worker, common } => {
            let ctx = Ctx::connect(&common).await?;
            let hooks = ctx
                .api
                .get(&ctx.path(&["workers", &worker, "deploy_hooks"]), &[])
                .await?;
            print(&ctx, &hooks, |hooks| {
                let mut table = Table::new(&["HOOK", "NAME", "BRANCH", "LAST BUILD", "CREATED"]);
                for h in hooks.as_array().into_iter().flatten() {
                    table.row(vec![
                        text(h, "deploy_hook_uuid").to_owned(),
                        strip_controls(text(h, "deploy_hook_name")),
                        strip_controls(text(h, "branch")),
                        match text(&h["latest_build"], "created_on") {
                            "" => "never".to_owned(),
                            t => age(t),
                        },
                        local_time(text(h, "created_on")),
                    ]);
                }
                table.print()
            })?;
        }
        HooksCommand::Create {
            worker,
            name,
            branch,
            common,
        } => {
            let ctx = Ctx::connect(&common).await?;
            let (hook, _) = ctx
                .api
                .call(
                    Method::POST,
                    &ctx.path(&["workers", &worker, "deploy_hooks"]),
                    &[],
                    Some(&json!({"deploy_hook_name": name, "branch": branch})),
                )
                .await?;
            let url = hook_url(&ctx, text(&hook, "deploy_hook_uuid"))?;
            print(&ctx, &hook, |h| {
                println!(
                    "Created deploy hook {:?} ({}) building branch {}",
                    strip_controls(text(h, "deploy_hook_name")),
                    text(h, "deploy_hook_uuid"),
                    strip_controls(text(h, "branch"))
                );
                println!("POST this URL to start a build (keep it secret: it needs no token):");
                println!("{url}");
                Ok(())
            })?;
        }
        HooksCommand::Delete { id, worker, common } => {
            let ctx = Ctx::connect(&common).await?;
            let (hook, _) = ctx
                .api
                .call(
                    Method::DELETE,
                    &ctx.path(&["workers", &worker, "deploy_hooks", &id]),
                    &[],
                    None,
                )
                .await?;
            print(&ctx, &hook, |h| {
                println!(
                    "Deleted deploy hook {:?} ({id})",
                    strip_controls(text(h, "deploy_hook_name"))
                );
                Ok(())
            })?;
        }
    }
    Ok(0)
}
