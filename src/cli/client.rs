//! The `kiln` client commands: they call a Kiln server's HTTP API (`/client/v4`) with an API token,
//! as scripts and people at a terminal do (issue 10; README "Command-line client").
//!
//! The server and token come from `KILN_URL` and `KILN_API_TOKEN`, else from a profile stored by
//! `kiln login` ([`config`]); the account from `--account`, `KILN_ACCOUNT_ID` or the profile, else the
//! token's only account. Output is human by default and the API's `result` with `--json`
//! ([`output`]). Exit codes are in [`EXIT_CODES`].

mod builds;
mod config;
mod env_vars;
mod hooks;
mod http;
mod login;
mod logs;
mod output;
mod triggers;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use self::config::Connection;
use self::http::Api;
use self::output::Out;

/// The exit codes of the client commands, as `--help` and the README show them.
pub const EXIT_CODES: &str = "Exit codes of the client commands:
  0  done; for `build --wait`, the build succeeded
  1  `build --wait`: the build failed
  2  usage error, or the command could not be done (an API error, an unreachable server, no token)
  3  `build --wait`: the build was cancelled, terminated or skipped";

/// Exit code: the build failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: a usage error, an API error, a connection error.
const EXIT_ERROR: u8 = 2;
/// Exit code: the build was cancelled, terminated or skipped.
const EXIT_NOT_RUN: u8 = 3;

/// Flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Print the API's `result` as JSON (log lines as JSON lines) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The account (32 hex digits) to act on; default: the profile's, else the token's only one.
    #[arg(long, env = "KILN_ACCOUNT_ID")]
    pub account: Option<String>,
    /// The profile stored by `kiln login` to use.
    #[arg(long, env = "KILN_PROFILE", default_value = config::DEFAULT_PROFILE)]
    pub profile: String,
}

/// The client commands (flattened into `kiln`'s own).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Sign in to a Kiln server: the API token is read from standard input (or a prompt that does
    /// not echo), checked against the server and stored in a profile (mode 0600).
    #[command(after_help = EXIT_CODES)]
    Login(login::LoginArgs),
    /// Remove a stored profile (its token).
    #[command(after_help = EXIT_CODES)]
    Logout(login::LogoutArgs),
    /// The account's Workers, each with its latest build.
    #[command(subcommand, after_help = EXIT_CODES)]
    Workers(builds::WorkersCommand),
    /// List, show and cancel builds.
    #[command(subcommand, after_help = EXIT_CODES)]
    Builds(builds::BuildsCommand),
    /// Start a build of a trigger; with `--wait`, follow its log and exit with its outcome.
    #[command(after_help = EXIT_CODES)]
    Build(builds::BuildArgs),
    /// Print a build's log; with `-f`, follow it live until the build ends.
    #[command(after_help = EXIT_CODES)]
    Logs(builds::LogsArgs),
    /// A Worker's triggers: list, show, create, update, delete, purge the build cache.
    #[command(subcommand, after_help = EXIT_CODES)]
    Triggers(Box<triggers::TriggersCommand>),
    /// A trigger's environment variables (secret values are read from standard input or a prompt).
    #[command(subcommand, after_help = EXIT_CODES)]
    Env(env_vars::EnvCommand),
    /// A Worker's deploy hooks.
    #[command(subcommand, after_help = EXIT_CODES)]
    Hooks(hooks::HooksCommand),
}

/// A connected command's context: the client, the account, how to print.
struct Ctx {
    api: Api,
    account: String,
    out: Out,
}

impl Ctx {
    /// Resolves the connection and the account of `common` (see the module docs).
    async fn connect(common: &Common) -> anyhow::Result<Ctx> {
        let out = Out::new(common.json);
        let Connection {
            url,
            token,
            account,
        } = config::resolve(&common.profile, common.account.as_deref())?;
        let api = Api::new(&url, &token)?;
        let account = match account {
            Some(a) => a,
            None => login::only_account(&api).await?,
        };
        Ok(Ctx { api, account, out })
    }

    /// Prints `result` as JSON with `--json`, else the text `human` makes of it.
    fn print(
        &self,
        result: &serde_json::Value,
        human: impl FnOnce(&serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.out.json {
            self.out.print_json(result)
        } else {
            human(result)
        }
    }

    /// `accounts/{account}/builds/<rest…>` as path segments.
    fn path<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut segments = vec!["accounts", self.account.as_str(), "builds"];
        segments.extend_from_slice(rest);
        segments
    }
}

/// Runs a client command; prints its error, if any, and returns the exit code (see [`EXIT_CODES`]).
pub async fn run(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Login(args) => login::login(args).await,
        ClientCommand::Logout(args) => login::logout(args),
        ClientCommand::Workers(c) => builds::workers(c).await,
        ClientCommand::Builds(c) => builds::builds(c).await,
        ClientCommand::Build(args) => builds::build(args).await,
        ClientCommand::Logs(args) => builds::logs(args).await,
        ClientCommand::Triggers(c) => triggers::triggers(*c).await,
        ClientCommand::Env(c) => env_vars::env(c).await,
        ClientCommand::Hooks(c) => hooks::hooks(c).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!(
                "{} {e:#}",
                console::Style::new()
                    .red()
                    .bold()
                    .for_stderr()
                    .apply_to("error:")
            );
            let refused = e.chain().any(|cause| {
                cause
                    .downcast_ref::<http::ApiFailure>()
                    .is_some_and(|f| f.status == reqwest::StatusCode::UNAUTHORIZED)
            });
            if refused {
                eprintln!(
                    "The server refused the API token: check {} or run `kiln login` again.",
                    config::ENV_TOKEN
                );
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The exit code for a build's outcome (see [`EXIT_CODES`]).
fn outcome_code(outcome: Option<&str>) -> u8 {
    match outcome {
        Some("success") => 0,
        Some("fail") | None => EXIT_FAILED,
        Some(_) => EXIT_NOT_RUN,
    }
}

/// Reads a secret (an API token, a variable's value): from standard input when it is not a
/// terminal (all of it, without the trailing line break), else from a prompt on the terminal that
/// does not echo. Never from the command line, where every local user could read it.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    let value = if std::io::stdin().is_terminal() {
        let term = console::Term::stderr();
        term.write_str(&format!("{prompt}: "))?;
        term.read_secure_line()?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| anyhow::anyhow!("reading {prompt} from standard input: {e}"))?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    };
    Ok(value)
}
