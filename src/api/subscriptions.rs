//! Event subscriptions: create, list (paged), get, update, delete; a subscription's deliveries (paged)
//! and redelivering one. Kiln's own resource: the hosted product sends these events to Queues, set up
//! through Queues event subscriptions; Kiln POSTs them, signed, to an HTTP endpoint.

use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult, Success, ok, ok_empty};
use super::extract::{Account, ApiJson, NoBody, PathParams, QueryParams};
use super::schema;
use crate::domain::{
    AccountId, CreatedSubscription, Delivery, DeliveryId, EventSubscription, EventType, Invalid,
    MAX_NAME_LEN, MAX_SUBSCRIPTION_WORKERS, MAX_SUBSCRIPTIONS_PER_ACCOUNT, MAX_URL_LEN,
    SubscriptionId, Timestamp, WebhookSecret, WorkerId, bounded_text, destination_url,
    truncate_for_message,
};
use crate::store::{NewSubscription, SubscriptionPatch, SubscriptionWriteError};

/// Body of `createEventSubscription`.
#[derive(Deserialize, JsonSchema)]
pub struct CreateSubscriptionRequest {
    #[schemars(with = "schema::Name")]
    pub name: String,
    /// Where events are POSTed: an absolute `http` or `https` URL.
    #[schemars(with = "schema::WebhookUrl")]
    pub url: String,
    /// Default: a new random secret, shown once in the answer.
    #[schemars(with = "Option<schema::WebhookSecret>")]
    pub secret: Option<String>,
    /// Default: `[]`, every Worker.
    #[schemars(with = "Option<schema::WorkerNames>")]
    pub worker_names: Option<Vec<String>>,
    /// Default: `[]`, every event type.
    #[schemars(with = "Option<Vec<EventType>>")]
    pub event_types: Option<Vec<String>>,
    /// Default: `true`.
    pub enabled: Option<bool>,
}

/// Body of `updateEventSubscription`: every field optional; absent fields stay as they are.
#[derive(Deserialize, JsonSchema)]
pub struct UpdateSubscriptionRequest {
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[schemars(with = "Option<schema::WebhookUrl>")]
    pub url: Option<String>,
    /// A new signing secret (it is not shown back).
    #[schemars(with = "Option<schema::WebhookSecret>")]
    pub secret: Option<String>,
    /// `[]`: every Worker.
    #[schemars(with = "Option<schema::WorkerNames>")]
    pub worker_names: Option<Vec<String>>,
    /// `[]`: every event type.
    #[schemars(with = "Option<Vec<EventType>>")]
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

// No Debug derive: the secret must not reach a log through `{:?}`.
impl std::fmt::Debug for CreateSubscriptionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSubscriptionRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UpdateSubscriptionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateSubscriptionRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn name(v: &str) -> Result<String, Invalid> {
    bounded_text("name", v, 1, MAX_NAME_LEN)
}

fn secret(v: &str) -> Result<WebhookSecret, Invalid> {
    WebhookSecret::parse("secret", v)
}

/// Worker names, each a [`WorkerId`], at most [`MAX_SUBSCRIPTION_WORKERS`]; duplicates are dropped.
fn worker_names(v: &[String]) -> Result<Vec<WorkerId>, Invalid> {
    if v.len() > MAX_SUBSCRIPTION_WORKERS {
        return Err(Invalid::field(
            "worker_names",
            format!("must have at most {MAX_SUBSCRIPTION_WORKERS} entries"),
        ));
    }
    let mut names = v
        .iter()
        .map(|w| WorkerId::parse("worker_names", w))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    names.dedup();
    Ok(names)
}

/// Event types (each one of [`EventType::ALL`]), in declaration order without duplicates.
fn event_types(v: &[String]) -> Result<Vec<EventType>, Invalid> {
    let given = v
        .iter()
        .map(|t| {
            EventType::parse(t).ok_or_else(|| {
                Invalid::field(
                    "event_types",
                    format!(
                        "unknown event type {:?}; expected one of {}",
                        truncate_for_message(t),
                        EventType::ALL
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EventType::ALL
        .iter()
        .copied()
        .filter(|t| given.contains(t))
        .collect())
}

impl CreateSubscriptionRequest {
    fn validate(self) -> Result<NewSubscription, Invalid> {
        Ok(NewSubscription {
            name: name(&self.name)?,
            url: destination_url("url", &self.url)?,
            secret: match self.secret.as_deref() {
                Some(v) => secret(v)?,
                None => WebhookSecret::generate(),
            },
            worker_names: worker_names(&self.worker_names.unwrap_or_default())?,
            event_types: event_types(&self.event_types.unwrap_or_default())?,
            enabled: self.enabled.unwrap_or(true),
        })
    }
}

impl UpdateSubscriptionRequest {
    fn validate(self) -> Result<SubscriptionPatch, Invalid> {
        Ok(SubscriptionPatch {
            name: self.name.as_deref().map(name).transpose()?,
            url: self
                .url
                .as_deref()
                .map(|v| destination_url("url", v))
                .transpose()?,
            secret: self.secret.as_deref().map(secret).transpose()?,
            worker_names: self.worker_names.as_deref().map(worker_names).transpose()?,
            event_types: self.event_types.as_deref().map(event_types).transpose()?,
            enabled: self.enabled,
        })
    }
}

/// Largest JSON of one subscription in a list, in bytes: its bounded fields at their longest, every
/// character of them as long as JSON makes it (a page of subscriptions is sized by this).
pub const MAX_SUBSCRIPTION_JSON_BYTES: u64 = (1024
    + MAX_URL_LEN
    + 6 * MAX_NAME_LEN
    + MAX_SUBSCRIPTION_WORKERS * (6 * crate::domain::MAX_WORKER_ID_LEN + 3))
    as u64;

fn subscription_id(path: &PathParams) -> Result<SubscriptionId, ApiError> {
    Ok(SubscriptionId::parse(
        "event_subscription_id",
        path.get("event_subscription_id")?,
    )?)
}

/// `POST /accounts/{account_id}/builds/event_subscriptions` — the answer carries the secret, once.
pub async fn create_subscription(
    State(app): State<AppState>,
    Account(account): Account,
    ApiJson(body): ApiJson<CreateSubscriptionRequest>,
) -> ApiResult<CreatedSubscription> {
    ok(create(&app, &account, body).await?)
}

/// What `createEventSubscription` does (the dashboard's subscription form does the same):
/// validates `body` (400) and adds the subscription to `account` (409 past the account's limit);
/// the answer carries the signing secret, to be shown this once.
pub(crate) async fn create(
    app: &AppState,
    account: &AccountId,
    body: CreateSubscriptionRequest,
) -> Result<CreatedSubscription, ApiError> {
    let new = body.validate()?;
    match app.store.insert_subscription(account, &new).await? {
        Ok(subscription) => Ok(CreatedSubscription {
            subscription,
            secret: new.secret.expose().to_owned(),
        }),
        Err(SubscriptionWriteError::TooMany) => Err(ApiError::Conflict(format!(
            "an account can have at most {MAX_SUBSCRIPTIONS_PER_ACCOUNT} event subscriptions"
        ))),
    }
}

/// `GET /accounts/{account_id}/builds/event_subscriptions`
pub async fn list_subscriptions(
    State(app): State<AppState>,
    Account(account): Account,
    query: QueryParams,
) -> ApiResult<Vec<EventSubscription>> {
    let paging = query.paging()?.fit(MAX_SUBSCRIPTION_JSON_BYTES);
    let (subs, total) = app
        .store
        .list_subscriptions(&account, paging.page, paging.per_page)
        .await?;
    let info = paging.info(subs.len(), total);
    Ok(Success(subs, Some(info)))
}

/// `GET /accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}`
pub async fn get_subscription(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<EventSubscription> {
    let id = subscription_id(&path)?;
    app.store
        .get_subscription(&account, id)
        .await?
        .map_or(Err(ApiError::NotFound), ok)
}

/// `PATCH /accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}`
pub async fn update_subscription(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    ApiJson(body): ApiJson<UpdateSubscriptionRequest>,
) -> ApiResult<EventSubscription> {
    let id = subscription_id(&path)?;
    ok(update(&app, &account, id, body).await?)
}

/// What `updateEventSubscription` does (the dashboard's Enable and Disable buttons do the same):
/// validates `body` (400) and applies it to subscription `id` of `account` (404 when there is none).
pub(crate) async fn update(
    app: &AppState,
    account: &AccountId,
    id: SubscriptionId,
    body: UpdateSubscriptionRequest,
) -> Result<EventSubscription, ApiError> {
    let patch = body.validate()?;
    let updated = app.store.update_subscription(account, id, &patch).await?;
    // Enabling a subscription makes its waiting deliveries due.
    app.notifier.wake();
    updated.ok_or(ApiError::NotFound)
}

/// `DELETE /accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}` — its
/// deliveries go with it.
pub async fn delete_subscription(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<()> {
    delete(&app, &account, subscription_id(&path)?).await?;
    ok_empty()
}

/// What `deleteEventSubscription` does (the dashboard's Delete button does the same): deletes
/// subscription `id` of `account` and its deliveries; 404 when there is none.
pub(crate) async fn delete(
    app: &AppState,
    account: &AccountId,
    id: SubscriptionId,
) -> Result<(), ApiError> {
    if app.store.delete_subscription(account, id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

/// `GET /accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}/deliveries` —
/// newest first.
pub async fn list_deliveries(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Vec<Delivery>> {
    let id = subscription_id(&path)?;
    let paging = query.paging()?;
    let (deliveries, total) = app
        .store
        .list_deliveries(&account, id, paging.page, paging.per_page)
        .await?
        .ok_or(ApiError::NotFound)?;
    let info = paging.info(deliveries.len(), total);
    Ok(Success(deliveries, Some(info)))
}

/// `POST /accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}/deliveries/{delivery_id}/redeliver`
/// — the delivery is pending again, sent at once (same body and `webhook-id`, a new signature) and
/// retried for a new window.
pub async fn redeliver(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    _: NoBody,
) -> ApiResult<Delivery> {
    let id = subscription_id(&path)?;
    let delivery = DeliveryId::parse("delivery_id", path.get("delivery_id")?)?;
    ok(redeliver_one(&app, &account, id, delivery).await?)
}

/// What `redeliver` does (the dashboard's Redeliver button does the same): makes `delivery` of
/// subscription `id` of `account` pending again and wakes the dispatcher; 404 when there is no
/// such subscription or delivery.
pub(crate) async fn redeliver_one(
    app: &AppState,
    account: &AccountId,
    id: SubscriptionId,
    delivery: DeliveryId,
) -> Result<Delivery, ApiError> {
    let now = Timestamp::now();
    let until = app.notifier.retry_until(now);
    let shown = app
        .store
        .redeliver(account, id, delivery, now, until)
        .await?
        .ok_or(ApiError::NotFound)?;
    app.notifier.wake();
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::{MAX_PAGE_BYTES, MAX_PER_PAGE};
    use crate::domain::{AccountId, DeliveryStatus, MAX_WORKER_ID_LEN};

    #[test]
    fn pages_stay_bounded() {
        let now = Timestamp::now();
        // Every character as long as JSON can make it: `"` escapes to two bytes, U+1F680 is four.
        let widest = |n: usize| "\u{1F680}".repeat(n);
        let sub = EventSubscription {
            id: SubscriptionId::new(),
            name: widest(MAX_NAME_LEN),
            url: format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20)),
            worker_names: (0..MAX_SUBSCRIPTION_WORKERS)
                .map(|i| {
                    WorkerId::parse("w", &format!("{i:03}{}", widest(MAX_WORKER_ID_LEN - 3)))
                        .expect("worker")
                })
                .collect(),
            event_types: EventType::ALL.to_vec(),
            enabled: true,
            created_on: now,
            modified_on: now,
            account_id: AccountId::parse("a").expect("account"),
        };
        let quoted = EventSubscription {
            name: "\"".repeat(MAX_NAME_LEN),
            ..sub.clone()
        };
        for s in [&sub, &quoted] {
            let n = serde_json::to_vec(s).expect("json").len() as u64;
            assert!(n <= MAX_SUBSCRIPTION_JSON_BYTES, "{n}");
        }
        let delivery = Delivery {
            id: DeliveryId::new(),
            event_type: EventType::Canceled,
            build_uuid: crate::domain::BuildId::new(),
            status: DeliveryStatus::Pending,
            attempts: i64::MAX,
            response_code: Some(i64::MAX),
            // The longest of the fixed texts `crate::notify` records.
            last_error: Some("x".repeat(64)),
            created_on: now,
            last_attempt_on: Some(now),
            next_attempt_on: Some(now),
            finished_on: Some(now),
        };
        let page = vec![delivery; MAX_PER_PAGE as usize];
        assert!(serde_json::to_vec(&page).expect("json").len() < MAX_PAGE_BYTES);
    }
}
