//! Kiln's listing extensions: `listAccounts`, `listWorkers`, and the `branch` / `outcome` filters of
//! `listBuildsByScript`.

mod common;

use common::builds::queue;
use common::{ACCOUNT, ADMIN_TOKEN, OTHER_ACCOUNT, TestApp, assert_error, s};
use kiln::domain::Permission;
use reqwest::Method;
use serde_json::{Value, json};

fn ids(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {list}"))
        .iter()
        .map(|item| s(&item[key]))
        .collect()
}

#[tokio::test]
async fn accounts_are_those_the_credentials_may_act_on() {
    let app = TestApp::spawn().await;
    // Nothing stored yet: an all-accounts token sees no account.
    let (status, v) = app
        .call(Method::GET, "/accounts", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], json!([]), "{v}");
    assert_eq!(v["result_info"]["total_count"], json!(0), "{v}");

    app.fixture("w-one").await;
    let third = "0123456789abcdef0123456789abcdef";
    let read = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;
    let two = app
        .mint_token(Some(&[OTHER_ACCOUNT, ACCOUNT]), Permission::Write)
        .await;
    let other = app.mint_token(Some(&[third]), Permission::Read).await;

    let (status, v) = app
        .call(Method::GET, "/accounts", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["result"],
        json!([{"id": ACCOUNT, "name": ACCOUNT}]),
        "{v}"
    );

    let (_, v) = app.call(Method::GET, "/accounts", Some(&read), None).await;
    assert_eq!(ids(&v["result"], "id"), vec![ACCOUNT]);
    // A scoped token lists its accounts whether or not Kiln holds anything of them, sorted.
    let (_, v) = app.call(Method::GET, "/accounts", Some(&two), None).await;
    assert_eq!(ids(&v["result"], "id"), vec![ACCOUNT, OTHER_ACCOUNT]);
    let (_, v) = app
        .call(Method::GET, "/accounts?per_page=1&page=2", Some(&two), None)
        .await;
    assert_eq!(ids(&v["result"], "id"), vec![OTHER_ACCOUNT], "{v}");
    assert_eq!(v["result_info"]["total_count"], json!(2), "{v}");
    let (_, v) = app
        .call(Method::GET, "/accounts?page=3&per_page=1", Some(&two), None)
        .await;
    assert_eq!(v["result"], json!([]), "{v}");
    // Another account's token never learns of ACCOUNT.
    let (_, v) = app.call(Method::GET, "/accounts", Some(&other), None).await;
    assert_eq!(ids(&v["result"], "id"), vec![third]);

    // Bad input and bad credentials.
    let (status, v) = app
        .call(Method::GET, "/accounts?per_page=0", Some(ADMIN_TOKEN), None)
        .await;
    assert_error(status, &v, 400, 12002);
    let (status, v) = app.call(Method::GET, "/accounts", None, None).await;
    assert_error(status, &v, 401, 10000);
    let (status, v) = app
        .call(Method::GET, "/accounts", Some("kiln_not-a-token"), None)
        .await;
    assert_error(status, &v, 401, 10000);
    let (status, v) = app
        .call(
            Method::POST,
            "/accounts",
            Some(ADMIN_TOKEN),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 405, "{v}");
}

#[tokio::test]
async fn workers_list_each_worker_with_its_triggers_and_newest_build() {
    let app = TestApp::spawn().await;
    let alpha = app.fixture("w-alpha").await;
    app.fixture("w-beta").await;
    let gamma = app.fixture("w-gamma").await;

    let first = queue(&app, &alpha.trigger, json!({"branch": "main"})).await;
    let newest = queue(&app, &alpha.trigger, json!({"branch": "dev"})).await;
    let gone = queue(&app, &gamma.trigger, json!({"branch": "main"})).await;
    // A deleted trigger's Worker stays listed while it has builds (they stay readable).
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/triggers/{}", gamma.trigger)),
        None,
    )
    .await;

    let workers = app.ok(Method::GET, &app.acct("/workers"), None).await;
    assert_eq!(
        ids(&workers, "external_script_id"),
        vec!["w-alpha", "w-beta", "w-gamma"]
    );
    assert_eq!(workers[0]["triggers"], json!(1), "{workers}");
    assert_eq!(workers[0]["latest_build"]["build_uuid"], json!(newest));
    assert_eq!(
        workers[0]["latest_build"]["build_trigger_metadata"]["branch"],
        json!("dev")
    );
    assert_eq!(workers[1]["triggers"], json!(1));
    assert_eq!(workers[1]["latest_build"], Value::Null);
    assert_eq!(workers[2]["triggers"], json!(0));
    assert_eq!(workers[2]["latest_build"]["build_uuid"], json!(gone));
    // The newest build is the one getBuildByUuid shows.
    let mut shown = app
        .ok(Method::GET, &app.acct(&format!("/builds/{newest}")), None)
        .await;
    shown.as_object_mut().and_then(|b| b.remove("queue"));
    assert_eq!(workers[0]["latest_build"], shown);
    assert_ne!(first, newest);

    let (_, v) = app
        .call(
            Method::GET,
            &app.acct("/workers?per_page=2&page=2"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(ids(&v["result"], "external_script_id"), vec!["w-gamma"]);
    assert_eq!(v["result_info"]["total_count"], json!(3), "{v}");

    // Another account sees none of them.
    let other = format!("/accounts/{OTHER_ACCOUNT}/builds/workers");
    assert_eq!(app.ok(Method::GET, &other, None).await, json!([]));
    let foreign = app
        .mint_token(Some(&[OTHER_ACCOUNT]), Permission::Read)
        .await;
    let (status, v) = app
        .call(Method::GET, &app.acct("/workers"), Some(&foreign), None)
        .await;
    assert_error(status, &v, 403, 10000);
}

#[tokio::test]
async fn builds_filter_by_branch_and_outcome() {
    let app = TestApp::spawn().await;
    let f = app.fixture("w-filter").await;
    let on_main = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let on_dev = queue(&app, &f.trigger, json!({"branch": "dev"})).await;
    let odd_branch = "<script>alert(1)</script>";
    let on_odd = queue(&app, &f.trigger, json!({"branch": odd_branch})).await;
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{on_dev}/cancel")),
        None,
    )
    .await;

    let list = |query: &str| {
        let path = app.acct(&format!("/workers/w-filter/builds{query}"));
        let app = &app;
        async move { app.ok(Method::GET, &path, None).await }
    };
    assert_eq!(
        ids(&list("").await, "build_uuid"),
        vec![on_odd.clone(), on_dev.clone(), on_main.clone()]
    );
    assert_eq!(
        ids(&list("?branch=main").await, "build_uuid"),
        vec![on_main.clone()]
    );
    let escaped: String = form_urlencoded::byte_serialize(odd_branch.as_bytes()).collect();
    assert_eq!(
        ids(&list(&format!("?branch={escaped}")).await, "build_uuid"),
        vec![on_odd.clone()]
    );
    assert_eq!(
        ids(&list("?outcome=cancelled").await, "build_uuid"),
        vec![on_dev.clone()]
    );
    assert_eq!(list("?outcome=success").await, json!([]));
    assert_eq!(list("?branch=main&outcome=cancelled").await, json!([]));
    assert_eq!(list("?branch=nope").await, json!([]));

    // Paging counts what the filter keeps.
    let (_, v) = app
        .call(
            Method::GET,
            &app.acct("/workers/w-filter/builds?branch=dev&per_page=1"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(v["result_info"]["total_count"], json!(1), "{v}");

    for bad in [
        "?outcome=green",
        "?outcome=",
        "?outcome=SUCCESS",
        "?branch=",
        "?branch=a..b",
        "?branch=%00",
    ] {
        let (status, v) = app
            .call(
                Method::GET,
                &app.acct(&format!("/workers/w-filter/builds{bad}")),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_error(status, &v, 400, 12002);
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| ["outcome", "branch", "query"].iter().any(|w| m.contains(w))),
            "{bad}: {v}"
        );
    }
}
