//! A webhook receiver for notification tests: a real HTTP server on a random local port that
//! records every request, verifies its Standard Webhooks signature with the reference library (not
//! Kiln's code), and answers as the test says (accept, fail the first attempts of each message, fail
//! always, or never answer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 to everything.
    Accept,
    /// 500 to the first `n` attempts of each message (by `webhook-id`), then 200.
    FailFirst(usize),
    /// 503 to everything.
    Fail,
    /// Reads the request and never answers.
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Value,
    /// Whether the reference library accepted the signature (and the timestamp).
    pub verified: bool,
    /// The status answered (`None`: never answered).
    pub answered: Option<u16>,
}

impl Received {
    pub fn event_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    pub fn build(&self) -> &str {
        self.body["payload"]["buildUuid"]
            .as_str()
            .unwrap_or_default()
    }

    pub fn accepted(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Clone)]
struct Shared {
    secret: Arc<Mutex<String>>,
    behaviour: Arc<Mutex<Behaviour>>,
    log: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<HashMap<String, usize>>>,
}

/// A running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver verifying with `secret` (`whsec_…`).
    pub async fn start(secret: &str, behaviour: Behaviour) -> Receiver {
        let shared = Shared {
            secret: Arc::new(Mutex::new(secret.to_owned())),
            behaviour: Arc::new(Mutex::new(behaviour)),
            log: Arc::default(),
            attempts: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Receiver { url, shared, task }
    }

    /// Verifies later requests with `secret` (a secret the server generated, known only once the
    /// subscription, which needs this receiver's URL, was created).
    pub fn set_secret(&self, secret: &str) {
        *self.shared.secret.lock().unwrap() = secret.to_owned();
    }

    /// Changes how later requests are answered.
    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The requests answered 2xx, in order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }

    /// Waits (at most `within`) until `pred` holds for the requests received; panics with them
    /// otherwise.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver never got {what}; it got:\n{got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let secret = s.secret.lock().unwrap().clone();
    let verified = standardwebhooks::Webhook::new(&secret)
        .and_then(|w| w.verify(&body, &headers))
        .is_ok();
    let id = header("webhook-id");
    let behaviour = *s.behaviour.lock().unwrap();
    let attempt = {
        let mut attempts = s.attempts.lock().unwrap();
        let n = attempts.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let answer = match behaviour {
        Behaviour::Accept => Some(StatusCode::OK),
        Behaviour::FailFirst(n) if attempt <= n => Some(StatusCode::INTERNAL_SERVER_ERROR),
        Behaviour::FailFirst(_) => Some(StatusCode::NO_CONTENT),
        Behaviour::Fail => Some(StatusCode::SERVICE_UNAVAILABLE),
        Behaviour::Hang => None,
    };
    s.log.lock().unwrap().push(Received {
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
        answered: answer.map(|a| a.as_u16()),
    });
    match answer {
        Some(status) => status,
        None => std::future::pending().await,
    }
}
