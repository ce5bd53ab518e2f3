//! GitHub webhooks: signed deliveries of real-shaped `push` payloads build exactly the expected
//! triggers, once; unsigned or badly signed deliveries, tags, deletions and filtered branches or
//! paths build nothing. Every push builds (also a commit built before); only a push and its
//! pull_request event arriving together share a build; pull-request builds check watch paths;
//! large path lists are matched outside the write transaction; form-encoded deliveries build;
//! impossible refs are refused; stored free text is bounded.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const REPO_ID: u64 = 186_853_002;
/// The GitHub App installation the payloads name (linked to [`ACCOUNT`] by [`monorepo`]).
const INSTALLATION: i64 = 2311213;

async fn deliver(
    app: &TestApp,
    event: &str,
    delivery: &str,
    payload: &Value,
    signature: Option<String>,
) -> (StatusCode, Value) {
    deliver_to(&app.client, &app.base, event, delivery, payload, signature).await
}

async fn deliver_to(
    client: &reqwest::Client,
    base: &str,
    event: &str,
    delivery: &str,
    payload: &Value,
    signature: Option<String>,
) -> (StatusCode, Value) {
    let body = serde_json::to_vec(payload).expect("json");
    let mut req = client
        .post(format!("{base}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("user-agent", "GitHub-Hookshot/044aadd");
    if let Some(sig) = signature.or_else(|| Some(sign_with(WEBHOOK_SECRET, &body))) {
        req = req.header("x-hub-signature-256", sig);
    }
    let resp = req.body(body).send().await.expect("deliver");
    let status = resp.status();
    (status, resp.json().await.expect("json body"))
}

/// A push payload in GitHub's shape (fields Kiln does not read included, as GitHub sends them).
fn push(git_ref: &str, after: &str, files: &[&str]) -> Value {
    let commit = json!({
        "id": after, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true,
        "message": "Update the web app\n\nWith details.", "timestamp": "2026-11-23T10:00:00Z",
        "url": format!("https://github.com/octo-org/monorepo/commit/{after}"),
        "author": {"name": "Mona Lisa", "email": "mona@example.com", "username": "mona"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": files, "removed": [], "modified": []
    });
    json!({
        "ref": git_ref,
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": after,
        "created": false, "deleted": false, "forced": false, "base_ref": null,
        "compare": "https://github.com/octo-org/monorepo/compare/6113728f27ae...0d1a26e67d8f",
        "commits": [commit.clone()],
        "head_commit": commit,
        "repository": {"id": REPO_ID, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": "monorepo",
            "full_name": "octo-org/monorepo", "private": true,
            "owner": {"login": "octo-org", "id": 6811672, "type": "Organization"},
            "default_branch": "main"},
        "pusher": {"name": "mona", "email": "mona@example.com"},
        "sender": {"login": "mona", "id": 21031067, "type": "User"},
        "installation": {"id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMjMxMTIxMw=="}
    })
}

/// Two Workers built from one repository: `web` (apps/web) and `api` (apps/api), production on main;
/// the account owns the installation the deliveries name.
async fn monorepo(app: &TestApp) -> (String, String) {
    app.link_installation(ACCOUNT, INSTALLATION).await;
    let (conn, token) = app
        .github_repo("octo-org", "monorepo", &REPO_ID.to_string())
        .await;
    let mut ids = Vec::new();
    for worker in ["web", "api"] {
        let extra = json!({"branch_includes": ["main"], "branch_excludes": [],
            "path_includes": [format!("apps/{worker}/*")], "path_excludes": ["*.md"]});
        ids.push(app.trigger(worker, &conn, &token, extra).await);
    }
    (ids[0].clone(), ids[1].clone())
}

async fn builds_of(app: &TestApp, worker: &str) -> Vec<Value> {
    let (_, v) = app
        .get(&app.acct(&format!("/workers/{worker}/builds?per_page=200")))
        .await;
    v["result"].as_array().expect("builds").clone()
}

#[tokio::test]
async fn a_signed_push_builds_the_workers_whose_paths_changed_exactly_once() {
    let app = TestApp::spawn().await;
    let (web, _api) = monorepo(&app).await;
    let after = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    let payload = push("refs/heads/main", after, &["apps/web/src/index.ts"]);
    let (status, v) = deliver(
        &app,
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &payload,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["duplicate"], false);
    assert_eq!(v["result"]["builds"].as_array().unwrap().len(), 1);
    let web_builds = builds_of(&app, "web").await;
    assert_eq!(web_builds.len(), 1);
    assert!(
        builds_of(&app, "api").await.is_empty(),
        "the api Worker's paths did not change"
    );
    let b = &web_builds[0];
    assert_eq!(b["trigger"]["trigger_uuid"], web.as_str());
    let m = &b["build_trigger_metadata"];
    assert_eq!(m["build_trigger_source"], "push");
    assert_eq!(m["branch"], "main");
    assert_eq!(m["commit_hash"], after);
    assert_eq!(m["commit_message"], "Update the web app\n\nWith details.");
    assert_eq!(m["author"], "mona@example.com");
    assert_eq!(
        app.store()
            .get_installation(&REPO_ID.to_string())
            .await
            .unwrap(),
        Some(INSTALLATION)
    );

    // A redelivery creates nothing.
    let (status, v) = deliver(
        &app,
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &payload,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["duplicate"], true);
    assert_eq!(builds_of(&app, "web").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn unsigned_tags_deletions_and_filtered_pushes_build_nothing() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    let payload = push(
        "refs/heads/main",
        "1111111111111111111111111111111111111111",
        &["apps/web/a.ts"],
    );
    // Missing and wrong signatures: 401, and nothing is stored (the same delivery id works afterwards).
    let body = serde_json::to_vec(&payload).unwrap();
    for sig in [
        "".to_owned(),
        sign_with("wrong-secret", &body),
        "sha256=00".to_owned(),
        sign_with(WEBHOOK_SECRET, b"other body"),
    ] {
        let (status, v) = deliver(&app, "push", "d-1", &payload, Some(sig)).await;
        assert_error(status, &v, 401, 10000);
    }
    assert!(builds_of(&app, "web").await.is_empty());

    for (delivery, payload) in [
        (
            "d-tag",
            push(
                "refs/tags/v1.0.0",
                "2222222222222222222222222222222222222222",
                &["apps/web/a.ts"],
            ),
        ),
        ("d-del", {
            let mut p = push(
                "refs/heads/main",
                "0000000000000000000000000000000000000000",
                &[],
            );
            p["deleted"] = json!(true);
            p
        }),
        (
            "d-branch",
            push(
                "refs/heads/feature",
                "3333333333333333333333333333333333333333",
                &["apps/web/a.ts"],
            ),
        ),
        (
            "d-docs",
            push(
                "refs/heads/main",
                "4444444444444444444444444444444444444444",
                &["apps/web/README.md"],
            ),
        ),
        (
            "d-other",
            push(
                "refs/heads/main",
                "5555555555555555555555555555555555555555",
                &["tools/x.sh"],
            ),
        ),
    ] {
        let (status, v) = deliver(&app, "push", delivery, &payload, None).await;
        assert_eq!(status, 200, "{delivery}: {v}");
        assert_eq!(v["result"]["builds"], json!([]), "{delivery}");
    }
    let (status, v) = deliver(
        &app,
        "ping",
        "d-ping",
        &json!({"zen": "Design for failure.", "hook_id": 1}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(builds_of(&app, "web").await.is_empty());
    assert!(builds_of(&app, "api").await.is_empty());

    // The delivery refused for its signature was not recorded: signed correctly now, it builds.
    let (_, v) = deliver(&app, "push", "d-1", &payload, None).await;
    assert_eq!(v["result"]["builds"].as_array().unwrap().len(), 1, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_500_deliveries_with_100_duplicates_creates_exactly_400_builds() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    let mut jobs = Vec::new();
    for i in 0..500usize {
        // Every fifth delivery repeats the previous one's id and payload.
        let n = if i % 5 == 4 { i - 1 } else { i };
        let after = format!("{:040x}", n + 1);
        let payload = push("refs/heads/main", &after, &["apps/web/x.ts"]);
        jobs.push((format!("burst-{n}"), payload));
    }
    let mut stream = Vec::new();
    for chunk in jobs.chunks(25) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(delivery, payload)| {
                let (client, base) = (app.client.clone(), app.base.clone());
                tokio::spawn(async move {
                    deliver_to(&client, &base, "push", &delivery, &payload, None).await
                })
            })
            .collect();
        for h in handles {
            let (status, v) = h.await.expect("delivery task");
            assert_eq!(status, 200, "{v}");
            stream.push(v);
        }
    }
    let duplicates = stream
        .iter()
        .filter(|v| v["result"]["duplicate"] == true)
        .count();
    assert_eq!(duplicates, 100);
    let (_, v) = app.get(&app.acct("/workers/web/builds?per_page=1")).await;
    assert_eq!(v["result_info"]["total_count"], 400);
    app.stop().await;
}

/// A pull_request payload in GitHub's shape.
fn pull_request(action: &str, number: i64, head: &str, sha: &str) -> Value {
    json!({
        "action": action,
        "number": number,
        "pull_request": {
            "url": format!("https://api.github.com/repos/octo-org/monorepo/pulls/{number}"),
            "id": 279147437, "node_id": "MDExOlB1bGxSZXF1ZXN0Mjc5MTQ3NDM3",
            "html_url": format!("https://github.com/octo-org/monorepo/pull/{number}"),
            "number": number, "state": if action == "closed" { "closed" } else { "open" },
            "title": "Add a page", "user": {"login": "mona", "id": 21031067},
            "created_at": "2026-11-20T09:30:00Z", "updated_at": "2026-11-23T10:00:00Z",
            "head": {"label": format!("octo-org:{head}"), "ref": head, "sha": sha,
                "repo": {"id": REPO_ID, "full_name": "octo-org/monorepo"}},
            "base": {"label": "octo-org:main", "ref": "main", "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                "repo": {"id": REPO_ID, "full_name": "octo-org/monorepo"}},
            "merged": false, "draft": false
        },
        "repository": {"id": REPO_ID, "name": "monorepo", "full_name": "octo-org/monorepo",
            "owner": {"login": "octo-org", "id": 6811672}},
        "sender": {"login": "mona", "id": 21031067},
        "installation": {"id": INSTALLATION}
    })
}

#[tokio::test]
async fn pull_requests_build_their_head_once_and_branch_builds_carry_the_open_pr() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    // A preview trigger for the web Worker: every branch but main.
    let (_, prod) = app.get(&app.acct("/workers/web/triggers")).await;
    let conn = prod["result"][0]["repo_connection"]["repo_connection_uuid"].clone();
    let token = prod["result"][0]["build_token_uuid"].clone();
    let preview = app
        .ok(Method::POST, &app.acct("/triggers"), Some(json!({"external_script_id": "web",
            "repo_connection_uuid": conn, "build_token_uuid": token, "trigger_name": "previews",
            "branch_includes": ["*"], "branch_excludes": ["main"], "path_includes": ["apps/web/*"]})))
        .await;
    let preview = s(&preview["trigger_uuid"]);
    let sha = "a".repeat(40);

    let (status, v) = deliver(
        &app,
        "pull_request",
        "pr-1",
        &pull_request("opened", 7, "feature/page", &sha),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let builds = builds_of(&app, "web").await;
    assert_eq!(
        builds.len(),
        1,
        "only the preview trigger selects feature/page"
    );
    let b = &builds[0];
    assert_eq!(b["trigger"]["trigger_uuid"], preview.as_str());
    assert_eq!(
        b["build_trigger_metadata"]["build_trigger_source"],
        "pull_request"
    );
    assert_eq!(b["build_trigger_metadata"]["commit_hash"], sha.as_str());
    assert_eq!(
        b["pull_request"]["pull_request_url"],
        "https://github.com/octo-org/monorepo/pull/7"
    );
    assert!(b["pull_request"]["created_on"].is_string());

    // The push of the same commit (GitHub sends both) builds nothing more: no commit twice per trigger.
    let (_, v) = deliver(
        &app,
        "push",
        "push-same",
        &push("refs/heads/feature/page", &sha, &["apps/web/p.ts"]),
        None,
    )
    .await;
    assert_eq!(v["result"]["builds"], json!([]), "{v}");
    // Labels and the like build nothing.
    let (_, v) = deliver(
        &app,
        "pull_request",
        "pr-label",
        &pull_request("labeled", 7, "feature/page", &sha),
        None,
    )
    .await;
    assert_eq!(v["result"]["builds"], json!([]), "{v}");

    // A new commit pushed to the branch carries the open pull request.
    let sha2 = "b".repeat(40);
    let (_, v) = deliver(
        &app,
        "push",
        "push-2",
        &push("refs/heads/feature/page", &sha2, &["apps/web/p.ts"]),
        None,
    )
    .await;
    let id = s(&v["result"]["builds"][0]);
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{id}")), None)
        .await;
    assert_eq!(b["build_trigger_metadata"]["build_trigger_source"], "push");
    assert_eq!(
        b["pull_request"]["pull_request_url"],
        "https://github.com/octo-org/monorepo/pull/7"
    );
    // …and the synchronize event for that commit builds nothing more.
    let (_, v) = deliver(
        &app,
        "pull_request",
        "pr-sync",
        &pull_request("synchronize", 7, "feature/page", &sha2),
        None,
    )
    .await;
    assert_eq!(v["result"]["builds"], json!([]), "{v}");

    // Any build of the branch carries the open pull request, a manual one too.
    let manual = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{preview}/builds")),
            Some(json!({"branch": "feature/page"})),
        )
        .await;
    let b = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{}", s(&manual["build_uuid"]))),
            None,
        )
        .await;
    assert_eq!(
        b["pull_request"]["pull_request_url"],
        "https://github.com/octo-org/monorepo/pull/7"
    );

    // Once closed, later pushes carry no pull request.
    deliver(
        &app,
        "pull_request",
        "pr-close",
        &pull_request("closed", 7, "feature/page", &sha2),
        None,
    )
    .await;
    let (_, v) = deliver(
        &app,
        "push",
        "push-3",
        &push(
            "refs/heads/feature/page",
            &"c".repeat(40),
            &["apps/web/p.ts"],
        ),
        None,
    )
    .await;
    let id = s(&v["result"]["builds"][0]);
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{id}")), None)
        .await;
    assert_eq!(b["pull_request"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn fork_pull_requests_build_nothing_and_another_branch_builds_the_same_commit_again() {
    let app = TestApp::spawn().await;
    let (_, prod) = {
        monorepo(&app).await;
        app.get(&app.acct("/workers/web/triggers")).await
    };
    // Let the production trigger build every branch for this test.
    let trigger = s(&prod["result"][0]["trigger_uuid"]);
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{trigger}")),
        Some(json!({"branch_includes": ["*"]})),
    )
    .await;
    let mut fork = pull_request("opened", 9, "main", &"d".repeat(40));
    fork["pull_request"]["head"]["repo"] = json!({"id": 999_999, "full_name": "someone/monorepo"});
    let (status, v) = deliver(&app, "pull_request", "fork-1", &fork, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["builds"], json!([]), "{v}");
    let mut deleted_fork = pull_request("opened", 10, "topic", &"e".repeat(40));
    deleted_fork["pull_request"]["head"]["repo"] = Value::Null;
    let (_, v) = deliver(&app, "pull_request", "fork-2", &deleted_fork, None).await;
    assert_eq!(v["result"]["builds"], json!([]), "{v}");

    // The fork's PR is not attached to the base repository's main.
    let sha = "f".repeat(40);
    let (_, v) = deliver(
        &app,
        "push",
        "p-main",
        &push("refs/heads/main", &sha, &["apps/web/a.ts"]),
        None,
    )
    .await;
    let id = s(&v["result"]["builds"][0]);
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{id}")), None)
        .await;
    assert_eq!(b["pull_request"], Value::Null);
    // The same commit pushed to another branch (a fast-forward) builds again, for that branch.
    let (_, v) = deliver(
        &app,
        "push",
        "p-staging",
        &push("refs/heads/staging", &sha, &["apps/web/a.ts"]),
        None,
    )
    .await;
    assert_eq!(v["result"]["builds"].as_array().unwrap().len(), 1, "{v}");
    app.stop().await;
}

/// A raw connection to the test server's database, for what the API does not show (when builds were
/// queued, a build's pending watch-path check) and for holding the writers' lock.
enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Db {
    async fn open(app: &TestApp) -> Db {
        use sqlx::Connection;
        match &app.config.store.database_url {
            Some(url) => Db::Postgres(sqlx::PgConnection::connect(url).await.expect("connect")),
            None => Db::Sqlite(
                sqlx::SqliteConnection::connect(&kiln::store::Store::sqlite_url(&app.data_dir()))
                    .await
                    .expect("connect"),
            ),
        }
    }

    async fn execute(&mut self, statement: &str) {
        match self {
            Db::Sqlite(c) => {
                sqlx::query(statement).execute(c).await.expect(statement);
            }
            Db::Postgres(c) => {
                sqlx::query(statement).execute(c).await.expect(statement);
            }
        }
    }

    /// The text in the first column of the first row (`None` for SQL NULL).
    async fn text(&mut self, query: &str) -> Option<String> {
        use sqlx::Row;
        match self {
            Db::Sqlite(c) => sqlx::query(query).fetch_one(c).await.expect(query).get(0),
            Db::Postgres(c) => sqlx::query(query).fetch_one(c).await.expect(query).get(0),
        }
    }
}

fn build_ids(v: &Value) -> Vec<String> {
    v["result"]["builds"]
        .as_array()
        .unwrap_or_else(|| panic!("no builds in {v}"))
        .iter()
        .map(s)
        .collect()
}

async fn cancel(app: &TestApp, id: &str) {
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{id}/cancel")),
        None,
    )
    .await;
}

#[tokio::test]
async fn every_push_builds_even_a_commit_built_before() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    let (x, y) = ("1".repeat(40), "2".repeat(40));
    let files = ["apps/web/src/index.ts"];
    let (_, v) = deliver(
        &app,
        "push",
        "x-1",
        &push("refs/heads/main", &x, &files),
        None,
    )
    .await;
    assert_eq!(build_ids(&v).len(), 1, "{v}");
    let (_, v) = deliver(
        &app,
        "push",
        "y-1",
        &push("refs/heads/main", &y, &files),
        None,
    )
    .await;
    assert_eq!(build_ids(&v).len(), 1, "{v}");
    // main force-pushed back to x: production must follow.
    let mut back = push("refs/heads/main", &x, &files);
    back["forced"] = json!(true);
    let (status, v) = deliver(&app, "push", "x-2", &back, None).await;
    assert_eq!(status, 200, "{v}");
    let again = build_ids(&v);
    assert_eq!(
        again.len(),
        1,
        "a force push back to a built commit builds it: {v}"
    );
    // A push of a commit whose build was cancelled (or failed, or was skipped) builds it again.
    cancel(&app, &again[0]).await;
    let (_, v) = deliver(&app, "push", "x-3", &back, None).await;
    assert_eq!(build_ids(&v).len(), 1, "{v}");
    // A redelivery stays idempotent.
    let (_, v) = deliver(&app, "push", "x-3", &back, None).await;
    assert_eq!(v["result"]["duplicate"], true, "{v}");
    assert_eq!(builds_of(&app, "web").await.len(), 4);
    assert!(builds_of(&app, "api").await.is_empty());
    app.stop().await;
}

/// A preview trigger for the web Worker (every branch but main, watch paths `apps/web/*`).
async fn preview_trigger(app: &TestApp) -> String {
    let (_, prod) = app.get(&app.acct("/workers/web/triggers")).await;
    let conn = prod["result"][0]["repo_connection"]["repo_connection_uuid"].clone();
    let token = prod["result"][0]["build_token_uuid"].clone();
    let preview = app
        .ok(Method::POST, &app.acct("/triggers"), Some(json!({"external_script_id": "web",
            "repo_connection_uuid": conn, "build_token_uuid": token, "trigger_name": "previews",
            "branch_includes": ["*"], "branch_excludes": ["main"], "path_includes": ["apps/web/*"]})))
        .await;
    s(&preview["trigger_uuid"])
}

#[tokio::test]
async fn only_a_push_and_its_pull_request_event_arriving_together_share_a_build() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    preview_trigger(&app).await;
    let mut db = Db::open(&app).await;
    let (h1, h2) = ("a1".repeat(20), "b2".repeat(20));

    // A push, then the pull request opened on its head: one build, which now carries the PR.
    let (_, v) = deliver(
        &app,
        "push",
        "p-a",
        &push("refs/heads/feature/a", &h1, &["apps/web/a.ts"]),
        None,
    )
    .await;
    let b1 = build_ids(&v);
    assert_eq!(b1.len(), 1, "{v}");
    let (_, v) = deliver(
        &app,
        "pull_request",
        "pr-3-opened",
        &pull_request("opened", 3, "feature/a", &h1),
        None,
    )
    .await;
    assert_eq!(build_ids(&v), Vec::<String>::new(), "{v}");
    let b = get_build(&app, &b1[0]).await;
    assert_eq!(
        b["pull_request"]["pull_request_url"], "https://github.com/octo-org/monorepo/pull/3",
        "{b}"
    );

    // The pull request's event first, then the push of its head: one build. The push selects the
    // trigger by itself (no file list: always builds), so the build's watch-path check is dropped.
    let (_, v) = deliver(
        &app,
        "pull_request",
        "pr-4-opened",
        &pull_request("opened", 4, "feature/b", &h2),
        None,
    )
    .await;
    let b2 = build_ids(&v);
    assert_eq!(b2.len(), 1, "{v}");
    let check = format!("SELECT watch_paths FROM builds WHERE uuid = '{}'", b2[0]);
    assert!(
        db.text(&check).await.is_some(),
        "a pull-request build checks watch paths"
    );
    let (_, v) = deliver(
        &app,
        "push",
        "p-b",
        &push("refs/heads/feature/b", &h2, &[]),
        None,
    )
    .await;
    assert_eq!(build_ids(&v), Vec::<String>::new(), "{v}");
    assert_eq!(db.text(&check).await, None);

    // Long after, with the first build stopped: not together any more. The pull request reopened
    // on the same head builds again.
    cancel(&app, &b1[0]).await;
    db.execute(&format!(
        "UPDATE builds SET created_on = created_on - {}",
        2 * kiln::store::PAIR_WINDOW_MS
    ))
    .await;
    let (_, v) = deliver(
        &app,
        "pull_request",
        "pr-3-reopened",
        &pull_request("reopened", 3, "feature/a", &h1),
        None,
    )
    .await;
    assert_eq!(build_ids(&v).len(), 1, "{v}");
    // While a build of the pair is still queued it is joined, however old.
    let (_, v) = deliver(
        &app,
        "push",
        "p-b-again",
        &push("refs/heads/feature/b", &h2, &["apps/web/b.ts"]),
        None,
    )
    .await;
    assert_eq!(build_ids(&v), Vec::<String>::new(), "{v}");
    app.stop().await;
}

#[tokio::test]
async fn pull_request_builds_check_the_watch_paths_on_the_pull_requests_changes() {
    let app = spawn_runner(kiln::sandbox::SandboxMode::None, |_| {}).await;
    monorepo(&app).await;
    let preview = preview_trigger(&app).await;
    set_commands(&app, &preview, "echo built-web", "").await;
    // The repository: main, a branch changing only docs, a branch changing the web app.
    let repo = app.git_remotes().join("octo-org").join("monorepo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for (path, text) in [("apps/web/index.ts", "1"), ("docs/guide.md", "1")] {
        std::fs::create_dir_all(repo.join(path).parent().unwrap()).unwrap();
        std::fs::write(repo.join(path), text).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    let base = head(&repo);
    git(&repo, &["checkout", "-q", "-b", "docs"]);
    std::fs::write(repo.join("docs/guide.md"), "2").unwrap();
    git(&repo, &["commit", "-q", "-am", "docs"]);
    let docs = head(&repo);
    git(&repo, &["checkout", "-q", "-b", "web", "main"]);
    std::fs::write(repo.join("apps/web/index.ts"), "2").unwrap();
    git(&repo, &["commit", "-q", "-am", "web"]);
    let web = head(&repo);

    // The push of the docs branch builds nothing (watch paths), and its pull request neither: its
    // build ends skipped before the clone.
    let (_, v) = deliver(
        &app,
        "push",
        "docs-push",
        &push("refs/heads/docs", &docs, &["docs/guide.md"]),
        None,
    )
    .await;
    assert_eq!(build_ids(&v), Vec::<String>::new(), "{v}");
    let mut opened = pull_request("opened", 11, "docs", &docs);
    opened["pull_request"]["base"]["sha"] = json!(base);
    let (_, v) = deliver(&app, "pull_request", "docs-pr", &opened, None).await;
    let ids = build_ids(&v);
    assert_eq!(ids.len(), 1, "{v}");
    let b = wait_stopped(&app, &ids[0]).await;
    let logs = all_logs(&app, &ids[0]).await;
    assert_eq!(b["build_outcome"], "skipped", "{}", logs.join("\n"));
    assert!(
        logs.iter()
            .any(|l| l == kiln::runner::WATCH_PATHS_SKIPPED_LINE),
        "{}",
        logs.join("\n")
    );
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("Cloning repository") || l.contains("built-web"))
    );
    // Skipped builds cost no build minutes.
    let account = kiln::domain::AccountId::parse(ACCOUNT).unwrap();
    let used = app
        .store()
        .build_minutes_used(&account, kiln::domain::Timestamp::from_millis(0))
        .await
        .unwrap();
    assert_eq!(used, 0);

    // The web branch's pull request builds (its base sha is unknown to the mirror: the base
    // branch's head is used).
    let (_, v) = deliver(
        &app,
        "pull_request",
        "web-pr",
        &pull_request("opened", 12, "web", &web),
        None,
    )
    .await;
    let ids = build_ids(&v);
    assert_eq!(ids.len(), 1, "{v}");
    let b = wait_stopped(&app, &ids[0]).await;
    let logs = all_logs(&app, &ids[0]).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert!(logs.iter().any(|l| l == "built-web"), "{}", logs.join("\n"));
    app.stop().await;
}

/// `count` changed paths of about 4,000 characters each (the issue's input: 2,999 of them), the last
/// one under `apps/web/` when `matching`.
fn long_paths(count: usize, matching: bool) -> Vec<String> {
    (0..count)
        .map(|i| {
            let dir = if matching && i + 1 == count {
                "apps/web"
            } else {
                "src"
            };
            format!("{dir}/{}/{i}.ts", "ab".repeat(1990))
        })
        .collect()
}

/// As many changed paths of ~4,000 characters as are matched at all (1 MiB in all).
const PATHS_AT_THE_LIMIT: usize = 255;

/// As many watch-path patterns as a trigger may have (100 per list, 8 wildcards each), shaped to make
/// a backtracking matcher slow and a substring search find many near misses (`abb` in `abab…`).
fn costly_patterns(tag: char, with: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = (0..100)
        .map(|i| format!("*{}{tag}{i:02}*", "abb*".repeat(6)))
        .collect();
    if let Some(p) = with {
        v[99] = p.to_owned();
    }
    v
}

/// Sets the web trigger's watch paths to the costly patterns (its includes end with `apps/web/*`).
async fn costly_web_trigger(app: &TestApp) -> String {
    let (_, t) = app.get(&app.acct("/workers/web/triggers")).await;
    let web = s(&t["result"][0]["trigger_uuid"]);
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{web}")),
        Some(
            json!({"path_includes": costly_patterns('b', Some("apps/web/*")),
            "path_excludes": costly_patterns('c', None)}),
        ),
    )
    .await;
    web
}

fn push_with_paths(after: &str, paths: &[String]) -> Value {
    let mut p = push("refs/heads/main", after, &[]);
    p["commits"][0]["modified"] = json!(paths);
    p["head_commit"]["modified"] = json!(paths);
    p
}

#[tokio::test]
async fn the_issues_push_of_2999_long_paths_is_answered_and_lists_up_to_the_limit_are_matched() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    let web = costly_web_trigger(&app).await;
    // More wildcards than that are refused at the API's edge.
    let (status, v) = app
        .call(
            Method::PATCH,
            &app.acct(&format!("/triggers/{web}")),
            Some(ADMIN_TOKEN),
            Some(json!({"path_includes": [format!("{}x", "*a".repeat(9))]})),
        )
        .await;
    assert_error(status, &v, 400, 12002);
    // The issue's push: 2,999 paths of ~4,000 characters, 12 MB of paths. Too much to match: like a
    // push of 3,000+ files, it builds every Worker of the repository.
    let issue = push_with_paths(&"3".repeat(40), &long_paths(2999, false));
    let (status, v) = deliver(&app, "push", "issue", &issue, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(build_ids(&v).len(), 2, "{v}");
    // Up to the limit, paths are matched against every pattern.
    let none = push_with_paths(&"4".repeat(40), &long_paths(PATHS_AT_THE_LIMIT, false));
    let (status, v) = deliver(&app, "push", "long-none", &none, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(build_ids(&v), Vec::<String>::new(), "no path matches");
    let last = push_with_paths(&"5".repeat(40), &long_paths(PATHS_AT_THE_LIMIT, true));
    let (status, v) = deliver(&app, "push", "long-last", &last, None).await;
    assert_eq!(status, 200, "{v}");
    let ids = build_ids(&v);
    assert_eq!(ids.len(), 1, "the last path matches: {v}");
    assert_eq!(
        get_build(&app, &ids[0]).await["trigger"]["trigger_uuid"],
        web.as_str()
    );
    // A path longer than any file of a checkout can have: the list is not trusted, the push builds.
    let over = push_with_paths(&"6".repeat(40), &[format!("docs/{}", "x".repeat(5000))]);
    let (_, v) = deliver(&app, "push", "long-over", &over, None).await;
    assert_eq!(build_ids(&v).len(), 2, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn watch_paths_are_matched_before_the_write_transaction_and_without_the_writers_lock() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    let web = costly_web_trigger(&app).await;
    let payload = push_with_paths(&"7".repeat(40), &long_paths(PATHS_AT_THE_LIMIT, true));
    let push = kiln::github::parse_push(&serde_json::to_vec(&payload).unwrap())
        .unwrap()
        .unwrap();
    // Another writer holds the database's write lock (SQLite) or the repository's lock (PostgreSQL)
    // for as long as the matching takes: the matching needs neither.
    let mut db = Db::open(&app).await;
    let lock = format!("hashtext('github-repo:{REPO_ID}')");
    match common::backend() {
        Backend::Sqlite => db.execute("BEGIN IMMEDIATE").await,
        Backend::Postgres => {
            db.execute(&format!("SELECT pg_advisory_lock({lock})"))
                .await
        }
    }
    let selection = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        app.store().select_push_triggers(&push),
    )
    .await
    .expect("matching waited for the writers' lock")
    .unwrap();
    match common::backend() {
        Backend::Sqlite => db.execute("ROLLBACK").await,
        Backend::Postgres => {
            db.execute(&format!("SELECT pg_advisory_unlock({lock})"))
                .await
        }
    }
    // The transaction only uses the selection: a filter changed meanwhile does not re-run it (the
    // delivery is matched against the filters when it arrives).
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{web}")),
        Some(json!({"path_includes": ["nothing/*"]})),
    )
    .await;
    let outcome = app
        .store()
        .handle_push("locked-1", &push, &selection)
        .await
        .unwrap();
    let kiln::store::DeliveryOutcome::Handled(queued) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.to_string(), web);
    app.stop().await;
}

/// Sends a delivery as GitHub does with its default content type: `payload=<url-encoded JSON>`.
async fn deliver_form(
    app: &TestApp,
    event: &str,
    delivery: &str,
    body: String,
) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(format!("{}/webhooks/github", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header(
            "x-hub-signature-256",
            sign_with(WEBHOOK_SECRET, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("deliver");
    let status = resp.status();
    (status, resp.json().await.expect("json body"))
}

#[tokio::test]
async fn a_form_encoded_delivery_builds_like_a_json_one() {
    let app = TestApp::spawn().await;
    let (web, _) = monorepo(&app).await;
    let payload = push("refs/heads/main", &"a".repeat(40), &["apps/web/a b+c.ts"]);
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let (status, v) = deliver_form(&app, "push", "form-1", form.clone()).await;
    assert_eq!(status, 200, "{v}");
    let ids = build_ids(&v);
    assert_eq!(ids.len(), 1, "{v}");
    let b = get_build(&app, &ids[0]).await;
    assert_eq!(b["trigger"]["trigger_uuid"], web.as_str());
    assert_eq!(
        b["build_trigger_metadata"]["commit_message"],
        "Update the web app\n\nWith details."
    );
    // The signature covers the raw body: the same payload signed as JSON does not pass as a form.
    let resp = app
        .client
        .post(format!("{}/webhooks/github", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", "push")
        .header("x-github-delivery", "form-2")
        .header(
            "x-hub-signature-256",
            sign_with(WEBHOOK_SECRET, payload.to_string().as_bytes()),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_error(status, &resp.json().await.unwrap(), 401, 10000);
    // A form without the payload field is refused with the envelope; a ping is acknowledged.
    let (status, v) = deliver_form(&app, "push", "form-3", "other=1".to_owned()).await;
    assert_error(status, &v, 400, 12002);
    let (status, v) = deliver_form(&app, "ping", "form-4", "payload=%7B%7D".to_owned()).await;
    assert_eq!(status, 200, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn impossible_branch_names_and_ids_are_refused_at_the_edge() {
    let app = TestApp::spawn().await;
    let (web, _) = monorepo(&app).await;
    // Every branch selected, so that a refused name is not merely filtered out.
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{web}")),
        Some(json!({"branch_includes": ["*"]})),
    )
    .await;
    let sha = "8".repeat(40);
    for (i, git_ref) in [
        "refs/heads/ma\u{0}in",
        "refs/heads/a..b",
        "refs/heads/x.lock",
        "refs/heads/-rf",
        "refs/heads/a b",
        "refs/heads/a\u{7f}b",
        "refs/heads/HEAD",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, v) = deliver(
            &app,
            "push",
            &format!("bad-ref-{i}"),
            &push(git_ref, &sha, &["apps/web/a.ts"]),
            None,
        )
        .await;
        assert_error(status, &v, 400, 12002);
    }
    let (status, v) = deliver(
        &app,
        "push",
        "bad-after",
        &push("refs/heads/main", "not-a-commit\u{0}", &["apps/web/a.ts"]),
        None,
    )
    .await;
    assert_error(status, &v, 400, 12002);
    for (i, (head_ref, head_sha)) in [("fea\u{0}ture", sha.as_str()), ("feature", "abc\u{0}")]
        .into_iter()
        .enumerate()
    {
        let (status, v) = deliver(
            &app,
            "pull_request",
            &format!("bad-pr-{i}"),
            &pull_request("opened", 5, head_ref, head_sha),
            None,
        )
        .await;
        assert_error(status, &v, 400, 12002);
    }
    let mut bad_url = pull_request("opened", 5, "feature", &sha);
    bad_url["pull_request"]["html_url"] = json!("https://github.com/o/r/pull/5\u{0}");
    let (status, v) = deliver(&app, "pull_request", "bad-pr-url", &bad_url, None).await;
    assert_error(status, &v, 400, 12002);
    assert!(builds_of(&app, "web").await.is_empty());
    // The API: one rule (git's) for branch names.
    let (status, v) = app
        .post(
            &app.acct(&format!("/triggers/{web}/builds")),
            json!({"branch": "x.lock"}),
        )
        .await;
    assert_error(status, &v, 400, 12002);
    let (status, v) = app
        .post(
            &app.acct(&format!("/triggers/{web}/builds")),
            json!({"branch": "ma\u{0}in"}),
        )
        .await;
    assert_error(status, &v, 400, 12002);
    // Nothing was recorded for a refused delivery: fixed, the same delivery id builds.
    let (status, v) = deliver(
        &app,
        "push",
        "bad-ref-0",
        &push("refs/heads/main", &sha, &["apps/web/a.ts"]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(build_ids(&v).len(), 1, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn commit_messages_and_authors_are_stored_bounded_and_without_nul() {
    let app = TestApp::spawn().await;
    monorepo(&app).await;
    let mut payload = push("refs/heads/main", &"9".repeat(40), &["apps/web/a.ts"]);
    let message = format!("Fix\u{0}it {}", "é".repeat(100_000));
    payload["head_commit"]["message"] = json!(message);
    payload["head_commit"]["author"]["email"] =
        json!(format!("a\u{0}{}@example.com", "b".repeat(1000)));
    let (status, v) = deliver(&app, "push", "long-message", &payload, None).await;
    assert_eq!(status, 200, "{v}");
    let ids = build_ids(&v);
    assert_eq!(ids.len(), 1, "{v}");
    let m = &get_build(&app, &ids[0]).await["build_trigger_metadata"];
    let stored = s(&m["commit_message"]);
    assert!(
        stored.len() <= kiln::domain::MAX_COMMIT_MESSAGE_BYTES,
        "{}",
        stored.len()
    );
    assert!(stored.len() > kiln::domain::MAX_COMMIT_MESSAGE_BYTES - 4);
    assert!(stored.starts_with("Fix\u{fffd}it ééé"), "{stored:.20}");
    let author = s(&m["author"]);
    assert!(author.len() <= kiln::domain::MAX_AUTHOR_BYTES && author.starts_with("a\u{fffd}b"));
    app.stop().await;
}
