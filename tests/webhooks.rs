//! GitHub webhooks: signed deliveries of real-shaped `push` payloads build exactly the expected
//! triggers, once; unsigned or badly signed deliveries, tags, deletions and filtered branches or
//! paths build nothing.

mod common;

use common::*;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

const REPO_ID: u64 = 186_853_002;
/// The GitHub App installation the payloads name (linked to [`ACCOUNT`] by [`monorepo`]).
const INSTALLATION: i64 = 2311213;

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

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
    if let Some(sig) = signature.or_else(|| Some(sign(WEBHOOK_SECRET, &body))) {
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
        sign("wrong-secret", &body),
        "sha256=00".to_owned(),
        sign(WEBHOOK_SECRET, b"other body"),
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
