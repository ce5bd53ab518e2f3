//! The settings pages: a Worker's triggers (view, edit, purge the build cache), a trigger's
//! environment variables, a Worker's deploy hooks, and the account's event subscriptions with their
//! recent deliveries.
//!
//! * Every change is a `POST` form checked by [`super::session::guard_forms`] (CSRF token, origin)
//!   and [`WriteAccess`], and done by the same function the API's handler calls
//!   (`crate::api::{triggers, env_vars, deploy_hooks, subscriptions}`), so its validation, limits
//!   and errors are the API's. A field the API refuses (400) or a conflict with what is stored (409)
//!   shows the form again with the message next to it and what the user typed (never a secret
//!   value); anything else is the error page.
//! * Secret values are never in a page: variables reach the templates only through the API's view
//!   (a secret has no value there), and a secret typed into a form that failed is not sent back.
//! * A deploy hook's URL (its id is the credential) and a subscription's signing secret are shown
//!   once, on the page answering the form that created them, as the hosted dashboard shows them;
//!   later pages never show them (a hook is deleted by its name, unique in its Worker).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use super::assets;
use super::error::{PageError, PageResult};
use super::page;
use super::session::{
    AccountAccess, Form, PagePath, PageQuery, Viewer, WriteAccess, redirect_with_flash,
};
use super::view::{self, Layout};
use crate::api::env_vars::EnvVarInput;
use crate::api::error::ApiError;
use crate::api::{AppState, deploy_hooks, env_vars, subscriptions, triggers};
use crate::domain::{
    AccountId, Delivery, DeliveryId, DeliveryStatus, DeployHookId, EventSubscription, EventType,
    SubscriptionId, Timestamp, Trigger, TriggerId, WorkerId,
};

/// Subscriptions per page of the subscriptions list.
const SUBSCRIPTIONS_PER_PAGE: u32 = 50;
/// Deliveries per page of a subscription's page.
const DELIVERIES_PER_PAGE: u32 = 25;

/// The settings routes, merged into [`super::router`] inside its form guard.
pub fn routes() -> Router<AppState> {
    const WORKER: &str = "/accounts/{account_id}/workers/{worker}";
    const SUBSCRIPTION: &str = "/accounts/{account_id}/subscriptions/{subscription}";
    Router::new()
        .route(&format!("{WORKER}/settings"), page(get(show_settings)))
        .route(
            &format!("{WORKER}/triggers/{{trigger}}"),
            page(post(update_trigger)),
        )
        .route(
            &format!("{WORKER}/triggers/{{trigger}}/purge-cache"),
            page(post(purge_cache)),
        )
        .route(
            &format!("{WORKER}/triggers/{{trigger}}/env"),
            page(get(show_env).post(save_env)),
        )
        .route(
            &format!("{WORKER}/triggers/{{trigger}}/env/{{key}}/delete"),
            page(post(delete_env)),
        )
        .route(
            &format!("{WORKER}/deploy-hooks"),
            page(get(show_hooks).post(create_hook)),
        )
        .route(
            &format!("{WORKER}/deploy-hooks/delete"),
            page(post(delete_hook)),
        )
        .route(
            "/accounts/{account_id}/subscriptions",
            page(get(show_subscriptions).post(create_subscription)),
        )
        .route(SUBSCRIPTION, page(get(show_subscription)))
        .route(
            &format!("{SUBSCRIPTION}/enabled"),
            page(post(set_subscription_enabled)),
        )
        .route(
            &format!("{SUBSCRIPTION}/delete"),
            page(post(delete_subscription)),
        )
        .route(
            &format!("{SUBSCRIPTION}/deliveries/{{delivery}}/redeliver"),
            page(post(redeliver)),
        )
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// `text` as one path segment: everything but ASCII letters, digits and `-._~` percent-encoded.
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// The characters [`segment`] encodes (RFC 3986's unreserved ones stay).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `/accounts/{account}/workers/{worker}` with the Worker encoded.
fn worker_path(account: &AccountId, worker: &WorkerId) -> String {
    format!("/accounts/{account}/workers/{}", segment(worker.as_str()))
}

/// The page of a trigger's environment variables.
fn env_path(account: &AccountId, worker: &WorkerId, trigger: TriggerId) -> String {
    format!("{}/triggers/{trigger}/env", worker_path(account, worker))
}

/// The list of the account's subscriptions.
fn subscriptions_path(account: &AccountId) -> String {
    format!("/accounts/{account}/subscriptions")
}

/// One subscription's page.
fn subscription_path(account: &AccountId, id: SubscriptionId) -> String {
    format!("/accounts/{account}/subscriptions/{id}")
}

/// An error a form shows next to itself: its status and message, for what the user can fix (an
/// invalid field, a conflict with what is stored, something named that does not exist). Any other
/// error is the error page.
fn form_problem(e: ApiError) -> Result<(StatusCode, String), PageError> {
    match e {
        ApiError::BadRequest(m) => Ok((StatusCode::BAD_REQUEST, m)),
        ApiError::Conflict(m) => Ok((StatusCode::CONFLICT, m)),
        ApiError::Missing(m) => Ok((StatusCode::NOT_FOUND, m)),
        other => Err(other.into()),
    }
}

/// A signed-in viewer's page with `status`, clearing the flash message it showed.
fn respond<T: askama::Template>(viewer: &Viewer, status: StatusCode, template: &T) -> Response {
    let mut resp = view::render(status, template);
    if viewer.flash.is_some() {
        super::session::clear_flash_cookie(resp.headers_mut());
    }
    resp
}

/// The non-empty lines of a textarea, trimmed (a list field typed one entry per line; commas also
/// separate entries where `commas` says so).
fn entries(text: &str, commas: bool) -> Vec<String> {
    text.split(|c| c == '\n' || c == '\r' || (commas && c == ','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The Worker of the path.
fn worker_id(raw: &str) -> PageResult<WorkerId> {
    Ok(WorkerId::parse("external_script_id", raw)?)
}

/// The live trigger `raw` of `worker` in the account (404 when it is not one of the Worker's).
async fn worker_trigger(
    app: &AppState,
    account: &AccountId,
    worker: &WorkerId,
    raw: &str,
) -> PageResult<Trigger> {
    let id = TriggerId::parse("trigger_uuid", raw)?;
    match app.store.get_trigger(account, id).await? {
        Some(t) if t.info.external_script_id == *worker => Ok(t),
        _ => Err(ApiError::NotFound.into()),
    }
}

/// `?page=` of a paged list.
#[derive(Deserialize)]
pub struct PageNumber {
    page: Option<u32>,
}

/// A page number and its neighbours in a list of `total` items shown `per_page` at a time.
struct Pager {
    page: u32,
    prev: Option<u32>,
    next: Option<u32>,
}

impl Pager {
    fn new(page: u32, per_page: u32, shown: usize, total: i64) -> Pager {
        let until = i64::from(page - 1) * i64::from(per_page) + shown as i64;
        Pager {
            page,
            prev: (page > 1).then(|| page - 1),
            next: (until < total).then(|| page + 1),
        }
    }
}

/// A form with nothing but its CSRF token (checked before the handler runs).
#[derive(Deserialize)]
pub struct EmptyForm {}

// ---------------------------------------------------------------------------------------------
// Triggers

/// The values of a trigger's edit form (as stored, or as the user sent them).
#[derive(Debug, Clone, Deserialize)]
pub struct TriggerForm {
    trigger_name: String,
    build_command: String,
    deploy_command: String,
    root_directory: String,
    /// One pattern per line, as are the three other lists.
    branch_includes: String,
    branch_excludes: String,
    path_includes: String,
    path_excludes: String,
    /// A checkbox: present (`on`) when ticked.
    #[serde(default)]
    build_caching_enabled: Option<String>,
}

impl TriggerForm {
    fn of(t: &Trigger) -> TriggerForm {
        let info = &t.info;
        TriggerForm {
            trigger_name: info.trigger_name.clone(),
            build_command: info.build_command.clone(),
            deploy_command: info.deploy_command.clone(),
            root_directory: info.root_directory.clone(),
            branch_includes: info.branch_includes.join("\n"),
            branch_excludes: info.branch_excludes.join("\n"),
            path_includes: info.path_includes.join("\n"),
            path_excludes: info.path_excludes.join("\n"),
            build_caching_enabled: info.build_caching_enabled.then(|| "on".to_owned()),
        }
    }

    fn caching(&self) -> bool {
        self.build_caching_enabled.is_some()
    }

    /// The `updateTrigger` body of this form: every field it shows is set.
    fn request(&self) -> triggers::UpdateTriggerRequest {
        triggers::UpdateTriggerRequest {
            trigger_name: Some(self.trigger_name.clone()),
            build_token_uuid: None,
            build_command: Some(self.build_command.clone()),
            deploy_command: Some(self.deploy_command.clone()),
            root_directory: Some(self.root_directory.clone()),
            branch_includes: Some(entries(&self.branch_includes, false)),
            branch_excludes: Some(entries(&self.branch_excludes, false)),
            path_includes: Some(entries(&self.path_includes, false)),
            path_excludes: Some(entries(&self.path_excludes, false)),
            build_caching_enabled: Some(self.caching()),
        }
    }
}

/// A trigger as the settings page shows it.
struct TriggerCard {
    trigger: Trigger,
    repository: String,
    created: String,
    modified: String,
    /// The edit form's values.
    form: TriggerForm,
    /// Why the last edit was refused (the form then holds what was sent).
    error: Option<String>,
    env_plain: usize,
    env_secret: usize,
}

impl TriggerCard {
    fn id(&self) -> TriggerId {
        self.trigger.info.trigger_uuid
    }
}

#[derive(askama::Template)]
#[template(path = "settings_worker.html")]
struct SettingsPage {
    layout: Layout,
    account: AccountId,
    worker: String,
    base: String,
    can_write: bool,
    triggers: Vec<TriggerCard>,
    hooks: usize,
}

/// The settings page of `worker`, its trigger `failed` showing `form` and `error`.
async fn settings_page(
    app: &AppState,
    access: &AccountAccess,
    worker: &WorkerId,
    failed: Option<(TriggerId, TriggerForm, String)>,
) -> PageResult<SettingsPage> {
    let account = &access.account;
    let mut cards = Vec::new();
    for trigger in app.store.list_triggers(account, worker).await? {
        let vars = env_vars::list(app, account, trigger.info.trigger_uuid).await?;
        let env_secret = vars.values().filter(|v| v.is_secret).count();
        let (form, error) = match &failed {
            Some((id, form, error)) if *id == trigger.info.trigger_uuid => {
                (form.clone(), Some(error.clone()))
            }
            _ => (TriggerForm::of(&trigger), None),
        };
        let repo = &trigger.info.repo_connection;
        cards.push(TriggerCard {
            repository: format!("{}/{}", repo.provider_account_name, repo.repo_name),
            created: view::when(trigger.info.created_on),
            modified: view::when(trigger.info.modified_on),
            form,
            error,
            env_plain: vars.len() - env_secret,
            env_secret,
            trigger,
        });
    }
    let hooks = app.store.list_deploy_hooks(account, worker).await?.len();
    let layout = Layout::new(
        app,
        &access.viewer,
        format!("Settings of {worker}"),
        Some(account),
    )
    .await?;
    Ok(SettingsPage {
        layout,
        account: account.clone(),
        worker: worker.as_str().to_owned(),
        base: worker_path(account, worker),
        can_write: access.can_write,
        triggers: cards,
        hooks,
    })
}

/// `GET /accounts/{account_id}/workers/{worker}/settings`: the Worker's triggers, each with its
/// settings, an edit form and a Purge button (for a token that may write), and links to its
/// variables and the Worker's deploy hooks.
pub async fn show_settings(
    State(app): State<AppState>,
    access: AccountAccess,
    PagePath((_, raw_worker)): PagePath<(String, String)>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let page = settings_page(&app, &access, &worker, None).await?;
    Ok(view::page(&access.viewer, &page))
}

/// `POST /accounts/{account_id}/workers/{worker}/triggers/{trigger}`: as `updateTrigger` with
/// every field of the form; a refused field shows the form again with the message (400 or 409).
pub async fn update_trigger(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_worker, raw_trigger)): PagePath<(String, String, String)>,
    Form(form): Form<TriggerForm>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let trigger = worker_trigger(&app, &access.account, &worker, &raw_trigger).await?;
    let id = trigger.info.trigger_uuid;
    match triggers::update(&app, &access.account, id, form.request()).await {
        Ok(saved) => Ok(redirect_with_flash(
            // `#top`: the form's own fragment would be kept otherwise, scrolling past the message.
            &format!("{}/settings#top", worker_path(&access.account, &worker)),
            &format!("Trigger “{}” saved", saved.info.trigger_name),
        )),
        Err(e) => {
            let (status, message) = form_problem(e)?;
            let page = settings_page(&app, &access, &worker, Some((id, form, message))).await?;
            Ok(respond(&access.viewer, status, &page))
        }
    }
}

/// `POST /accounts/{account_id}/workers/{worker}/triggers/{trigger}/purge-cache`: as
/// `purge_build_cache`.
pub async fn purge_cache(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_worker, raw_trigger)): PagePath<(String, String, String)>,
    Form(_): Form<EmptyForm>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let trigger = worker_trigger(&app, &access.account, &worker, &raw_trigger).await?;
    triggers::purge_cache(&app, &access.account, trigger.info.trigger_uuid).await?;
    Ok(redirect_with_flash(
        &format!("{}/settings", worker_path(&access.account, &worker)),
        &format!(
            "Build cache of “{}” purged: its next build runs cold",
            trigger.info.trigger_name
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// Environment variables

/// One variable as the page shows it: a secret has no value here at all.
struct EnvRow {
    key: String,
    /// The value of a plain variable; `None` for a secret.
    value: Option<String>,
    created: String,
}

#[derive(askama::Template)]
#[template(path = "settings_env.html")]
struct EnvPage {
    layout: Layout,
    account: AccountId,
    worker: String,
    base: String,
    trigger_name: String,
    action: String,
    can_write: bool,
    vars: Vec<EnvRow>,
    /// The form's name field.
    form_key: String,
    /// The form's value field: only ever a plain variable's value sent back after an error.
    form_value: String,
    form_secret: bool,
    /// Whether a secret value the user typed was left out of the refused form sent back.
    value_dropped: bool,
    error: Option<String>,
    js: &'static str,
}

/// The fields of the variable form.
#[derive(Deserialize)]
pub struct EnvForm {
    key: String,
    value: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    secret: Option<String>,
}

/// The variables page of `trigger`, its form showing `form` and `error` after a refused change.
async fn env_page(
    app: &AppState,
    access: &AccountAccess,
    worker: &WorkerId,
    trigger: &Trigger,
    form: Option<(&EnvForm, String)>,
) -> PageResult<EnvPage> {
    let account = &access.account;
    let id = trigger.info.trigger_uuid;
    let vars = env_vars::list(app, account, id)
        .await?
        .into_iter()
        .map(|(key, v)| EnvRow {
            key,
            value: v.value,
            created: view::when(v.created_on),
        })
        .collect();
    let layout = Layout::new(
        app,
        &access.viewer,
        format!("Variables of {}", trigger.info.trigger_name),
        Some(account),
    )
    .await?;
    let value_dropped = form
        .as_ref()
        .is_some_and(|(f, _)| f.secret.is_some() && !f.value.is_empty());
    let (form_key, form_value, form_secret, error) = match form {
        // A secret typed into a refused form is not sent back into the page.
        Some((f, error)) => {
            let secret = f.secret.is_some();
            let value = if secret {
                String::new()
            } else {
                f.value.clone()
            };
            (f.key.clone(), value, secret, Some(error))
        }
        None => (String::new(), String::new(), true, None),
    };
    Ok(EnvPage {
        layout,
        account: account.clone(),
        worker: worker.as_str().to_owned(),
        base: worker_path(account, worker),
        trigger_name: trigger.info.trigger_name.clone(),
        action: env_path(account, worker, id),
        can_write: access.can_write,
        vars,
        form_key,
        form_value,
        form_secret,
        value_dropped,
        error,
        js: assets::settings_js_url(),
    })
}

/// `GET /accounts/{account_id}/workers/{worker}/triggers/{trigger}/env`: the trigger's variables
/// (a secret shows as set, never its value) and, for a token that may write, the form to add or
/// replace one and a Delete button per variable.
pub async fn show_env(
    State(app): State<AppState>,
    access: AccountAccess,
    PagePath((_, raw_worker, raw_trigger)): PagePath<(String, String, String)>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let trigger = worker_trigger(&app, &access.account, &worker, &raw_trigger).await?;
    let page = env_page(&app, &access, &worker, &trigger, None).await?;
    Ok(view::page(&access.viewer, &page))
}

/// `POST /accounts/{account_id}/workers/{worker}/triggers/{trigger}/env`: sets one variable as
/// `PATCH …/environment_variables` does. An empty value keeps the stored one (to turn a plain
/// variable into a secret without typing it again; a new variable needs a value, and a secret
/// becomes plain only with a new value, as the API rules).
pub async fn save_env(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_worker, raw_trigger)): PagePath<(String, String, String)>,
    Form(form): Form<EnvForm>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let trigger = worker_trigger(&app, &access.account, &worker, &raw_trigger).await?;
    let id = trigger.info.trigger_uuid;
    let key = form.key.trim().to_owned();
    let input = EnvVarInput {
        is_secret: form.secret.is_some(),
        value: (!form.value.is_empty()).then(|| form.value.clone()),
    };
    let body = env_vars::EnvVarsRequest(BTreeMap::from([(key.clone(), Some(input))]));
    match env_vars::upsert(&app, &access.account, id, body).await {
        Ok(_) => Ok(redirect_with_flash(
            &format!("{}#top", env_path(&access.account, &worker, id)),
            &format!(
                "{} {key} saved",
                if form.secret.is_some() {
                    "Secret"
                } else {
                    "Variable"
                }
            ),
        )),
        Err(e) => {
            let (status, message) = form_problem(e)?;
            let page = env_page(&app, &access, &worker, &trigger, Some((&form, message))).await?;
            Ok(respond(&access.viewer, status, &page))
        }
    }
}

/// `POST /accounts/{account_id}/workers/{worker}/triggers/{trigger}/env/{key}/delete`: as
/// `DELETE …/environment_variables/{key}`.
pub async fn delete_env(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_worker, raw_trigger, key)): PagePath<(String, String, String, String)>,
    Form(_): Form<EmptyForm>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let trigger = worker_trigger(&app, &access.account, &worker, &raw_trigger).await?;
    let id = trigger.info.trigger_uuid;
    env_vars::delete(&app, &access.account, id, &key).await?;
    Ok(redirect_with_flash(
        &env_path(&access.account, &worker, id),
        &format!("Variable {key} deleted"),
    ))
}

// ---------------------------------------------------------------------------------------------
// Deploy hooks

/// A hook as the list shows it (without its id: the URL is shown only when it is created).
struct HookRow {
    name: String,
    branch: String,
    last_triggered: Option<String>,
    created: String,
}

/// A hook just created: its URL, shown this once.
struct CreatedHook {
    name: String,
    branch: String,
    url: String,
}

#[derive(askama::Template)]
#[template(path = "settings_hooks.html")]
struct HooksPage {
    layout: Layout,
    account: AccountId,
    worker: String,
    base: String,
    can_write: bool,
    has_trigger: bool,
    hooks: Vec<HookRow>,
    created: Option<CreatedHook>,
    form_name: String,
    form_branch: String,
    error: Option<String>,
    js: &'static str,
}

/// The fields of the deploy hook form.
#[derive(Deserialize)]
pub struct HookForm {
    name: String,
    branch: String,
}

/// The fields of a hook's Delete button.
#[derive(Deserialize)]
pub struct HookDeleteForm {
    name: String,
}

/// The deploy hooks page of `worker`.
async fn hooks_page(
    app: &AppState,
    access: &AccountAccess,
    worker: &WorkerId,
    created: Option<CreatedHook>,
    form: Option<(&HookForm, String)>,
) -> PageResult<HooksPage> {
    let account = &access.account;
    let now = Timestamp::now();
    let hooks = app
        .store
        .list_deploy_hooks(account, worker)
        .await?
        .into_iter()
        .map(|h| HookRow {
            last_triggered: h.latest_build.map(|b| {
                format!(
                    "{} ({})",
                    view::when(b.created_on),
                    view::age(b.created_on, now)
                )
            }),
            name: h.hook.deploy_hook_name,
            branch: h.hook.branch,
            created: view::when(h.hook.created_on),
        })
        .collect();
    let has_trigger = !app.store.list_triggers(account, worker).await?.is_empty();
    let layout = Layout::new(
        app,
        &access.viewer,
        format!("Deploy hooks of {worker}"),
        Some(account),
    )
    .await?;
    let (form_name, form_branch, error) = match form {
        Some((f, error)) => (f.name.clone(), f.branch.clone(), Some(error)),
        None => (String::new(), String::new(), None),
    };
    Ok(HooksPage {
        layout,
        account: account.clone(),
        worker: worker.as_str().to_owned(),
        base: worker_path(account, worker),
        can_write: access.can_write,
        has_trigger,
        hooks,
        created,
        form_name,
        form_branch,
        error,
        js: assets::settings_js_url(),
    })
}

/// `GET /accounts/{account_id}/workers/{worker}/deploy-hooks`: the Worker's hooks (name, branch,
/// when last triggered) and, for a token that may write, the form to create one and a Delete
/// button per hook.
pub async fn show_hooks(
    State(app): State<AppState>,
    access: AccountAccess,
    PagePath((_, raw_worker)): PagePath<(String, String)>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let page = hooks_page(&app, &access, &worker, None, None).await?;
    Ok(view::page(&access.viewer, &page))
}

/// `scheme://host` of the server as the browser reached it (`https` when the request came over
/// it, as a TLS proxy in front says with `X-Forwarded-Proto`).
fn origin_of(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// The URL that triggers hook `id` (`triggerDeployHook`, no credentials: the id is the secret).
fn hook_url(origin: &str, id: DeployHookId) -> String {
    format!(
        "{origin}{}/workers/builds/deploy_hooks/{id}",
        crate::api::BASE
    )
}

/// `POST /accounts/{account_id}/workers/{worker}/deploy-hooks`: as `createDeployHook`; the answer
/// is the hooks page showing the new hook's URL, this once.
pub async fn create_hook(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_worker)): PagePath<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<HookForm>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let request = deploy_hooks::DeployHookRequest {
        deploy_hook_name: form.name.clone(),
        branch: form.branch.clone(),
    };
    match deploy_hooks::create(&app, &access.account, &worker, &request).await {
        Ok(hook) => {
            let created = CreatedHook {
                url: hook_url(&origin_of(&headers), hook.deploy_hook_uuid),
                name: hook.deploy_hook_name,
                branch: hook.branch,
            };
            let page = hooks_page(&app, &access, &worker, Some(created), None).await?;
            Ok(respond(&access.viewer, StatusCode::CREATED, &page))
        }
        // The API's 404 here: the Worker has no trigger to build with.
        Err(ApiError::NotFound) => {
            let message =
                "This Worker has no trigger: a deploy hook builds with one, add a trigger first."
                    .to_owned();
            let page = hooks_page(&app, &access, &worker, None, Some((&form, message))).await?;
            Ok(respond(&access.viewer, StatusCode::NOT_FOUND, &page))
        }
        Err(e) => {
            let (status, message) = form_problem(e)?;
            let page = hooks_page(&app, &access, &worker, None, Some((&form, message))).await?;
            Ok(respond(&access.viewer, status, &page))
        }
    }
}

/// `POST /accounts/{account_id}/workers/{worker}/deploy-hooks/delete` (`name=`): as
/// `deleteDeployHook` for the Worker's hook of that name (names are unique in a Worker); its URL
/// stops working at once.
pub async fn delete_hook(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_worker)): PagePath<(String, String)>,
    Form(form): Form<HookDeleteForm>,
) -> PageResult {
    let worker = worker_id(&raw_worker)?;
    let account = &access.account;
    let hook = app
        .store
        .list_deploy_hooks(account, &worker)
        .await?
        .into_iter()
        .find(|h| h.hook.deploy_hook_name == form.name)
        .ok_or(ApiError::NotFound)?;
    let deleted = deploy_hooks::delete(&app, account, &worker, hook.hook.deploy_hook_uuid).await?;
    Ok(redirect_with_flash(
        &format!("{}/deploy-hooks", worker_path(account, &worker)),
        &format!(
            "Deploy hook “{}” deleted: its URL no longer builds",
            deleted.deploy_hook_name
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// Event subscriptions

/// A subscription as the pages show it.
struct SubscriptionRow {
    sub: EventSubscription,
    workers: String,
    events: String,
    created: String,
}

impl SubscriptionRow {
    fn of(sub: EventSubscription) -> SubscriptionRow {
        SubscriptionRow {
            workers: if sub.worker_names.is_empty() {
                "every Worker".to_owned()
            } else {
                sub.worker_names
                    .iter()
                    .map(WorkerId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            events: if sub.event_types.is_empty() {
                "every event".to_owned()
            } else {
                sub.event_types
                    .iter()
                    .map(|t| event_label(*t))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            created: view::when(sub.created_on),
            sub,
        }
    }
}

/// The short name of an event type (`started`, `succeeded`, `failed`, `canceled`).
fn event_label(t: EventType) -> &'static str {
    t.as_str().rsplit('.').next().unwrap_or(t.as_str())
}

/// An event type's checkbox of the subscription form.
struct EventChoice {
    value: &'static str,
    label: &'static str,
    checked: bool,
}

/// A subscription just created: its signing secret, shown this once.
struct CreatedSubscriptionView {
    id: SubscriptionId,
    name: String,
    secret: String,
}

/// The values of the subscription form, read from its fields (`event_types` repeats).
#[derive(Default)]
struct SubscriptionForm {
    name: String,
    url: String,
    workers: String,
    event_types: Vec<String>,
    enabled: bool,
}

impl SubscriptionForm {
    fn read(pairs: Vec<(String, String)>) -> SubscriptionForm {
        let mut form = SubscriptionForm::default();
        for (k, v) in pairs {
            match k.as_str() {
                "name" => form.name = v,
                "url" => form.url = v,
                "worker_names" => form.workers = v,
                "event_types" => form.event_types.push(v),
                "enabled" => form.enabled = true,
                _ => {}
            }
        }
        form
    }

    fn request(&self) -> subscriptions::CreateSubscriptionRequest {
        subscriptions::CreateSubscriptionRequest {
            name: self.name.clone(),
            url: self.url.clone(),
            secret: None,
            worker_names: Some(entries(&self.workers, true)),
            event_types: Some(self.event_types.clone()),
            enabled: Some(self.enabled),
        }
    }
}

#[derive(askama::Template)]
#[template(path = "settings_subscriptions.html")]
struct SubscriptionsPage {
    layout: Layout,
    account: AccountId,
    can_write: bool,
    subs: Vec<SubscriptionRow>,
    total: i64,
    pager: Pager,
    created: Option<CreatedSubscriptionView>,
    form: SubscriptionForm,
    events: Vec<EventChoice>,
    error: Option<String>,
    js: &'static str,
}

/// The subscriptions page (page `page`), its form showing `form` and `error` after a refusal.
async fn subscriptions_page(
    app: &AppState,
    access: &AccountAccess,
    page: u32,
    created: Option<CreatedSubscriptionView>,
    form: Option<(SubscriptionForm, String)>,
) -> PageResult<SubscriptionsPage> {
    let account = &access.account;
    let (subs, total) = app
        .store
        .list_subscriptions(account, page, SUBSCRIPTIONS_PER_PAGE)
        .await?;
    let pager = Pager::new(page, SUBSCRIPTIONS_PER_PAGE, subs.len(), total);
    let layout = Layout::new(app, &access.viewer, "Event subscriptions", Some(account)).await?;
    let (form, error) = match form {
        Some((form, error)) => (form, Some(error)),
        None => (
            SubscriptionForm {
                enabled: true,
                ..SubscriptionForm::default()
            },
            None,
        ),
    };
    let events = EventType::ALL
        .iter()
        .map(|t| EventChoice {
            value: t.as_str(),
            label: event_label(*t),
            checked: form.event_types.iter().any(|v| v == t.as_str()),
        })
        .collect();
    Ok(SubscriptionsPage {
        layout,
        account: account.clone(),
        can_write: access.can_write,
        subs: subs.into_iter().map(SubscriptionRow::of).collect(),
        total,
        pager,
        created,
        form,
        events,
        error,
        js: assets::settings_js_url(),
    })
}

/// `GET /accounts/{account_id}/subscriptions?page=`: the account's event subscriptions and, for a
/// token that may write, the form to create one and Enable/Disable and Delete buttons.
pub async fn show_subscriptions(
    State(app): State<AppState>,
    access: AccountAccess,
    PageQuery(query): PageQuery<PageNumber>,
) -> PageResult {
    let page = query.page.unwrap_or(1).max(1);
    let tpl = subscriptions_page(&app, &access, page, None, None).await?;
    Ok(view::page(&access.viewer, &tpl))
}

/// `POST /accounts/{account_id}/subscriptions`: as `createEventSubscription` (with a generated
/// secret); the answer is the subscriptions page showing the secret, this once.
pub async fn create_subscription(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let form = SubscriptionForm::read(pairs);
    match subscriptions::create(&app, &access.account, form.request()).await {
        Ok(created) => {
            let shown = CreatedSubscriptionView {
                id: created.subscription.id,
                name: created.subscription.name,
                secret: created.secret,
            };
            let page = subscriptions_page(&app, &access, 1, Some(shown), None).await?;
            Ok(respond(&access.viewer, StatusCode::CREATED, &page))
        }
        Err(e) => {
            let (status, message) = form_problem(e)?;
            let page = subscriptions_page(&app, &access, 1, None, Some((form, message))).await?;
            Ok(respond(&access.viewer, status, &page))
        }
    }
}

/// A delivery as a subscription's page shows it.
struct DeliveryRow {
    d: Delivery,
    event: &'static str,
    class: &'static str,
    created: String,
    last_attempt: Option<String>,
    next_attempt: Option<String>,
    finished: Option<String>,
}

impl DeliveryRow {
    fn of(d: Delivery) -> DeliveryRow {
        DeliveryRow {
            event: event_label(d.event_type),
            class: match d.status {
                DeliveryStatus::Delivered => "ok",
                DeliveryStatus::Failed => "bad",
                DeliveryStatus::Pending => "wait",
            },
            created: view::when(d.created_on),
            last_attempt: d.last_attempt_on.map(view::when),
            next_attempt: d.next_attempt_on.map(view::when),
            finished: d.finished_on.map(view::when),
            d,
        }
    }
}

#[derive(askama::Template)]
#[template(path = "settings_subscription.html")]
struct SubscriptionPage {
    layout: Layout,
    account: AccountId,
    can_write: bool,
    row: SubscriptionRow,
    modified: String,
    deliveries: Vec<DeliveryRow>,
    total: i64,
    pager: Pager,
}

/// The subscription of the path in the account (404 otherwise).
async fn subscription(
    app: &AppState,
    account: &AccountId,
    raw: &str,
) -> PageResult<EventSubscription> {
    let id = SubscriptionId::parse("event_subscription_id", raw)?;
    Ok(app
        .store
        .get_subscription(account, id)
        .await?
        .ok_or(ApiError::NotFound)?)
}

/// `GET /accounts/{account_id}/subscriptions/{subscription}?page=`: a subscription and its
/// deliveries, newest first (status, response code, attempts, times, last error), each with a
/// Redeliver button for a token that may write.
pub async fn show_subscription(
    State(app): State<AppState>,
    access: AccountAccess,
    PagePath((_, raw)): PagePath<(String, String)>,
    PageQuery(query): PageQuery<PageNumber>,
) -> PageResult {
    let account = &access.account;
    let sub = subscription(&app, account, &raw).await?;
    let page = query.page.unwrap_or(1).max(1);
    let (deliveries, total) = app
        .store
        .list_deliveries(account, sub.id, page, DELIVERIES_PER_PAGE)
        .await?
        .ok_or(ApiError::NotFound)?;
    let pager = Pager::new(page, DELIVERIES_PER_PAGE, deliveries.len(), total);
    let layout = Layout::new(
        &app,
        &access.viewer,
        format!("Subscription {}", sub.name),
        Some(account),
    )
    .await?;
    let tpl = SubscriptionPage {
        layout,
        account: account.clone(),
        can_write: access.can_write,
        modified: view::when(sub.modified_on),
        row: SubscriptionRow::of(sub),
        deliveries: deliveries.into_iter().map(DeliveryRow::of).collect(),
        total,
        pager,
    };
    Ok(view::page(&access.viewer, &tpl))
}

/// The fields of the Enable/Disable button.
#[derive(Deserialize)]
pub struct EnabledForm {
    /// `true` or `false`.
    enabled: bool,
    /// `list` to come back to the list rather than to the subscription's page.
    #[serde(default)]
    from: Option<String>,
}

/// `POST /accounts/{account_id}/subscriptions/{subscription}/enabled` (`enabled=true|false`): as
/// `updateEventSubscription` with `enabled` (a disabled subscription gets no new events and its
/// pending deliveries wait).
pub async fn set_subscription_enabled(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw)): PagePath<(String, String)>,
    Form(form): Form<EnabledForm>,
) -> PageResult {
    let account = &access.account;
    let id = SubscriptionId::parse("event_subscription_id", &raw)?;
    let patch = subscriptions::UpdateSubscriptionRequest {
        name: None,
        url: None,
        secret: None,
        worker_names: None,
        event_types: None,
        enabled: Some(form.enabled),
    };
    let sub = subscriptions::update(&app, account, id, patch).await?;
    let back = match form.from.as_deref() {
        Some("list") => subscriptions_path(account),
        _ => subscription_path(account, id),
    };
    Ok(redirect_with_flash(
        &back,
        &format!(
            "Subscription “{}” {}",
            sub.name,
            if sub.enabled { "enabled" } else { "disabled" }
        ),
    ))
}

/// `POST /accounts/{account_id}/subscriptions/{subscription}/delete`: as
/// `deleteEventSubscription` (its deliveries go with it).
pub async fn delete_subscription(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw)): PagePath<(String, String)>,
    Form(_): Form<EmptyForm>,
) -> PageResult {
    let account = &access.account;
    let sub = subscription(&app, account, &raw).await?;
    subscriptions::delete(&app, account, sub.id).await?;
    Ok(redirect_with_flash(
        &subscriptions_path(account),
        &format!("Subscription “{}” deleted", sub.name),
    ))
}

/// `POST /accounts/{account_id}/subscriptions/{subscription}/deliveries/{delivery}/redeliver`: as
/// `redeliver` (pending again, sent at once, retried for a new window).
pub async fn redeliver(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw, raw_delivery)): PagePath<(String, String, String)>,
    Form(_): Form<EmptyForm>,
) -> PageResult {
    let account = &access.account;
    let id = SubscriptionId::parse("event_subscription_id", &raw)?;
    let delivery = DeliveryId::parse("delivery_id", &raw_delivery)?;
    subscriptions::redeliver_one(&app, account, id, delivery).await?;
    Ok(redirect_with_flash(
        &subscription_path(account, id),
        "Delivery queued again: it is sent at once",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_fields_are_read_one_entry_per_line() {
        assert_eq!(
            entries(" main \r\n\r\nrelease/*\n  ", false),
            vec!["main", "release/*"]
        );
        assert_eq!(entries("a, b\nc", true), vec!["a", "b", "c"]);
        assert_eq!(entries("a, b", false), vec!["a, b"]);
        assert!(entries("\n \n", false).is_empty());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("site"), "site");
        assert_eq!(segment("a b<c>?#%"), "a%20b%3Cc%3E%3F%23%25");
        assert_eq!(segment("my-worker_1.x~"), "my-worker_1.x~");
    }

    #[test]
    fn hook_urls_are_under_the_origin_the_browser_used() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "kiln.example.com:8080".parse().expect("host"));
        assert_eq!(origin_of(&h), "http://kiln.example.com:8080");
        h.insert("x-forwarded-proto", "https".parse().expect("proto"));
        assert_eq!(origin_of(&h), "https://kiln.example.com:8080");
        let id = DeployHookId::parse("id", "6f1b7a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b").expect("id");
        assert_eq!(
            hook_url("https://k", id),
            "https://k/client/v4/workers/builds/deploy_hooks/6f1b7a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
        );
    }

    #[test]
    fn event_types_have_short_labels() {
        let labels: Vec<_> = EventType::ALL.iter().map(|t| event_label(*t)).collect();
        assert_eq!(labels, ["started", "succeeded", "failed", "canceled"]);
    }
}
