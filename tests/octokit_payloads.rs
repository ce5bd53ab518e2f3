//! GitHub's own example payloads (`@octokit/webhooks-examples`, copied to tests/fixtures/octokit):
//! each parses, tags and deletions build nothing, and a real branch push builds through the endpoint.

mod common;

use common::*;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

fn examples(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/fixtures/octokit/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

#[test]
fn every_example_parses_and_only_branch_pushes_build() {
    let pushes = examples("push");
    assert_eq!(pushes.len(), 7);
    let mut branch_pushes = 0;
    for p in &pushes {
        let parsed =
            kiln::github::parse_push(&serde_json::to_vec(p).unwrap()).expect("push parses");
        let is_branch =
            p["ref"].as_str().unwrap().starts_with("refs/heads/") && p["deleted"] != true;
        assert_eq!(parsed.is_some(), is_branch, "{}", p["ref"]);
        if let Some(push) = parsed {
            branch_pushes += 1;
            assert_eq!(
                push.repo_id,
                p["repository"]["id"].as_u64().unwrap().to_string()
            );
            assert_eq!(push.after, p["after"].as_str().unwrap());
            assert_eq!(push.commit_count, p["commits"].as_array().unwrap().len());
        }
    }
    assert_eq!(branch_pushes, 2);
    for pr in examples("pull_request") {
        let ev = kiln::github::parse_pull_request(&serde_json::to_vec(&pr).unwrap())
            .expect("pull_request parses");
        assert_eq!(ev.number, pr["number"].as_i64().unwrap());
        assert_eq!(
            ev.head_sha,
            pr["pull_request"]["head"]["sha"].as_str().unwrap()
        );
    }
}

#[tokio::test]
async fn a_real_push_payload_builds_its_repository() {
    let app = TestApp::spawn().await;
    let push = examples("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master")
        .expect("a branch push");
    let repo_id = push["repository"]["id"].as_u64().unwrap().to_string();
    let (conn, token) = app.github_repo("Codertocat", "Hello-World", &repo_id).await;
    let installation = push["installation"]["id"]
        .as_i64()
        .expect("an App delivery");
    app.link_installation(ACCOUNT, installation).await;
    app.trigger(
        "hello",
        &conn,
        &token,
        json!({"branch_includes": ["master"]}),
    )
    .await;
    let body = serde_json::to_vec(&push).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let v: Value = app
        .client
        .post(format!("{}/webhooks/github", app.base))
        .header("x-github-event", "push")
        .header("x-github-delivery", "f1d9c0e0-2f6a-11ef-8c7e-0d8a3b7c1f10")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["result"]["builds"].as_array().unwrap().len(), 1, "{v}");
    let b = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{}", s(&v["result"]["builds"][0]))),
            None,
        )
        .await;
    assert_eq!(b["build_trigger_metadata"]["commit_hash"], push["after"]);
    assert_eq!(b["build_trigger_metadata"]["branch"], "master");
    assert_eq!(b["build_trigger_metadata"]["build_trigger_source"], "push");
    app.stop().await;
}
