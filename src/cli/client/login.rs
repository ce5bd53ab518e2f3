//! `kiln login` and `kiln logout`: a profile is a server URL, an API token checked against that
//! server, and optionally an account, stored by [`super::config`]; and the account a command acts on
//! when none is given: the token's only one (`GET /client/v4/accounts`).

use anyhow::Context;
use clap::Args;
use reqwest::StatusCode;
use serde_json::json;

use super::config::{self, ConfigFile, Profile};
use super::http::{Api, has_status};
use super::output::Out;

/// `kiln login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server's URL, e.g. `https://kiln.example.com` (default: `KILN_URL`, else the profile's).
    #[arg(long)]
    pub url: Option<String>,
    /// The account (32 hex digits) commands act on by default; checked against the token.
    #[arg(long)]
    pub account: Option<String>,
    /// The profile to store (several servers or tokens can be kept side by side).
    #[arg(long, env = "KILN_PROFILE", default_value = config::DEFAULT_PROFILE)]
    pub profile: String,
    /// Print what was stored (never the token) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kiln logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The profile to remove.
    #[arg(long, env = "KILN_PROFILE", default_value = config::DEFAULT_PROFILE)]
    pub profile: String,
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The ids of every account the token may act on, all pages.
async fn list_accounts(api: &Api) -> anyhow::Result<Vec<String>> {
    let items = match api.get_all(&["accounts"], &[], None).await {
        Err(e) if has_status(&e, StatusCode::NOT_FOUND) => {
            return Err(e.context(
                "this server cannot list the token's accounts: give --account or KILN_ACCOUNT_ID",
            ));
        }
        other => other?,
    };
    Ok(items
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect())
}

/// The account a command acts on when none was given: the token's only one.
pub async fn only_account(api: &Api) -> anyhow::Result<String> {
    let mut accounts = list_accounts(api)
        .await
        .context("finding the token's account")?;
    match accounts.len() {
        1 => Ok(accounts.remove(0)),
        0 => anyhow::bail!(
            "the token has no account with anything in it yet: give --account or KILN_ACCOUNT_ID"
        ),
        n => anyhow::bail!(
            "the token may act on {n} accounts ({}): choose one with --account or KILN_ACCOUNT_ID",
            accounts.join(", ")
        ),
    }
}

/// `kiln login`: reads the token, checks it (and the account) against the server, stores the
/// profile.
pub async fn login(args: LoginArgs) -> anyhow::Result<u8> {
    let out = Out::new(args.json);
    let path = config::config_path()?;
    let mut file = ConfigFile::load(&path)?;
    let raw_url = args
        .url
        .or_else(|| {
            std::env::var(config::ENV_URL)
                .ok()
                .filter(|u| !u.trim().is_empty())
        })
        .or_else(|| file.profiles.get(&args.profile).map(|p| p.url.clone()))
        .context("give the server's URL with --url (or KILN_URL)")?;
    let url = config::normalize_url(&raw_url)?;
    let token = super::read_secret(&format!("API token for {url}"))?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "no API token given: pipe it to standard input or type it at the prompt"
    );
    let api = Api::new(&url, &token)?;
    let accounts = match list_accounts(&api).await {
        Err(e) if has_status(&e, StatusCode::UNAUTHORIZED) => {
            return Err(e.context(format!(
                "the server at {url} refused the token; nothing was stored"
            )));
        }
        other => other?,
    };
    if let Some(account) = &args.account {
        // Any call on the account checks both the token's scope and the id (read access suffices).
        api.get(&["accounts", account, "builds", "account", "limits"], &[])
            .await
            .with_context(|| {
                format!("the token cannot act on account {account}; nothing was stored")
            })?;
    }
    file.profiles.insert(
        args.profile.clone(),
        Profile {
            url: url.clone(),
            token,
            account_id: args.account.clone(),
        },
    );
    file.save(&path)?;
    if out.json {
        out.print_json(&json!({
            "profile": args.profile, "url": url, "account_id": args.account,
            "accounts": accounts, "config": path,
        }))?;
        return Ok(0);
    }
    println!(
        "Logged in to {url} (profile {:?}, stored in {})",
        args.profile,
        path.display()
    );
    match (&args.account, accounts.as_slice()) {
        (Some(account), _) => println!("Account: {account}"),
        (None, [only]) => println!("Account: {only} (the token's only account)"),
        (None, []) => {
            println!("The token has no account with anything in it yet: give --account to commands")
        }
        (None, many) => println!(
            "The token may act on {} accounts: give --account to commands, or log in again with one",
            many.len()
        ),
    }
    Ok(0)
}

/// `kiln logout`: removes the profile (and the file once no profile is left).
pub fn logout(args: LogoutArgs) -> anyhow::Result<u8> {
    let out = Out::new(args.json);
    let path = config::config_path()?;
    let mut file = ConfigFile::load(&path)?;
    let removed = file.profiles.remove(&args.profile);
    anyhow::ensure!(
        removed.is_some(),
        "no profile {:?} in {}",
        args.profile,
        path.display()
    );
    if file.profiles.is_empty() {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    } else {
        file.save(&path)?;
    }
    if out.json {
        out.print_json(&json!({"profile": args.profile, "removed": true}))?;
    } else {
        println!("Logged out: removed profile {:?}", args.profile);
    }
    Ok(0)
}
