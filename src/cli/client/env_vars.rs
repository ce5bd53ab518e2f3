//! `kiln env`: a trigger's environment variables; secret values are read from standard input or a
//! prompt, never the command line, and never shown.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Table, local_time, strip_controls, text};
use super::{Common, Ctx, read_secret};

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
            ctx.print(&vars, env_table)?;
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
            ctx.print(&result, |vars| {
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
