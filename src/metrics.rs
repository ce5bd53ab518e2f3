//! Prometheus metrics of one Kiln node, served by `GET /metrics` ([`crate::api`]).
//!
//! Two kinds: what the store holds (builds by status and outcome, the queue), read from the store when
//! scraped; and what happened on this node since it started (HTTP requests, builds claimed and
//! finished here, log lines, webhook deliveries, store transactions), counted as it happens. Names
//! follow Prometheus's conventions: a `kiln_` prefix, base units (`_seconds`, `_bytes`), `_total` on
//! counters. Label values come from closed sets (route templates, never raw paths), so the number of
//! series is bounded.

use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::{Method, StatusCode};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::{BuildOutcome, BuildStatus, Timestamp};
use crate::store::Store;

/// The `Content-Type` of [`Metrics::render`]: Prometheus's text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest the store's part of a scrape may take; past it the store gauges are left out of that
/// scrape (and `kiln_metrics_store_errors_total` counts it).
pub const STORE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Scrapes within this time of the last store read reuse its figures: whatever the number of
/// scrapers, the store is read at most once per interval, and one read at a time.
pub const STORE_READ_INTERVAL: Duration = Duration::from_secs(1);

/// The `route` label of a request that matched no route (its raw path is never a label).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// HTTP request latency buckets, in seconds (Prometheus's defaults).
const HTTP_BUCKETS: &[f64] = prometheus::DEFAULT_BUCKETS;
/// Store lock wait and transaction buckets, in seconds: 100 µs to 10 s.
pub(crate) const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Build duration buckets, in seconds: 1 s to 2 h (the default timeout is 20 min).
const BUILD_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0,
];
/// Queue-to-start latency buckets, in seconds: 10 ms to 1 h.
const START_LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// What became of a `POST /webhooks/github` delivery (the `result` label of
/// `kiln_webhook_deliveries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// Signed, new, and handled (whether or not it queued builds).
    Accepted,
    /// Signed, but a redelivery of one handled before: nothing new.
    Duplicate,
    /// Refused before its payload was read: no signature, a wrong one, or webhooks not configured.
    Unauthenticated,
    /// Signed, but its headers or payload could not be read (400).
    Invalid,
    /// Kiln could not handle it (its store failed): GitHub may redeliver it.
    Failed,
}

impl WebhookResult {
    const ALL: &[WebhookResult] = &[
        WebhookResult::Accepted,
        WebhookResult::Duplicate,
        WebhookResult::Unauthenticated,
        WebhookResult::Invalid,
        WebhookResult::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Duplicate => "duplicate",
            WebhookResult::Unauthenticated => "unauthenticated",
            WebhookResult::Invalid => "invalid",
            WebhookResult::Failed => "failed",
        }
    }
}

/// How one attempt to deliver an event notification ended (the `result` label of
/// `kiln_notification_deliveries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationResult {
    /// The receiver answered 2xx.
    Delivered,
    /// The attempt failed (another status, a timeout, a connection error) and will be retried.
    Failed,
    /// The attempt failed and was the last one: the delivery is given up.
    Abandoned,
}

impl NotificationResult {
    const ALL: &[NotificationResult] = &[
        NotificationResult::Delivered,
        NotificationResult::Failed,
        NotificationResult::Abandoned,
    ];

    fn as_str(self) -> &'static str {
        match self {
            NotificationResult::Delivered => "delivered",
            NotificationResult::Failed => "failed",
            NotificationResult::Abandoned => "abandoned",
        }
    }
}

/// Counters of the build log sinks on this node ([`crate::logs::LogSink`]); cheap to clone.
#[derive(Debug, Clone)]
pub struct LogMetrics {
    /// Lines builds produced (Kiln's own lines included), before the size cap.
    pub lines_ingested: IntCounter,
    /// Bytes of those lines' text.
    pub bytes_ingested: IntCounter,
    /// Lines written to the store (after the cap; its marker lines included).
    pub lines_stored: IntCounter,
}

/// Every metric of one node, in its own registry.
pub struct Metrics {
    registry: Registry,
    store: Store,
    /// The hash of the token a scrape must present ([`crate::crypto::hash_credential`]); `None`:
    /// scrapes are open.
    scrape_token_hash: Option<String>,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    builds: IntGaugeVec,
    /// Vectors without labels, so that they can be left out of a scrape.
    queue_length: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    store_errors: IntCounter,
    build_duration: HistogramVec,
    start_latency: Histogram,
    runner_slots: IntGauge,
    runner_slots_busy: IntGauge,
    scheduler_up: IntGauge,
    logs: LogMetrics,
    webhook_deliveries: IntCounterVec,
    notification_deliveries: IntCounterVec,
    /// When the store gauges were last read; held while they are read (one reader at a time).
    last_store_read: tokio::sync::Mutex<Option<Instant>>,
}

fn counter(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> anyhow::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> anyhow::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// The metrics of a node with `slots` build slots over `store` (whose own transaction timings
    /// join the registry); scrapes must present `scrape_token` when one is given.
    pub fn new(store: &Store, slots: usize, scrape_token: Option<&str>) -> anyhow::Result<Metrics> {
        let r = Registry::new();
        store
            .timings()
            .register(&r)
            .context("registering the store's metrics")?;
        let http_requests = counter_vec(
            &r,
            "kiln_http_requests_total",
            "HTTP requests answered, by method, route template and status",
            &["method", "route", "status"],
        )?;
        let http_duration = histogram_vec(
            &r,
            "kiln_http_request_duration_seconds",
            "Time from a request's arrival at the router to its response head, by method, route \
             template and status",
            HTTP_BUCKETS,
            &["method", "route", "status"],
        )?;
        let builds = IntGaugeVec::new(
            Opts::new(
                "kiln_builds",
                "Builds in the store by status and outcome (outcome empty until stopped); read from \
                 the store when scraped",
            ),
            &["status", "outcome"],
        )?;
        r.register(Box::new(builds.clone()))?;
        let queue_length = IntGaugeVec::new(
            Opts::new(
                "kiln_build_queue_length",
                "Builds waiting to start (status queued); read from the store when scraped",
            ),
            &[],
        )?;
        r.register(Box::new(queue_length.clone()))?;
        let queue_oldest_age = GaugeVec::new(
            Opts::new(
                "kiln_build_queue_oldest_age_seconds",
                "Age of the oldest queued build (0 when none waits); read from the store when \
                 scraped",
            ),
            &[],
        )?;
        r.register(Box::new(queue_oldest_age.clone()))?;
        let store_errors = counter(
            &r,
            "kiln_metrics_store_errors_total",
            "Scrapes whose store reading failed or took too long (their store gauges are left out)",
        )?;
        let build_duration = histogram_vec(
            &r,
            "kiln_build_duration_seconds",
            "Time from claiming a build on this node to recording its outcome, by outcome",
            BUILD_DURATION_BUCKETS,
            &["outcome"],
        )?;
        for outcome in BuildOutcome::ALL {
            build_duration.with_label_values(&[outcome.as_str()]);
        }
        let start_latency = Histogram::with_opts(
            HistogramOpts::new(
                "kiln_build_start_latency_seconds",
                "Time from a build's queueing to its claim by this node (queued to initializing)",
            )
            .buckets(START_LATENCY_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(start_latency.clone()))?;
        let runner_slots = gauge(&r, "kiln_runner_slots", "Build slots of this node")?;
        runner_slots.set(i64::try_from(slots).unwrap_or(i64::MAX));
        let runner_slots_busy = gauge(
            &r,
            "kiln_runner_slots_busy",
            "Build slots of this node running a build now",
        )?;
        let scheduler_up = gauge(
            &r,
            "kiln_scheduler_up",
            "1 while this node's build scheduler runs (0 on a node without build slots)",
        )?;
        let logs = LogMetrics {
            lines_ingested: counter(
                &r,
                "kiln_log_lines_ingested_total",
                "Build log lines received on this node (output and Kiln's own lines), before the \
                 size cap",
            )?,
            bytes_ingested: counter(
                &r,
                "kiln_log_bytes_ingested_total",
                "Bytes of the build log lines received on this node",
            )?,
            lines_stored: counter(
                &r,
                "kiln_log_lines_stored_total",
                "Build log lines written to the store from this node (after the size cap)",
            )?,
        };
        let webhook_deliveries = counter_vec(
            &r,
            "kiln_webhook_deliveries_total",
            "GitHub webhook deliveries received, by result",
            &["result"],
        )?;
        for result in WebhookResult::ALL {
            webhook_deliveries.with_label_values(&[result.as_str()]);
        }
        let notification_deliveries = counter_vec(
            &r,
            "kiln_notification_deliveries_total",
            "Attempts to deliver event notifications, by result",
            &["result"],
        )?;
        for result in NotificationResult::ALL {
            notification_deliveries.with_label_values(&[result.as_str()]);
        }
        Ok(Metrics {
            registry: r,
            store: store.clone(),
            scrape_token_hash: scrape_token.map(crate::crypto::hash_credential),
            http_requests,
            http_duration,
            builds,
            queue_length,
            queue_oldest_age,
            store_errors,
            build_duration,
            start_latency,
            runner_slots,
            runner_slots_busy,
            scheduler_up,
            logs,
            webhook_deliveries,
            notification_deliveries,
            last_store_read: tokio::sync::Mutex::new(None),
        })
    }
}

/// Keeps `kiln_scheduler_up` at 1 until dropped (when the scheduler's task ends, or panics).
#[must_use = "the scheduler counts as running only while this is alive"]
pub struct SchedulerUp(IntGauge);

impl Drop for SchedulerUp {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// Counts one build slot busy (`kiln_runner_slots_busy`) until dropped.
#[must_use = "the slot counts as busy only while this is alive"]
pub struct BusySlot(IntGauge);

impl Drop for BusySlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// This node's build slots, as `/readyz` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerSlots {
    /// Build slots configured (`--runners`).
    pub slots: i64,
    /// Slots running a build now.
    pub busy: i64,
    /// Whether the scheduler that fills them runs.
    pub scheduler_running: bool,
}

/// The `method` label: a standard method's name, `OTHER` for any extension method (a client could
/// otherwise make up any number of label values).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Whether a scrape must present a token.
    pub fn needs_token(&self) -> bool {
        self.scrape_token_hash.is_some()
    }

    /// Whether `presented` is the scrape token (compared in constant time, as hashes).
    pub fn token_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.scrape_token_hash.as_ref().is_some_and(|want| {
            bool::from(
                crate::crypto::hash_credential(presented)
                    .as_bytes()
                    .ct_eq(want.as_bytes()),
            )
        })
    }

    /// Counts one answered HTTP request. `route` is the route template it matched (axum's
    /// `MatchedPath`, e.g. `/client/v4/accounts/{account_id}/builds/builds/{build_uuid}`) or
    /// [`UNMATCHED_ROUTE`]; `took` runs from its arrival at the router to its response head.
    pub fn http_request(&self, method: &Method, route: &str, status: StatusCode, took: Duration) {
        let labels = [method_label(method), route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
    }

    /// This node claimed a build queued at `queued_on`: observes its start latency, and counts a
    /// build slot busy until the returned guard is dropped.
    pub fn build_claimed(&self, queued_on: Timestamp) -> BusySlot {
        let waited_ms = Timestamp::now().millis().saturating_sub(queued_on.millis());
        self.start_latency.observe(waited_ms.max(0) as f64 / 1000.0);
        self.runner_slots_busy.inc();
        BusySlot(self.runner_slots_busy.clone())
    }

    /// A build run on this node had its `outcome` recorded `took` after its claim.
    pub fn build_finished(&self, outcome: BuildOutcome, took: Duration) {
        self.build_duration
            .with_label_values(&[outcome.as_str()])
            .observe(took.as_secs_f64());
    }

    /// The counters build log sinks add to.
    pub fn logs(&self) -> LogMetrics {
        self.logs.clone()
    }

    /// Counts one GitHub webhook delivery.
    pub fn webhook_delivery(&self, result: WebhookResult) {
        self.webhook_deliveries
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counts one attempt to deliver an event notification.
    pub fn notification_delivery(&self, result: NotificationResult) {
        self.notification_deliveries
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Marks this node's scheduler running until the returned guard is dropped.
    pub fn scheduler_running(&self) -> SchedulerUp {
        self.scheduler_up.set(1);
        SchedulerUp(self.scheduler_up.clone())
    }

    /// This node's build slots and whether its scheduler runs.
    pub fn runner_slots(&self) -> RunnerSlots {
        RunnerSlots {
            slots: self.runner_slots.get(),
            busy: self.runner_slots_busy.get(),
            scheduler_running: self.scheduler_up.get() == 1,
        }
    }

    /// Every metric in the text exposition format ([`CONTENT_TYPE`]). The store gauges are read
    /// first, at most once per [`STORE_READ_INTERVAL`] and for at most [`STORE_READ_TIMEOUT`]; when
    /// that fails they are left out (the failure is logged and counted) and the rest is served.
    pub async fn render(&self) -> anyhow::Result<String> {
        let mut last_read = self.last_store_read.lock().await;
        if !last_read.is_some_and(|at| at.elapsed() < STORE_READ_INTERVAL) {
            *last_read = None;
            match tokio::time::timeout(STORE_READ_TIMEOUT, self.store.count_builds()).await {
                Ok(Ok(counts)) => {
                    self.set_store_gauges(&counts);
                    *last_read = Some(Instant::now());
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "reading build counts for the metrics failed"
                    );
                    self.clear_store_gauges();
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_seconds = STORE_READ_TIMEOUT.as_secs_f64(),
                        "reading build counts for the metrics took too long"
                    );
                    self.clear_store_gauges();
                }
            }
        }
        // Gathered while the lock is held: no other scrape changes the store gauges meanwhile.
        let families = self.registry.gather();
        drop(last_read);
        TextEncoder::new()
            .encode_to_string(&families)
            .context("encoding the metrics")
    }

    fn set_store_gauges(&self, counts: &[crate::store::BuildCount]) {
        self.builds.reset();
        // Every status and outcome is a series, 0 when no build has it.
        for &status in BuildStatus::ALL {
            if status == BuildStatus::Stopped {
                for outcome in BuildOutcome::ALL {
                    self.builds
                        .with_label_values(&[status.as_str(), outcome.as_str()]);
                }
            } else {
                self.builds.with_label_values(&[status.as_str(), ""]);
            }
        }
        let now = Timestamp::now().millis();
        let mut queued = 0;
        let mut oldest_queued: Option<i64> = None;
        for c in counts {
            let outcome = c.outcome.map_or("", BuildOutcome::as_str);
            self.builds
                .with_label_values(&[c.status.as_str(), outcome])
                .add(c.builds);
            if c.status == BuildStatus::Queued {
                queued += c.builds;
                let oldest = c.oldest.millis();
                oldest_queued = Some(oldest_queued.map_or(oldest, |o| o.min(oldest)));
            }
        }
        self.queue_length.with_label_values::<&str>(&[]).set(queued);
        let age_ms = oldest_queued.map_or(0, |o| now.saturating_sub(o).max(0));
        self.queue_oldest_age
            .with_label_values::<&str>(&[])
            .set(age_ms as f64 / 1000.0);
    }

    /// Leaves the store gauges out of the exposition: stale figures would look current.
    fn clear_store_gauges(&self) {
        self.store_errors.inc();
        self.builds.reset();
        self.queue_length.reset();
        self.queue_oldest_age.reset();
    }
}

#[cfg(test)]
mod tests {
    use prom_text_format_parser::{Scrape, Type, ValueType};

    use super::*;

    async fn sqlite_store(dir: &std::path::Path) -> Store {
        Store::connect(
            &Store::sqlite_url(dir),
            crate::crypto::SecretBox::from_key(&[7; 32]),
        )
        .await
        .expect("open store")
    }

    /// The value of the sample of `name` whose labels include `labels` (for a histogram: its count).
    fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let metric = scrape.metrics.iter().find(|m| m.name == name)?;
        let want = if metric.kind == Type::Histogram {
            ValueType::Count
        } else {
            ValueType::Sample
        };
        metric
            .samples
            .iter()
            .find(|s| {
                s.value.value_type == want
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v))
            })
            .map(|s| s.value.value.as_f64())
    }

    async fn scrape(metrics: &Metrics) -> Scrape {
        let text = metrics.render().await.expect("render");
        Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    #[tokio::test]
    async fn the_exposition_parses_with_histograms_and_route_templates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let metrics = Metrics::new(&store, 2, None).expect("metrics");
        let route = "/client/v4/accounts/{account_id}/builds/builds/{build_uuid}";
        metrics.http_request(
            &Method::GET,
            route,
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        metrics.http_request(
            &Method::from_bytes(b"BREW").expect("method"),
            UNMATCHED_ROUTE,
            StatusCode::METHOD_NOT_ALLOWED,
            Duration::from_millis(1),
        );
        metrics.build_finished(BuildOutcome::Success, Duration::from_secs(42));
        drop(metrics.build_claimed(Timestamp::from_millis(Timestamp::now().millis() - 1500)));
        metrics.webhook_delivery(WebhookResult::Duplicate);
        // One write transaction.
        store
            .set_account_limits(
                &crate::domain::AccountId::parse("a").expect("id"),
                Some(1),
                None,
            )
            .await
            .expect("write");
        let s = scrape(&metrics).await;
        assert_eq!(
            value(
                &s,
                "kiln_http_requests_total",
                &[("method", "GET"), ("route", route), ("status", "404")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                "kiln_http_request_duration_seconds",
                &[("route", route)]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                "kiln_http_requests_total",
                &[("method", "OTHER"), ("route", UNMATCHED_ROUTE)]
            ),
            Some(1.0),
            "extension methods share one label value"
        );
        assert_eq!(
            value(&s, "kiln_build_duration_seconds", &[("outcome", "success")]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "kiln_build_start_latency_seconds", &[]),
            Some(1.0)
        );
        assert_eq!(value(&s, "kiln_runner_slots", &[]), Some(2.0));
        assert_eq!(value(&s, "kiln_runner_slots_busy", &[]), Some(0.0));
        assert_eq!(
            value(
                &s,
                "kiln_webhook_deliveries_total",
                &[("result", "duplicate")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                "kiln_webhook_deliveries_total",
                &[("result", "accepted")]
            ),
            Some(0.0)
        );
        // The store's gauges, every status and outcome present; its own timings.
        assert_eq!(
            value(&s, "kiln_builds", &[("status", "queued"), ("outcome", "")]),
            Some(0.0)
        );
        assert_eq!(
            value(
                &s,
                "kiln_builds",
                &[("status", "stopped"), ("outcome", "skipped")]
            ),
            Some(0.0)
        );
        assert_eq!(value(&s, "kiln_build_queue_length", &[]), Some(0.0));
        assert_eq!(
            value(&s, "kiln_build_queue_oldest_age_seconds", &[]),
            Some(0.0)
        );
        assert!(
            value(
                &s,
                "kiln_store_write_transaction_seconds",
                &[("result", "commit")]
            )
            .is_some()
        );
        assert!(
            value(
                &s,
                "kiln_store_lock_wait_seconds",
                &[("lock", "transaction")]
            )
            .is_some()
        );
        let latency = s
            .metrics
            .iter()
            .find(|m| m.name == "kiln_build_start_latency_seconds")
            .expect("start latency");
        assert_eq!(latency.kind, Type::Histogram);
        let at_most = |le: &str| {
            latency
                .samples
                .iter()
                .find(|s| s.labels.iter().any(|l| l.key == "le" && l.value == le))
                .map(|s| s.value.value.as_f64())
        };
        assert_eq!(
            (at_most("1"), at_most("2.5")),
            (Some(0.0), Some(1.0)),
            "1.5 s waited"
        );
        store.close().await;
    }

    /// What the notifications part registers its deliveries with.
    #[tokio::test]
    async fn notification_deliveries_are_counted_by_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let metrics = Metrics::new(&store, 0, None).expect("metrics");
        let name = "kiln_notification_deliveries_total";
        for result in NotificationResult::ALL {
            assert_eq!(
                value(
                    &scrape(&metrics).await,
                    name,
                    &[("result", result.as_str())]
                ),
                Some(0.0)
            );
        }
        metrics.notification_delivery(NotificationResult::Failed);
        metrics.notification_delivery(NotificationResult::Failed);
        metrics.notification_delivery(NotificationResult::Delivered);
        let s = scrape(&metrics).await;
        assert_eq!(value(&s, name, &[("result", "failed")]), Some(2.0));
        assert_eq!(value(&s, name, &[("result", "delivered")]), Some(1.0));
        assert_eq!(value(&s, name, &[("result", "abandoned")]), Some(0.0));
        store.close().await;
    }

    #[tokio::test]
    async fn store_gauges_are_left_out_when_the_store_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let metrics = Metrics::new(&store, 1, None).expect("metrics");
        assert!(value(&scrape(&metrics).await, "kiln_build_queue_length", &[]).is_some());
        store.close().await;
        // Past the interval in which the last reading is reused.
        tokio::time::sleep(STORE_READ_INTERVAL).await;
        let s = scrape(&metrics).await;
        for gone in [
            "kiln_builds",
            "kiln_build_queue_length",
            "kiln_build_queue_oldest_age_seconds",
        ] {
            assert_eq!(value(&s, gone, &[]), None, "{gone}");
        }
        assert_eq!(value(&s, "kiln_metrics_store_errors_total", &[]), Some(1.0));
        assert_eq!(
            value(&s, "kiln_runner_slots", &[]),
            Some(1.0),
            "the rest is served"
        );
    }

    #[tokio::test]
    async fn slots_count_busy_and_the_scheduler_up_while_their_guards_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let metrics = Metrics::new(&store, 3, None).expect("metrics");
        let slots = |busy, scheduler_running| RunnerSlots {
            slots: 3,
            busy,
            scheduler_running,
        };
        assert_eq!(metrics.runner_slots(), slots(0, false));
        let up = metrics.scheduler_running();
        let (a, b) = (
            metrics.build_claimed(Timestamp::now()),
            metrics.build_claimed(Timestamp::now()),
        );
        assert_eq!(metrics.runner_slots(), slots(2, true));
        drop(a);
        assert_eq!(metrics.runner_slots(), slots(1, true));
        // A task that ends (or panics) drops its guard.
        let task = tokio::spawn(async move {
            let _up = up;
            let _b = b;
            panic!("the scheduler panicked");
        });
        assert!(task.await.is_err());
        assert_eq!(metrics.runner_slots(), slots(0, false));
        store.close().await;
    }

    #[tokio::test]
    async fn the_scrape_token_is_compared_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let open = Metrics::new(&store, 0, None).expect("metrics");
        assert!(!open.needs_token());
        assert!(
            !open.token_matches(""),
            "no token matches an open endpoint's"
        );
        let token = "metrics-5f1d0c3b9a7e4f2d8c6b0a1e3f5d7c9b";
        let closed = Metrics::new(&store, 0, Some(token)).expect("metrics");
        assert!(closed.needs_token());
        assert!(closed.token_matches(token));
        for wrong in ["", &token[1..], &format!("{token}x"), &token.to_uppercase()] {
            assert!(!closed.token_matches(wrong), "{wrong}");
        }
        store.close().await;
    }
}
