//! Governance end to end, on SQLite and on PostgreSQL: the management API driven the way
//! LiteLLM's docs show, role checks, budgets under concurrency and across period boundaries, rate
//! limits, spend accuracy against the pricing fixture, and database-stored models.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{start_governed, Db, Harness, BACKENDS, MASTER};
use serde_json::{json, Value};

/// gpt-4o (priced by the built-in table) and a deployment with its own prices.
const MODELS: &str = r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_base: "{mock}", api_key: k}
  - model_name: cheap
    litellm_params: {model: openai/cheap, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
  - model_name: other
    litellm_params: {model: openai/other, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
router_settings: {num_retries: 0}
"#;

async fn key(h: &Harness, body: Value) -> String {
    h.new_key(body).await
}

#[tokio::test]
async fn the_litellm_key_workflow_works_on_both_backends() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let generated = h
            .admin(
                "/key/generate",
                json!({"models": ["gpt-4o", "cheap"], "key_alias": "ci-key", "max_budget": 10.0,
                       "metadata": {"team": "core"}, "duration": "30d", "tags": ["ci"]}),
            )
            .await;
        let sk = generated["key"].as_str().unwrap().to_owned();
        assert!(sk.starts_with("sk-"), "{db:?}");
        assert!(
            generated["expires"].as_str().is_some(),
            "{db:?}: duration sets expires"
        );
        assert_eq!(generated["key_alias"], "ci-key");

        // Use the key.
        let r = h.chat_as(&sk, "gpt-4o").await;
        assert_eq!(r.status(), 200, "{db:?}");
        let cost: f64 = r.headers()["x-litellm-response-cost"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(cost > 0.0, "{db:?}: gpt-4o is priced");
        assert_eq!(
            r.headers()["x-llmux-response-cost"],
            r.headers()["x-litellm-response-cost"]
        );
        let v: Value = r.json().await.unwrap();
        let usage = &v["usage"];
        let expected = usage["prompt_tokens"].as_f64().unwrap() * 2.5e-6
            + usage["completion_tokens"].as_f64().unwrap() * 1e-5;
        assert!(
            (cost - expected).abs() < 1e-12,
            "{db:?}: {cost} vs {expected}"
        );

        // A model outside the key's list is refused.
        let r = h.chat_as(&sk, "other").await;
        assert_eq!(r.status(), 403, "{db:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "model_not_allowed"
        );

        // /key/info shows the spend at once; /spend/logs once written.
        let info: Value = h.get_json(MASTER, &format!("/key/info?key={sk}")).await;
        assert!(
            (info["info"]["spend"].as_f64().unwrap() - cost).abs() < 1e-12,
            "{db:?}: {info}"
        );
        assert_eq!(info["info"]["key_alias"], "ci-key");
        assert_eq!(info["info"]["metadata"]["team"], "core");
        h.flush_spend().await;
        let logs: Value = h
            .get_json(MASTER, &format!("/spend/logs?api_key={sk}"))
            .await;
        let logs = logs.as_array().unwrap();
        // One row per request that reached a model; a refusal at the gate spends nothing and is
        // not logged.
        assert_eq!(logs.len(), 1, "{db:?}: {logs:?}");
        let ok = logs.iter().find(|l| l["status"] == "success").unwrap();
        assert_eq!(ok["model_group"], "gpt-4o");
        assert_eq!(
            ok["request_tags"],
            json!(["ci"]),
            "the key's tags tag its requests"
        );
        assert!((ok["spend"].as_f64().unwrap() - cost).abs() < 1e-12);

        // The key can read its own info without naming itself.
        let own: Value = h.get_json(&sk, "/key/info").await;
        assert_eq!(own["info"]["key_alias"], "ci-key", "{db:?}");

        // List, update, block, unblock, regenerate, delete.
        let list: Value = h.get_json(MASTER, "/key/list").await;
        assert_eq!(list["total_count"], 1, "{db:?}");
        h.admin(
            "/key/update",
            json!({"key": sk, "models": ["gpt-4o", "cheap", "other"], "max_budget": 20.0}),
        )
        .await;
        assert_eq!(
            h.chat_as(&sk, "other").await.status(),
            200,
            "{db:?}: update applies at once"
        );
        h.admin("/key/block", json!({"key": sk})).await;
        let r = h.chat_as(&sk, "cheap").await;
        assert_eq!(r.status(), 401, "{db:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "key_blocked"
        );
        h.admin("/key/unblock", json!({"key": sk})).await;
        assert_eq!(h.chat_as(&sk, "cheap").await.status(), 200);
        let new_sk = h.admin("/key/regenerate", json!({"key": sk})).await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(new_sk, sk);
        assert_eq!(
            h.chat_as(&sk, "cheap").await.status(),
            401,
            "{db:?}: the old key is gone"
        );
        assert_eq!(h.chat_as(&new_sk, "cheap").await.status(), 200);
        let deleted = h.admin("/key/delete", json!({"keys": [new_sk]})).await;
        assert_eq!(deleted["deleted_keys"], json!([new_sk]));
        assert_eq!(h.chat_as(&new_sk, "cheap").await.status(), 401);

        // Bad input is a clear 400.
        let r = h
            .post_as(MASTER, "/key/generate", &json!({"max_budget": "lots"}))
            .await;
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["param"],
            "max_budget"
        );
        let r = h
            .post_as(
                MASTER,
                "/key/generate",
                &json!({"budget_duration": "fortnight"}),
            )
            .await;
        assert_eq!(r.status(), 400);
        let r = h.post_as(MASTER, "/key/info", &json!({})).await;
        assert_eq!(r.status(), 405);
    }
}

#[tokio::test]
async fn expired_keys_and_aliases() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let sk = key(
        &h,
        json!({"duration": "30s", "aliases": {"gpt-4": "cheap"}}),
    )
    .await;
    let r = h
        .post_as(
            &sk,
            "/v1/chat/completions",
            &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "x_extra": {"kept": [1, 2]}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-llmux-model-group"],
        "cheap",
        "the key's alias routes gpt-4"
    );
    let upstream = h.last_upstream_body();
    assert_eq!(upstream["x_extra"], json!({"kept": [1, 2]}), "{upstream}");
    assert_eq!(upstream["messages"][0]["content"], "hi", "{upstream}");
    // The governed path parses the body itself: a body that is not a JSON object is the
    // client's 400, as without governance.
    for bad in [&b"{not json"[..], b"[1,2]", b""] {
        let r = h
            .http
            .post(format!("{}/v1/chat/completions", h.url))
            .bearer_auth(&sk)
            .header("content-type", "application/json")
            .body(bad.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_json"
        );
    }
    h.clock
        .fetch_add(31_000, std::sync::atomic::Ordering::SeqCst);
    let r = h.chat_as(&sk, "cheap").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "key_expired"
    );
}

/// A key's stored id (its SHA-256, shown by `/key/list` and in spend logs) opens the
/// management lookups but is not itself a credential.
#[tokio::test]
async fn a_key_digest_is_not_a_credential() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let generated = h.admin("/key/generate", json!({})).await;
    let sk = generated["key"].as_str().unwrap().to_owned();
    let digest = generated["token_id"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 64, "{generated}");
    assert_eq!(h.chat_as(&sk, "cheap").await.status(), 200);
    let r = h.chat_as(&digest, "cheap").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
}

/// Each role against each route: (path, method, body, allowed for
/// [proxy_admin, proxy_admin_viewer, internal_user, internal_user_viewer]).
#[tokio::test]
async fn roles_are_checked_on_every_management_route() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let team = h.admin("/team/new", json!({"team_alias": "t"})).await["team_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut keys = Vec::new();
        for role in [
            "proxy_admin",
            "proxy_admin_viewer",
            "internal_user",
            "internal_user_viewer",
        ] {
            let u = h
                .admin(
                    "/user/new",
                    json!({"user_id": format!("u-{role}"), "user_role": role}),
                )
                .await;
            keys.push(u["key"].as_str().unwrap().to_owned());
        }
        let cases: Vec<(&str, &str, Value, [bool; 4])> = vec![
            (
                "/key/generate",
                "POST",
                json!({}),
                [true, false, true, false],
            ),
            (
                "/user/new",
                "POST",
                json!({"auto_create_key": false}),
                [true, false, false, false],
            ),
            ("/team/new", "POST", json!({}), [true, false, false, false]),
            (
                "/organization/new",
                "POST",
                json!({}),
                [true, false, false, false],
            ),
            (
                "/customer/new",
                "POST",
                json!({"user_id": "c"}),
                [true, false, false, false],
            ),
            (
                "/budget/new",
                "POST",
                json!({"max_budget": 1}),
                [true, false, false, false],
            ),
            ("/user/list", "GET", json!(null), [true, true, false, false]),
            (
                "/global/spend",
                "GET",
                json!(null),
                [true, true, false, false],
            ),
            (
                "/global/spend/keys",
                "GET",
                json!(null),
                [true, true, false, false],
            ),
            (
                "/customer/list",
                "GET",
                json!(null),
                [true, true, false, false],
            ),
            ("/key/list", "GET", json!(null), [true, true, true, true]),
            ("/spend/logs", "GET", json!(null), [true, true, true, true]),
            (
                "/team/update",
                "POST",
                json!({"team_id": team, "team_alias": "t2"}),
                [true, false, false, false],
            ),
            (
                "/key/delete",
                "POST",
                json!({"keys": ["STRANGER"]}),
                [true, false, false, false],
            ),
            (
                "/key/info?key=STRANGER",
                "GET",
                json!(null),
                [true, true, false, false],
            ),
            (
                "/model/new",
                "POST",
                json!({"model_name": "x", "litellm_params": {"model": "mock/x"}}),
                [true, false, false, false],
            ),
        ];
        for (path, method, body, allowed) in &cases {
            for (i, k) in keys.iter().enumerate() {
                // Someone else's key, fresh for each attempt (an allowed delete removes it).
                let stranger = key(&h, json!({"user_id": "someone-else"})).await;
                let path = path.replace("STRANGER", &stranger);
                let body: Value =
                    serde_json::from_str(&body.to_string().replace("STRANGER", &stranger)).unwrap();
                let body = match (path.as_str(), i) {
                    // Unique ids so repeated admin creations do not collide.
                    ("/customer/new", _) => json!({"user_id": format!("c{i}")}),
                    ("/model/new", _) => {
                        json!({"model_name": format!("x{i}"), "litellm_params": {"model": "mock/x"}})
                    }
                    _ => body.clone(),
                };
                let r = if *method == "GET" {
                    h.get_as(k, &path).await
                } else {
                    h.post_as(k, &path, &body).await
                };
                let status = r.status().as_u16();
                if allowed[i] {
                    assert_eq!(
                        status,
                        200,
                        "{db:?} role {i} {path}: {}",
                        r.text().await.unwrap()
                    );
                } else {
                    assert_eq!(status, 403, "{db:?} role {i} {path}");
                }
            }
        }
        // A user's listing holds only their own keys; its spend logs only their requests.
        let mine: Value = h
            .get_json(&keys[2], "/key/list?return_full_object=true")
            .await;
        assert!(
            mine["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["user_id"] == "u-internal_user"),
            "{db:?}: {mine}"
        );
        assert!(
            mine["total_count"].as_u64().unwrap() >= 2,
            "their user key and the one they made"
        );
        // A user makes keys for themselves only: naming someone else is refused (the matrix in
        // tests/authorization.rs holds every such case).
        let r = h
            .post_as(
                &keys[2],
                "/key/generate",
                &json!({"user_id": "u-proxy_admin"}),
            )
            .await;
        assert_eq!(r.status(), 403, "{db:?}");
        // The master key can do anything; an unknown key nothing.
        assert_eq!(h.get_as("sk-nope", "/key/list").await.status(), 401);
    }
}

#[tokio::test]
async fn a_hundred_concurrent_requests_cannot_overspend_a_small_budget() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        // Each request: 20 completion tokens at 0.002 and about 9 prompt tokens at 0.001, so about
        // 0.05 (estimated at 0.065 before it runs); the budget admits a handful.
        let sk = key(&h, json!({"max_budget": 0.25})).await;
        let body = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20});
        let answers = futures_util::future::join_all(
            (0..100).map(|_| h.post_as(&sk, "/v1/chat/completions", &body)),
        )
        .await;
        let mut ok = 0;
        let mut spent_by_answers = 0.0;
        for r in answers {
            match r.status().as_u16() {
                200 => {
                    ok += 1;
                    spent_by_answers += r.headers()["x-litellm-response-cost"]
                        .to_str()
                        .unwrap()
                        .parse::<f64>()
                        .unwrap();
                }
                400 => {
                    let e: Value = r.json().await.unwrap();
                    assert_eq!(e["error"]["type"], "budget_exceeded", "{db:?}");
                }
                other => panic!("{db:?}: unexpected status {other}"),
            }
        }
        assert!(ok >= 1, "{db:?}");
        // LiteLLM's rule: admitted while spend + reservations are below the budget, so the last
        // request admitted may go over it by at most its own cost (estimated at 0.065 here).
        assert!(
            spent_by_answers <= 0.25 + 0.065 + 1e-9,
            "{db:?}: {ok} answers spent {spent_by_answers}"
        );
        h.flush_spend().await;
        let info: Value = h.get_json(MASTER, &format!("/key/info?key={sk}")).await;
        let stored = h
            .gov
            .as_ref()
            .unwrap()
            .store
            .get(
                llmux_store::Kind::Key,
                info["info"]["token"].as_str().unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(
            (stored.spend - spent_by_answers).abs() < 1e-9,
            "{db:?}: stored {} vs {}",
            stored.spend,
            spent_by_answers
        );
        // Nothing is left reserved: the budget's remainder is usable by a request that fits.
        assert_eq!(h.gov.as_ref().unwrap().in_flight(), 0);
    }
}

#[tokio::test]
async fn budgets_reset_at_their_period_boundaries() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let sk = key(&h, json!({"max_budget": 0.04, "budget_duration": "30s"})).await;
        let body = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20});
        assert_eq!(
            h.post_as(&sk, "/v1/chat/completions", &body).await.status(),
            200,
            "{db:?}"
        );
        let r = h.post_as(&sk, "/v1/chat/completions", &body).await;
        assert_eq!(
            r.status(),
            400,
            "{db:?}: the first request used most of the budget"
        );
        h.flush_spend().await;
        let gov = h.gov.as_ref().unwrap();
        // 29 s later: same period.
        h.clock
            .fetch_add(29_000, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(gov.run_budget_resets().await.unwrap(), 0);
        assert_eq!(
            h.post_as(&sk, "/v1/chat/completions", &body).await.status(),
            400
        );
        // Past the boundary: a new period.
        h.clock
            .fetch_add(1_001, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(gov.run_budget_resets().await.unwrap(), 1, "{db:?}");
        let info: Value = h.get_json(MASTER, &format!("/key/info?key={sk}")).await;
        assert_eq!(info["info"]["spend"], 0.0, "{db:?}: {info}");
        assert_eq!(
            h.post_as(&sk, "/v1/chat/completions", &body).await.status(),
            200,
            "{db:?}"
        );

        // A monthly budget resets at 00:00 UTC on the 1st.
        let monthly = h
            .admin(
                "/key/generate",
                json!({"max_budget": 1, "budget_duration": "1mo"}),
            )
            .await;
        let reset = monthly["budget_reset_at"].as_str().unwrap();
        assert!(reset.ends_with("-01T00:00:00.000Z"), "{db:?}: {reset}");
        // A daily team budget at the next UTC midnight.
        let team = h
            .admin(
                "/team/new",
                json!({"max_budget": 1, "budget_duration": "1d"}),
            )
            .await;
        assert!(team["budget_reset_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00.000Z"));
    }
}

#[tokio::test]
async fn user_team_and_end_user_budgets_apply_to_keys() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let body = |user: Option<&str>| {
            let mut b = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20});
            if let Some(u) = user {
                b["user"] = json!(u);
            }
            b
        };
        // Team budget.
        let team = h
            .admin("/team/new", json!({"team_alias": "t", "max_budget": 0.04}))
            .await;
        let team_id = team["team_id"].as_str().unwrap();
        let sk = key(&h, json!({"team_id": team_id})).await;
        assert_eq!(
            h.post_as(&sk, "/v1/chat/completions", &body(None))
                .await
                .status(),
            200
        );
        let r = h.post_as(&sk, "/v1/chat/completions", &body(None)).await;
        assert_eq!(r.status(), 400, "{db:?}");
        assert!(r.text().await.unwrap().contains("Team"));
        // End-user (customer) budget and block.
        h.admin(
            "/customer/new",
            json!({"user_id": "end-1", "max_budget": 0.04}),
        )
        .await;
        let sk2 = key(&h, json!({})).await;
        assert_eq!(
            h.post_as(&sk2, "/v1/chat/completions", &body(Some("end-1")))
                .await
                .status(),
            200
        );
        assert_eq!(
            h.post_as(&sk2, "/v1/chat/completions", &body(Some("end-1")))
                .await
                .status(),
            400,
            "{db:?}"
        );
        assert_eq!(
            h.post_as(&sk2, "/v1/chat/completions", &body(Some("end-2")))
                .await
                .status(),
            200,
            "others are not limited"
        );
        let r = h
            .post_as(MASTER, "/customer/block", &json!({"user_ids": ["end-2"]}))
            .await;
        assert_eq!(r.status(), 404, "{db:?}: end-2 was never created");
        h.admin(
            "/customer/new",
            json!({"user_id": "end-3", "blocked": true}),
        )
        .await;
        assert_eq!(
            h.post_as(&sk2, "/v1/chat/completions", &body(Some("end-3")))
                .await
                .status(),
            403
        );
        // User budget.
        let user = h
            .admin("/user/new", json!({"user_id": "ub", "max_budget": 0.04}))
            .await;
        let uk = user["key"].as_str().unwrap();
        assert_eq!(
            h.post_as(uk, "/v1/chat/completions", &body(None))
                .await
                .status(),
            200
        );
        assert_eq!(
            h.post_as(uk, "/v1/chat/completions", &body(None))
                .await
                .status(),
            400,
            "{db:?}"
        );
        // A blocked team blocks its keys.
        h.admin("/team/block", json!({"team_id": team_id})).await;
        let r = h.post_as(&sk, "/v1/chat/completions", &body(None)).await;
        assert_eq!(r.status(), 401);
        // Spend rolls up to the team and the user.
        h.flush_spend().await;
        let info: Value = h
            .get_json(MASTER, &format!("/team/info?team_id={team_id}"))
            .await;
        assert!(
            info["team_info"]["spend"].as_f64().unwrap() > 0.0,
            "{db:?}: {info}"
        );
        let info: Value = h.get_json(MASTER, "/user/info?user_id=ub").await;
        assert!(info["user_info"]["spend"].as_f64().unwrap() > 0.0);
        assert_eq!(info["keys"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn rate_limits_hold_under_concurrency_with_headers() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let sk = key(&h, json!({"rpm_limit": 5})).await;
        let answers =
            futures_util::future::join_all((0..20).map(|_| h.chat_as(&sk, "cheap"))).await;
        let ok = answers.iter().filter(|r| r.status() == 200).count();
        assert_eq!(ok, 5, "{db:?}");
        let limited = answers.iter().find(|r| r.status() == 429).unwrap();
        assert_eq!(limited.headers()["x-ratelimit-remaining-requests"], "0");
        assert_eq!(limited.headers()["x-ratelimit-limit-requests"], "5");
        assert!(limited.headers()["x-ratelimit-reset-requests"]
            .to_str()
            .unwrap()
            .ends_with('s'));
        assert!(limited.headers().contains_key("retry-after"));
        let fine = answers.iter().find(|r| r.status() == 200).unwrap();
        assert!(
            fine.headers()["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                < 5
        );

        // Parallel requests: slow answers, at most two at a time.
        let sk = key(&h, json!({"max_parallel_requests": 2})).await;
        h.mock.set_defaults(json!({"latency_ms": 300}));
        let answers = futures_util::future::join_all((0..6).map(|_| h.chat_as(&sk, "cheap"))).await;
        h.mock.set_defaults(json!({}));
        assert_eq!(
            answers.iter().filter(|r| r.status() == 200).count(),
            2,
            "{db:?}"
        );
        assert_eq!(
            h.chat_as(&sk, "cheap").await.status(),
            200,
            "slots are released"
        );

        // Per-model limits on a key.
        let sk = key(&h, json!({"model_rpm_limit": {"cheap": 1}})).await;
        assert_eq!(h.chat_as(&sk, "cheap").await.status(), 200);
        assert_eq!(h.chat_as(&sk, "cheap").await.status(), 429, "{db:?}");
        assert_eq!(
            h.chat_as(&sk, "other").await.status(),
            200,
            "another model is not limited"
        );

        // Tokens per minute: the first request's tokens use up a tiny tpm.
        let sk = key(&h, json!({"tpm_limit": 10})).await;
        assert_eq!(h.chat_as(&sk, "cheap").await.status(), 200);
        let r = h.chat_as(&sk, "cheap").await;
        assert_eq!(r.status(), 429, "{db:?}");
        assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "0");
    }
}

#[tokio::test]
async fn spend_matches_the_pricing_fixture_and_rolls_up() {
    let fixture = format!(
        "{}/../../tests/fixtures/pricing/model_prices_and_context_window.json",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let table = llmux::pricing::fetch_table(&fixture).await.unwrap();
        h.client.pricing().replace(table);
        let sk = key(&h, json!({"tags": ["x"]})).await;
        let mut expected = 0.0;
        for _ in 0..3 {
            let r = h
                .post_as(&sk, "/v1/chat/completions", &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "count to three"}], "metadata": {"tags": ["prod"]}}))
                .await;
            let v: Value = r.json().await.unwrap();
            let u = &v["usage"];
            // gpt-4o in the fixture: 2.5e-6 in, 1e-5 out.
            expected += u["prompt_tokens"].as_f64().unwrap() * 2.5e-6
                + u["completion_tokens"].as_f64().unwrap() * 1e-5;
        }
        h.flush_spend().await;
        let logs: Value = h
            .get_json(MASTER, &format!("/spend/logs?api_key={sk}"))
            .await;
        let total: f64 = logs
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["spend"].as_f64().unwrap())
            .sum();
        assert!(
            (total - expected).abs() < 1e-12,
            "{db:?}: {total} vs {expected}"
        );
        let global: Value = h.get_json(MASTER, "/global/spend").await;
        assert!(
            (global["spend"].as_f64().unwrap() - expected).abs() < 1e-12,
            "{db:?}: {global}"
        );
        let models: Value = h.get_json(MASTER, "/global/spend/models").await;
        assert_eq!(models[0]["model"], "gpt-4o");
        let tags: Value = h.get_json(MASTER, "/spend/tags").await;
        assert_eq!(
            tags["spend_per_tag"][0]["individual_request_tag"], "prod",
            "{db:?}: {tags}"
        );
        assert_eq!(tags["spend_per_tag"][0]["log_count"], 3);
        let keys: Value = h.get_json(MASTER, "/global/spend/keys?limit=5").await;
        assert!((keys[0]["total_spend"].as_f64().unwrap() - expected).abs() < 1e-12);
    }
}

#[tokio::test]
async fn models_added_through_the_api_route_without_a_restart() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        assert_eq!(h.chat_as(MASTER, "fresh").await.status(), 404);
        let added = h
            .admin("/model/new", json!({"model_name": "fresh", "litellm_params": {"model": "openai/fresh", "api_base": h.mock_url, "api_key": "secret-upstream-key"}, "model_info": {"id": "fresh-1"}}))
            .await;
        assert!(
            added["litellm_params"].get("api_key").is_none(),
            "secrets are not returned"
        );
        assert_eq!(h.chat_as(MASTER, "fresh").await.status(), 200, "{db:?}");
        let info: Value = h.get_json(MASTER, "/model/info").await;
        assert!(info["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["model_name"] == "fresh"));
        assert!(!info.to_string().contains("secret-upstream-key"));
        let bad = h
            .post_as(MASTER, "/model/new", &json!({"model_name": "x"}))
            .await;
        assert_eq!(bad.status(), 400);
        h.admin("/model/delete", json!({"id": "fresh-1"})).await;
        assert_eq!(h.chat_as(MASTER, "fresh").await.status(), 404, "{db:?}");
    }
}

#[tokio::test]
async fn organizations_budgets_and_members() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let org = h
            .admin(
                "/organization/new",
                json!({"organization_alias": "acme", "max_budget": 100}),
            )
            .await;
        let org_id = org["organization_id"].as_str().unwrap().to_owned();
        let team = h.admin("/team/new", json!({"team_alias": "t", "organization_id": org_id, "members_with_roles": [{"role": "admin", "user_id": "lead"}]})).await;
        let team_id = team["team_id"].as_str().unwrap().to_owned();
        h.admin(
            "/user/new",
            json!({"user_id": "dev", "auto_create_key": false}),
        )
        .await;
        h.admin(
            "/team/member_add",
            json!({"team_id": team_id, "member": {"role": "user", "user_id": "dev"}}),
        )
        .await;
        let info: Value = h
            .get_json(MASTER, &format!("/team/info?team_id={team_id}"))
            .await;
        assert_eq!(
            info["team_info"]["members_with_roles"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "{db:?}"
        );
        let user: Value = h.get_json(MASTER, "/user/info?user_id=dev").await;
        assert_eq!(user["user_info"]["teams"], json!([team_id]));
        // The team admin manages the team's keys; a plain member does not.
        let lead = h.admin("/user/new", json!({"user_id": "lead"})).await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = h
            .post_as(&lead, "/key/generate", &json!({"team_id": team_id}))
            .await;
        assert_eq!(r.status(), 200, "{db:?}: {}", r.text().await.unwrap());
        let dev_key = key(&h, json!({"user_id": "dev"})).await;
        let r = h
            .post_as(&dev_key, "/key/generate", &json!({"team_id": team_id}))
            .await;
        assert_eq!(r.status(), 403);
        h.admin(
            "/team/member_delete",
            json!({"team_id": team_id, "user_id": "dev"}),
        )
        .await;
        let org_info: Value = h
            .get_json(
                MASTER,
                &format!("/organization/info?organization_id={org_id}"),
            )
            .await;
        assert_eq!(org_info["teams"].as_array().unwrap().len(), 1);
        let r = h
            .http
            .patch(format!("{}/organization/update", h.url))
            .bearer_auth(MASTER)
            .json(&json!({"organization_id": org_id, "max_budget": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let list: Value = h.get_json(MASTER, "/organization/list").await;
        assert_eq!(list[0]["max_budget"], 5);
        // Shared budgets.
        h.admin(
            "/budget/new",
            json!({"budget_id": "small", "max_budget": 0.04}),
        )
        .await;
        h.admin(
            "/customer/new",
            json!({"user_id": "shared-end-user", "budget_id": "small"}),
        )
        .await;
        let sk = key(&h, json!({})).await;
        let b = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "user": "shared-end-user"});
        assert_eq!(
            h.post_as(&sk, "/v1/chat/completions", &b).await.status(),
            200
        );
        assert_eq!(
            h.post_as(&sk, "/v1/chat/completions", &b).await.status(),
            400,
            "{db:?}: the shared budget applies"
        );
        let budgets: Value = h.get_json(MASTER, "/budget/list").await;
        assert_eq!(budgets.as_array().unwrap().len(), 1);
        let deleted = h
            .http
            .delete(format!("{}/organization/delete", h.url))
            .bearer_auth(MASTER)
            .json(&json!({"organization_ids": [org_id]}))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 200);
    }
}

#[tokio::test]
async fn crossing_a_soft_budget_alerts_once() {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let sink = {
        let received = std::sync::Arc::clone(&received);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                let received = std::sync::Arc::clone(&received);
                async move {
                    received.lock().unwrap().push(v);
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, sink).await.unwrap() });
    let yaml = format!("{MODELS}llmux_settings: {{alert_webhook_url: \"http://{addr}/hook\"}}\n");
    let h = start_governed(&yaml, Db::Sqlite).await;
    let sk = key(
        &h,
        json!({"soft_budget": 0.01, "max_budget": 10, "key_alias": "soft"}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(h.chat_as(&sk, "cheap").await.status(), 200);
    }
    for _ in 0..100 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one alert per period: {got:?}");
    assert_eq!(got[0]["event"], "soft_budget_crossed");
    assert_eq!(got[0]["type"], "Key");
    assert_eq!(got[0]["soft_budget"], 0.01);
    assert!(got[0]["spend"].as_f64().unwrap() >= 0.01);
}

#[tokio::test]
async fn an_unpriced_model_costs_zero_and_is_counted() {
    let yaml = MODELS.replace(
        "router_settings:",
        "  - model_name: unpriced\n    litellm_params: {model: openai/no-price-for-this, api_base: \"{mock}\", api_key: k}\nrouter_settings:",
    );
    let h = start_governed(&yaml, Db::Sqlite).await;
    let r = h.chat_as(MASTER, "unpriced").await;
    assert_eq!(r.status(), 200, "never an error");
    assert_eq!(r.headers()["x-litellm-response-cost"], "0");
    assert_eq!(h.chat_as(MASTER, "unpriced").await.status(), 200);
    h.flush_spend().await;
    let text = h
        .http
        .get(format!("{}/metrics", h.url))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("llmux_unpriced_requests_total 2"), "{text}");
    assert!(
        text.contains("llmux_spend_records_written_total 2"),
        "{text}"
    );
    assert!(
        text.contains("llmux_governed_requests_in_flight 0"),
        "{text}"
    );
    // The master key is checked without reading the database.
    assert!(text.contains("llmux_governance_lookups_total 0"), "{text}");
}

#[tokio::test]
async fn streamed_requests_are_charged() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let sk = key(&h, json!({"max_budget": 10})).await;
        let r = h
            .post_as(&sk, "/v1/chat/completions", &json!({"model": "cheap", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n") && !text.contains("\"usage\""));
        h.flush_spend().await;
        let logs: Value = h
            .get_json(MASTER, &format!("/spend/logs?api_key={sk}"))
            .await;
        let row = &logs[0];
        assert_eq!(row["completion_tokens"], 20, "{db:?}: {row}");
        let expected = row["prompt_tokens"].as_f64().unwrap() * 0.001 + 20.0 * 0.002;
        assert!(
            (row["spend"].as_f64().unwrap() - expected).abs() < 1e-12,
            "{db:?}"
        );
        assert!(
            row["completionStartTime"].is_string(),
            "time to first token is recorded"
        );
    }
}

/// Issue 17, finding 5: ten requests reusing one `x-request-id` left one spend-log row and a
/// tenth of the spend, and another key's request with the same id vanished from its logs.
#[tokio::test]
async fn reused_client_request_ids_never_collapse_spend_logs() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let a = key(&h, json!({})).await;
        let b = key(&h, json!({})).await;
        let body = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]});
        let mut total = 0.0;
        let mut own_ids = std::collections::HashSet::new();
        for sk in std::iter::repeat_n(&a, 10).chain([&b]) {
            let r = h
                .http
                .post(format!("{}/v1/chat/completions", h.url))
                .bearer_auth(sk)
                .header("x-request-id", "reused-id")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-request-id"], "reused-id");
            own_ids.insert(
                r.headers()["x-litellm-call-id"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            total += r.headers()["x-litellm-response-cost"]
                .to_str()
                .unwrap()
                .parse::<f64>()
                .unwrap();
        }
        assert_eq!(own_ids.len(), 11, "{db:?}");
        h.flush_spend().await;
        let rows: Value = h
            .get_json(MASTER, "/spend/logs?client_request_id=reused-id")
            .await;
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 11, "{db:?}: {rows:?}");
        let logged: f64 = rows.iter().map(|r| r["spend"].as_f64().unwrap()).sum();
        assert!((logged - total).abs() < 1e-9, "{db:?}: {logged} vs {total}");
        let b_rows: Value = h.get_json(&b, "/spend/logs").await;
        assert_eq!(b_rows.as_array().unwrap().len(), 1, "{db:?}: {b_rows}");
        assert_eq!(b_rows[0]["client_request_id"], "reused-id");
        let global: Value = h.get_json(MASTER, "/global/spend").await;
        assert!(
            (global["spend"].as_f64().unwrap() - total).abs() < 1e-9,
            "{db:?}: {global}"
        );
    }
}

/// Issue 17, finding 13: an admin could point a model at any URL with any of the gateway's
/// environment variables as its key.
#[tokio::test]
async fn api_models_read_only_allow_listed_environment_variables() {
    // Set once for this test process: names unique to this test.
    std::env::set_var("LLMUX_TEST_ALLOWED_UPSTREAM_KEY", "allowed-secret");
    std::env::set_var("LLMUX_TEST_GATEWAY_SECRET", "gateway-secret");
    let yaml =
        format!("{MODELS}\nllmux_settings: {{api_model_env_allowlist: [LLMUX_TEST_ALLOWED_*]}}\n");
    let h = start_governed(&yaml, Db::Sqlite).await;
    for reference in [
        "os.environ/LLMUX_TEST_GATEWAY_SECRET",
        "${LLMUX_TEST_GATEWAY_SECRET}",
        "Bearer ${LLMUX_TEST_GATEWAY_SECRET}",
    ] {
        let r = h
            .post_as(
                MASTER,
                "/model/new",
                &json!({"model_name": "exfil", "litellm_params": {"model": "openai/x", "api_base": h.mock_url, "api_key": reference}}),
            )
            .await;
        assert_eq!(r.status(), 403, "{reference}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "env_not_allowed", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("LLMUX_TEST_GATEWAY_SECRET"));
    }
    let r = h
        .post_as(
            MASTER,
            "/model/update",
            &json!({"model_info": {"id": "nope"}, "litellm_params": {"api_key": "os.environ/LLMUX_TEST_GATEWAY_SECRET"}}),
        )
        .await;
    assert_eq!(r.status(), 404, "an unknown model is not found first");
    h.admin(
        "/model/new",
        json!({"model_name": "allowed", "litellm_params": {"model": "openai/allowed", "api_base": h.mock_url, "api_key": "os.environ/LLMUX_TEST_ALLOWED_UPSTREAM_KEY"}, "model_info": {"id": "allowed-1"}}),
    )
    .await;
    assert_eq!(h.chat_as(MASTER, "allowed").await.status(), 200);
    let sent = h.recorded();
    let last = sent.last().unwrap();
    assert!(
        last.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Bearer allowed-secret"),
        "{:?}",
        last.headers
    );
    // Changing the model to read a secret is refused too.
    let r = h
        .post_as(
            MASTER,
            "/model/update",
            &json!({"model_info": {"id": "allowed-1"}, "litellm_params": {"api_key": "os.environ/LLMUX_TEST_GATEWAY_SECRET"}}),
        )
        .await;
    assert_eq!(r.status(), 403);
}

/// Issue 17, finding 4: a client that read every content chunk and left before the usage chunk
/// was billed nothing.
#[tokio::test]
async fn abandoned_streams_are_billed_for_what_was_delivered() {
    use futures_util::StreamExt;
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        h.admin(
            "/user/new",
            json!({"user_id": "leaver", "auto_create_key": false}),
        )
        .await;
        let t = h.admin("/team/new", json!({})).await["team_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let sk = key(&h, json!({"user_id": "leaver", "team_id": t})).await;
        let body = json!({"model": "cheap", "stream": true,
            "messages": [{"role": "user", "content": "tell me a long story about the sea"}],
            "mock_options": {"chunks": 8, "usage_delay_ms": 3000}});
        let r = h.post_as(&sk, "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200);
        let mut stream = r.bytes_stream();
        let mut seen = String::new();
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("\"finish_reason\":\"stop\"") {
                break;
            }
        }
        drop(stream);
        assert!(!seen.contains("\"usage\""), "left before the usage chunk");
        h.flush_spend().await;
        let logs: Value = h
            .get_json(MASTER, &format!("/spend/logs?api_key={sk}"))
            .await;
        let row = &logs[0];
        assert_eq!(row["error_kind"], "client_disconnected", "{db:?}: {row}");
        let prompt = row["prompt_tokens"].as_u64().unwrap();
        let completion = row["completion_tokens"].as_u64().unwrap();
        assert!(prompt >= 8, "{db:?}: {row}");
        assert!((8..=24).contains(&completion), "{db:?}: {row}");
        let expected = prompt as f64 * 0.001 + completion as f64 * 0.002;
        let spend = row["spend"].as_f64().unwrap();
        assert!((spend - expected).abs() < 1e-12, "{db:?}: {row}");
        // Key, user and team are billed alike.
        for (path, pick) in [
            (format!("/key/info?key={sk}"), "/info/spend"),
            ("/user/info?user_id=leaver".to_owned(), "/user_info/spend"),
            (format!("/team/info?team_id={t}"), "/team_info/spend"),
        ] {
            let v: Value = h.get_json(MASTER, &path).await;
            let got = v.pointer(pick).and_then(Value::as_f64).unwrap();
            assert!((got - spend).abs() < 1e-12, "{db:?} {path}: {v}");
        }
    }
}

/// Issue 17, finding 7: 50 concurrent streams on a 0.5 budget with `max_tokens: 5`, from an
/// upstream that ignores it, spent 50.04. The reservation covers `n`, and with
/// `budget_stream_cutoff` a stream past its reservation reserves more as it runs and ends with
/// a budget error event when there is no room.
#[tokio::test]
async fn budgets_hold_when_the_upstream_ignores_max_tokens() {
    use futures_util::StreamExt;
    async fn run(cutoff: bool, db: Db) -> (f64, usize, usize) {
        let yaml = format!("{MODELS}\nllmux_settings: {{budget_stream_cutoff: {cutoff}}}\n");
        let h = start_governed(&yaml, db).await;
        let sk = key(&h, json!({"max_budget": 0.5})).await;
        let body = json!({"model": "cheap", "stream": true, "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "mock_options": {"chunks": 100, "chunk_delay_ms": 2}});
        let answers = futures_util::future::join_all((0..50).map(|_| async {
            let r = h.post_as(&sk, "/v1/chat/completions", &body).await;
            if r.status() != 200 {
                return (false, false);
            }
            let mut text = String::new();
            let mut s = r.bytes_stream();
            while let Some(c) = s.next().await {
                text.push_str(&String::from_utf8_lossy(&c.unwrap()));
            }
            (true, text.contains("budget_exceeded"))
        }))
        .await;
        let admitted = answers.iter().filter(|a| a.0).count();
        let cut = answers.iter().filter(|a| a.1).count();
        h.flush_spend().await;
        let info: Value = h.get_json(MASTER, &format!("/key/info?key={sk}")).await;
        (info["info"]["spend"].as_f64().unwrap(), admitted, cut)
    }
    for db in BACKENDS {
        let (uncut, admitted, _) = run(false, db).await;
        assert!(admitted > 1, "{db:?}");
        assert!(
            uncut > 1.0,
            "{db:?}: without the cutoff the upstream overspends ({uncut})"
        );
        let (spent, admitted, cut) = run(true, db).await;
        eprintln!(
            "{db:?}: without cutoff {uncut:.4}, with {spent:.4} ({admitted} admitted, {cut} cut)"
        );
        assert!(
            admitted > 1 && cut > 0,
            "{db:?}: {admitted} admitted, {cut} cut"
        );
        assert!(spent <= 0.5 * 1.1, "{db:?}: spent {spent} of 0.5");
        assert!(
            spent >= 0.4,
            "{db:?}: the budget is used, not refused: {spent}"
        );
    }
}

/// The reservation of a request in flight covers every choice it asked for: while ten choices
/// of 100 tokens at 0.002 (2.0) are in flight, a budget of 1.0 has no room for another request;
/// while one is (0.2), it has.
#[tokio::test]
async fn the_reservation_covers_every_choice_asked_for() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let ask = |n: u64, slow: bool| {
        json!({"model": "cheap", "max_tokens": 100, "n": n, "messages": [{"role": "user", "content": "hi"}],
               "mock_options": {"latency_ms": if slow { 1500 } else { 0 }}})
    };
    for (n, room) in [(10, false), (1, true)] {
        let sk = key(&h, json!({"max_budget": 1.0})).await;
        let slow_body = ask(n, true);
        let fast_body = ask(1, false);
        let slow = h.post_as(&sk, "/v1/chat/completions", &slow_body);
        let second = async {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            h.post_as(&sk, "/v1/chat/completions", &fast_body).await
        };
        let (first, second) = tokio::join!(slow, second);
        assert_eq!(first.status(), 200, "n={n}");
        let status = second.status();
        let v: Value = second.json().await.unwrap();
        if room {
            assert_eq!(status, 200, "n={n}: {v}");
        } else {
            assert_eq!(status, 400, "n={n}: {v}");
            assert_eq!(v["error"]["code"], "budget_exceeded");
        }
    }
}

/// Issue 18: a fresh key with `max_budget: 0.0005` refused its very first request ("current
/// spend 0.000000") because a 1,024-token estimate is larger than the budget.
#[tokio::test]
async fn a_fresh_key_with_a_small_budget_answers_its_first_request() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let sk = key(&h, json!({"max_budget": 0.0005})).await;
    assert_eq!(h.chat_as(&sk, "cheap").await.status(), 200);
    let r = h.chat_as(&sk, "cheap").await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("max budget 0.000500"), "{message}");
    assert!(
        !message.contains("current spend 0.000000"),
        "the real spend: {message}"
    );
}

/// A management body is read only after its caller authenticated; a governed gateway answers a
/// stalled body from a stranger at once.
#[tokio::test]
async fn management_bodies_are_read_only_for_authenticated_callers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start_governed(MODELS, Db::Sqlite).await;
    let addr = h.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"POST /key/generate HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{")
        .await
        .unwrap();
    let mut got = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), tcp.read(&mut got))
        .await
        .expect("answered before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&got[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}

/// A client's text with a NUL reaches no database row that could wedge the spend writer
/// (PostgreSQL refuses NUL in text).
#[tokio::test]
async fn control_characters_never_wedge_the_spend_writer() {
    for db in BACKENDS {
        let h = start_governed(MODELS, db).await;
        let sk = key(&h, json!({})).await;
        for body in [
            json!({"model": "cheap", "messages": [{"role": "user", "content": "x"}], "user": "a\u{0}b"}),
            json!({"model": "cheap", "messages": [{"role": "user", "content": "x"}], "metadata": {"tags": ["t\u{0}"]}}),
        ] {
            assert_eq!(
                h.post_as(&sk, "/v1/chat/completions", &body).await.status(),
                400
            );
        }
        // A model name with a NUL fails to route and is logged with the NUL removed.
        let r = h
            .post_as(
                &sk,
                "/v1/chat/completions",
                &json!({"model": "ch\u{0}eap", "messages": [{"role": "user", "content": "x"}]}),
            )
            .await;
        assert_eq!(r.status(), 404);
        assert_eq!(h.chat_as(&sk, "cheap").await.status(), 200);
        h.flush_spend().await;
        let rows: Value = h
            .get_json(MASTER, &format!("/spend/logs?api_key={sk}"))
            .await;
        assert!(
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["status"] == "success"),
            "{db:?}: {rows}"
        );
        // Names with control characters are refused by the management API.
        let r = h
            .post_as(MASTER, "/key/generate", &json!({"key_alias": "a\u{0}b"}))
            .await;
        assert_eq!(r.status(), 400, "{db:?}");
        let r = h
            .post_as(MASTER, "/user/new", &json!({"user_id": "u\u{1b}[2K"}))
            .await;
        assert_eq!(r.status(), 400, "{db:?}");
    }
}

/// A model added through the API does not fall back on the operator's provider keys (nor read
/// credentials files): pointed at an address of the admin's choosing, it sends nothing secret.
#[tokio::test]
async fn api_models_do_not_fall_back_on_the_operators_keys() {
    std::env::set_var("DEEPSEEK_API_KEY", "operator-secret");
    let h = start_governed(MODELS, Db::Sqlite).await;
    h.admin(
        "/model/new",
        json!({"model_name": "exfil", "litellm_params": {"model": "deepseek/x", "api_base": h.mock_url}, "model_info": {"id": "exfil-1"}}),
    )
    .await;
    let _ = h.chat_as(MASTER, "exfil").await;
    let sent = h.recorded();
    assert!(!sent.is_empty(), "the model was called");
    assert!(
        sent.iter().all(|r| r
            .headers
            .iter()
            .all(|(_, v)| !v.contains("operator-secret"))),
        "the operator's key went out: {:?}",
        sent.last().map(|r| &r.headers)
    );
    let r = h
        .post_as(
            MASTER,
            "/model/new",
            &json!({"model_name": "v", "litellm_params": {"model": "vertex_ai/gemini-2.5-flash", "vertex_project": "p", "vertex_location": "us-central1", "vertex_credentials": "/etc/passwd"}}),
        )
        .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "file_not_allowed");
}

/// Issue 17, finding 12: a body past the management API's 1 MiB cap is a 413 in the OpenAI
/// shape (plain text before), declared or streamed.
#[tokio::test]
async fn oversized_management_bodies_are_413_in_the_openai_shape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start_governed(MODELS, Db::Sqlite).await;
    let addr = h.url.trim_start_matches("http://").to_owned();
    let big = vec![b' '; 2 * 1024 * 1024];
    let mut declared = format!(
        "POST /key/generate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {MASTER}\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    declared.extend_from_slice(&big);
    let mut chunked = format!(
        "POST /key/update HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {MASTER}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for request in [declared, chunked] {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // The server may answer and close before it read everything: a failed write is fine.
        let _ = tcp.write_all(&request).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut got))
            .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "{}",
            &text[..text.len().min(300)]
        );
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "request_too_large", "{v}");
    }
}

/// `/v1/messages` is governed like chat completions: a virtual key (sent as `x-api-key`, as the
/// Anthropic SDKs do) is charged the exact cost, its spend log row says `anthropic_messages`, a
/// budget refuses the next request in Anthropic's error shape, and a key's model list holds.
#[tokio::test]
async fn the_messages_api_is_governed_like_chat_completions() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let sk = key(&h, json!({"max_budget": 0.0005, "models": ["cheap"]})).await;
    let send = |model: &'static str, stream: bool| {
        let (h, sk) = (&h, sk.clone());
        async move {
            h.http
                .post(format!("{}/v1/messages", h.url))
                .header("x-api-key", sk)
                .header("anthropic-version", "2023-06-01")
                .json(&json!({"model": model, "max_tokens": 16, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = send("cheap", false).await;
    assert_eq!(r.status(), 200);
    let cost: f64 = r.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let m: Value = r.json().await.unwrap();
    let usage = &m["usage"];
    let expected = usage["input_tokens"].as_f64().unwrap() * 0.001
        + usage["output_tokens"].as_f64().unwrap() * 0.002;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}: {m}");
    h.flush_spend().await;
    let logs = h
        .get_json(MASTER, &format!("/spend/logs?api_key={sk}"))
        .await;
    assert_eq!(logs[0]["call_type"], "anthropic_messages", "{logs}");
    assert!((logs[0]["spend"].as_f64().unwrap() - cost).abs() < 1e-12);

    let r = send("cheap", true).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Budget has been exceeded"),
        "{e}"
    );
    let other = key(&h, json!({"models": ["cheap"]})).await;
    let r = h
        .http
        .post(format!("{}/v1/messages", h.url))
        .header("x-api-key", other)
        .json(&json!({"model": "other", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a model the key may not use");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "permission_error", "{e}");

    // The body the Anthropic dialect carries for Anthropic deployments cannot be smuggled in
    // through the other routes (it would go upstream unpriced by the estimate).
    let smuggler = key(&h, json!({})).await;
    let smuggled = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}],
        "_llmux_anthropic": {"body": {"model": "x", "max_tokens": 100000, "messages": [{"role": "user", "content": "a very long prompt"}]}}});
    let r = h
        .post_as(&smuggler, "/v1/chat/completions", &smuggled)
        .await;
    assert_eq!(r.status(), 400);
    let r = h
        .post_as(&smuggler, "/v1/responses", &json!({"model": "cheap", "input": "hi", "_llmux_anthropic": smuggled["_llmux_anthropic"]}))
        .await;
    assert_eq!(r.status(), 200, "dropped by the Responses dialect");
    assert!(!h
        .recorded()
        .pop()
        .unwrap()
        .body
        .contains("_llmux_anthropic"));
}

/// Stored Responses API answers: `previous_response_id` sends the whole conversation upstream
/// (each stored response keeps only its own turn and a link), a response belongs to its key
/// (another key can neither read, continue nor delete it), and an expired one is gone.
#[tokio::test]
async fn stored_responses_chain_belong_to_their_key_and_expire() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let ada = key(&h, json!({})).await;
    let eve = key(&h, json!({})).await;
    let create = |k: String, body: Value| {
        let h = &h;
        async move {
            let r = h.post_as(&k, "/v1/responses", &body).await;
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = create(
        ada.clone(),
        json!({"model": "cheap", "input": "My name is Ada."}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = create(
        ada.clone(),
        json!({"model": "cheap", "input": "What is my name?", "previous_response_id": first["id"]}),
    )
    .await;
    let (_, third) = create(
        ada.clone(),
        json!({"model": "cheap", "input": "And again?", "previous_response_id": second["id"]}),
    )
    .await;
    assert_eq!(third["previous_response_id"], second["id"]);
    let sent: Value = serde_json::from_str(&h.recorded().pop().unwrap().body).unwrap();
    let users: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["My name is Ada.", "What is my name?", "And again?"]);
    assert_eq!(
        sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count(),
        2,
        "the earlier answers too"
    );
    let gov = h.gov.as_ref().unwrap();
    let stored = gov
        .store
        .get_response(second["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !stored.conversation.contains("My name is Ada."),
        "its own turn only"
    );
    assert_eq!(stored.previous_id, first["id"].as_str().unwrap());

    let id = first["id"].as_str().unwrap();
    assert_eq!(
        h.get_as(&eve, &format!("/v1/responses/{id}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        h.get_as(&eve, &format!("/v1/responses/{id}/input_items"))
            .await
            .status(),
        404
    );
    let (status, _) = create(
        eve.clone(),
        json!({"model": "cheap", "input": "hi", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 404, "no continuing another key's conversation");
    let r = h
        .http
        .delete(format!("{}/v1/responses/{id}", h.url))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        h.get_as(&ada, &format!("/v1/responses/{id}"))
            .await
            .status(),
        200
    );
    let r = h
        .http
        .delete(format!("{}/v1/responses/{id}", h.url))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.get_as(&ada, &format!("/v1/responses/{id}"))
            .await
            .status(),
        404
    );

    let mut expired = stored.clone();
    expired.id = "resp_expired".into();
    expired.expires_at = 1;
    gov.store.insert_response(&expired).await.unwrap();
    assert_eq!(
        h.get_as(&ada, "/v1/responses/resp_expired").await.status(),
        404
    );
    assert_eq!(
        gov.store
            .prune_responses(llmux_store::now_ms())
            .await
            .unwrap(),
        1
    );
}

/// A key whose alias routes a `/v1/messages` model to an Anthropic deployment gets the
/// pass-through (the client's body as sent), as if it had named the group itself: the alias is
/// applied before deciding whether the body rides along.
#[tokio::test]
async fn an_aliased_messages_request_reaches_anthropic_as_sent() {
    let yaml = r#"
model_list:
  - model_name: claude
    litellm_params: {model: anthropic/claude-mock, api_base: "{mock}", api_key: sk-ant-test}
router_settings: {num_retries: 0}
"#;
    let h = start_governed(yaml, Db::Sqlite).await;
    let sk = key(&h, json!({"aliases": {"my-claude": "claude"}})).await;
    let r = h
        .http
        .post(format!("{}/v1/messages", h.url))
        .header("x-api-key", &sk)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "my-claude", "max_tokens": 16, "container": "c-1",
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmux-model-group"], "claude");
    let upstream = h.last_upstream_body();
    assert_eq!(upstream["model"], "claude-mock");
    assert_eq!(
        upstream["container"], "c-1",
        "a field only the pass-through keeps: {upstream}"
    );
}
