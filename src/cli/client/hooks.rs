//! `kiln hooks`: a Worker's deploy hooks; `create` prints the hook's URL.

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::output::{Table, age, local_time, strip_controls, text};
use super::{Common, Ctx};

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
            ctx.print(&hooks, |hooks| {
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
            ctx.print(&hook, |h| {
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
            ctx.print(&hook, |h| {
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
