//! Column lists and row decoding shared by the store's queries.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::domain::{
    AccountId, BuildTokenId, BuildTrigger, ProviderType, RepoConnection, RepoConnectionId,
    Timestamp, Trigger, TriggerId, WorkerId,
};

/// Columns of `repo_connections c`, aliased `c_*`.
pub const CONNECTION_COLUMNS: &str = "c.uuid AS c_uuid, c.account_id AS c_account_id, \
    c.provider_type AS c_provider_type, c.provider_account_id AS c_provider_account_id, \
    c.provider_account_name AS c_provider_account_name, c.repo_id AS c_repo_id, \
    c.repo_name AS c_repo_name, c.created_on AS c_created_on, c.modified_on AS c_modified_on, \
    c.deleted_on AS c_deleted_on";

/// Columns of `triggers t` joined with its connection `c` and live token `k`, aliased `t_*`/`c_*`/`k_*`.
pub const TRIGGER_COLUMNS: &str = "t.uuid AS t_uuid, t.account_id AS t_account_id, \
    t.external_script_id AS t_external_script_id, t.trigger_name AS t_trigger_name, \
    t.build_token_uuid AS t_build_token_uuid, t.build_command AS t_build_command, \
    t.deploy_command AS t_deploy_command, t.root_directory AS t_root_directory, \
    t.branch_includes AS t_branch_includes, t.branch_excludes AS t_branch_excludes, \
    t.path_includes AS t_path_includes, t.path_excludes AS t_path_excludes, \
    t.build_caching_enabled AS t_build_caching_enabled, t.created_on AS t_created_on, \
    t.modified_on AS t_modified_on, t.deleted_on AS t_deleted_on, k.name AS k_name";

/// `FROM` clause matching [`TRIGGER_COLUMNS`] and [`CONNECTION_COLUMNS`].
pub const TRIGGER_FROM: &str = "triggers t \
    JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
    LEFT JOIN build_tokens k ON k.uuid = t.build_token_uuid AND k.deleted_on IS NULL";

pub fn ts(row: &AnyRow, col: &str) -> anyhow::Result<Timestamp> {
    Ok(Timestamp::from_millis(
        row.try_get::<i64, _>(col)
            .with_context(|| format!("column {col}"))?,
    ))
}

pub fn opt_ts(row: &AnyRow, col: &str) -> anyhow::Result<Option<Timestamp>> {
    Ok(row
        .try_get::<Option<i64>, _>(col)
        .with_context(|| format!("column {col}"))?
        .map(Timestamp::from_millis))
}

pub fn text(row: &AnyRow, col: &str) -> anyhow::Result<String> {
    row.try_get::<String, _>(col)
        .with_context(|| format!("column {col}"))
}

pub fn opt_text(row: &AnyRow, col: &str) -> anyhow::Result<Option<String>> {
    row.try_get::<Option<String>, _>(col)
        .with_context(|| format!("column {col}"))
}

pub fn flag(row: &AnyRow, col: &str) -> anyhow::Result<bool> {
    Ok(row
        .try_get::<i64, _>(col)
        .with_context(|| format!("column {col}"))?
        != 0)
}

pub fn list(row: &AnyRow, col: &str) -> anyhow::Result<Vec<String>> {
    serde_json::from_str(&text(row, col)?)
        .with_context(|| format!("column {col} is not a JSON list"))
}

pub fn to_json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

pub fn connection(row: &AnyRow) -> anyhow::Result<RepoConnection> {
    Ok(RepoConnection {
        repo_connection_uuid: RepoConnectionId::from_stored(&text(row, "c_uuid")?)?,
        provider_type: ProviderType::from_stored(&text(row, "c_provider_type")?)?,
        provider_account_id: text(row, "c_provider_account_id")?,
        provider_account_name: text(row, "c_provider_account_name")?,
        repo_id: text(row, "c_repo_id")?,
        repo_name: text(row, "c_repo_name")?,
        created_on: ts(row, "c_created_on")?,
        modified_on: ts(row, "c_modified_on")?,
        deleted_on: opt_ts(row, "c_deleted_on")?,
        account_id: AccountId::from_stored(text(row, "c_account_id")?),
    })
}

pub fn build_trigger(row: &AnyRow) -> anyhow::Result<BuildTrigger> {
    Ok(BuildTrigger {
        trigger_uuid: TriggerId::from_stored(&text(row, "t_uuid")?)?,
        trigger_name: text(row, "t_trigger_name")?,
        external_script_id: WorkerId::from_stored(text(row, "t_external_script_id")?),
        repo_connection: connection(row)?,
        build_command: text(row, "t_build_command")?,
        deploy_command: text(row, "t_deploy_command")?,
        root_directory: text(row, "t_root_directory")?,
        branch_includes: list(row, "t_branch_includes")?,
        branch_excludes: list(row, "t_branch_excludes")?,
        path_includes: list(row, "t_path_includes")?,
        path_excludes: list(row, "t_path_excludes")?,
        build_caching_enabled: flag(row, "t_build_caching_enabled")?,
        created_on: ts(row, "t_created_on")?,
        modified_on: ts(row, "t_modified_on")?,
        deleted_on: opt_ts(row, "t_deleted_on")?,
    })
}

pub fn trigger(row: &AnyRow) -> anyhow::Result<Trigger> {
    Ok(Trigger {
        info: build_trigger(row)?,
        build_token_uuid: BuildTokenId::from_stored(&text(row, "t_build_token_uuid")?)?,
        build_token_name: opt_text(row, "k_name")?,
        account_id: AccountId::from_stored(text(row, "t_account_id")?),
    })
}
