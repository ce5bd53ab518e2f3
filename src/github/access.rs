//! Whose credentials may reach a connected GitHub repository.
//!
//! A connection names any repository (`repo_id`, owner and name are request fields), so it proves
//! nothing. What proves something is the GitHub App installation that covers the repository (GitHub
//! names it in every signed App delivery, and answers `GET /repos/{owner}/{repo}/installation`) and the
//! operator's link between that installation and a Kiln account (`kiln installations link`, stored in
//! `github_installation_accounts`). A repository covered by an installation is cloned with its token
//! only for an account linked to it; for any other account the clone fails before anything is fetched
//! or a token is made. A repository no installation covers is fetched with whatever the URL template
//! carries (nothing, by default: public repositories only).
//!
//! Without an App (`--github-app-id` unset: local or development use, often with a `file://` URL
//! template), Kiln holds no installation tokens; the installations named by earlier deliveries still
//! refuse the accounts not linked to them. Whatever the URL template itself can reach is then
//! reachable by every account: a template carrying credentials is for a single tenant.

use super::GithubApp;
use crate::domain::{AccountId, ProviderType};
use crate::store::Store;

/// How a build (or anything else done for an account) may reach a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoAccess {
    /// No App installation is known to cover the repository: fetched without a token (with the URL
    /// template's own credentials, if it has any).
    WithoutToken,
    /// The account owns this installation, which covers the repository: fetched with its token when an
    /// App is configured.
    Installation(i64),
    /// An installation covers the repository that the account is not linked to: nothing may be fetched
    /// or reported for the account, and no token is made.
    NotLinked,
}

/// The repository a connection names.
#[derive(Debug, Clone, Copy)]
pub struct RepoRef<'a> {
    pub provider_type: ProviderType,
    /// GitHub's numeric id, as text.
    pub repo_id: &'a str,
    pub owner: &'a str,
    pub name: &'a str,
}

/// How `account` may reach `repo`. The installation is the one the newest signed delivery about the
/// repository id named, else (with an App) the one GitHub says covers `owner/name`. Errors: the store
/// or GitHub could not be asked (the caller decides; fetching without a token reveals nothing).
pub async fn repo_access(
    store: &Store,
    app: Option<&GithubApp>,
    account: &AccountId,
    repo: RepoRef<'_>,
) -> anyhow::Result<RepoAccess> {
    if repo.provider_type != ProviderType::Github {
        return Ok(RepoAccess::WithoutToken);
    }
    let installation = match store.get_installation(repo.repo_id).await? {
        Some(i) => Some(i),
        None => match app {
            Some(app) => app.repo_installation(repo.owner, repo.name).await?,
            None => None,
        },
    };
    Ok(match installation {
        None => RepoAccess::WithoutToken,
        Some(i) if store.owns_installation(account, i).await? => RepoAccess::Installation(i),
        Some(_) => RepoAccess::NotLinked,
    })
}
