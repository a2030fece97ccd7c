//! The authorization matrix: every management route (`governance::api::ROUTES`, from which the
//! router itself is built) x every role x whose object it touches, from one table. A route or
//! method missing from the table fails the test, so a new route cannot ship without its row.
//! Below it, the escalations found by probing (issue 17) replayed end to end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{start_governed, Db, Harness, MASTER};
use llmux_server::governance::api::ROUTES;
use serde_json::{json, Value};

const MODELS: &str = r#"
model_list:
  - model_name: mock-model
    litellm_params: {model: openai/mock-model, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
  - model_name: other-model
    litellm_params: {model: openai/other-model, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
router_settings: {num_retries: 0}
"#;

/// The callers, in the order of a row's expectation string.
const ACTORS: [&str; 7] = [
    "master",
    "proxy_admin",
    "proxy_admin_viewer",
    "team_admin",
    "member",
    "outsider",
    "internal_user_viewer",
];

/// What a request acts on, made fresh for every (row, caller) so destructive rows do not
/// disturb the next.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// Nothing in particular (creation, listings).
    Nothing,
    /// A key of the caller's own (made by the master key, so its limits are a proxy admin's).
    OwnKey,
    /// A key the caller minted for themselves (its limits are the caller's own); a caller that
    /// cannot mint gets one from the master key.
    SelfMintedKey,
    /// A key of `member` in team `t` (made by the master key).
    MemberKey,
    /// A key of `member` in team `t`, minted by the team admin.
    TeamMintedKey,
    /// A key of a user outside every team.
    StrangerKey,
    /// The caller's own key, blocked by the master key.
    BlockedOwnKey,
    /// The caller's own user.
    OwnUser,
    /// A user outside the caller's team.
    StrangerUser,
    /// A fresh team whose admin is `team_admin` and member is `member`.
    Team,
    Org,
    Customer,
    Budget,
    Model,
}

struct Row {
    method: &'static str,
    route: &'static str,
    /// The request's path and query; `{key}`, `{user}`, `{team}`, `{id}` are filled in.
    url: &'static str,
    target: Target,
    /// JSON body template (same placeholders; `{fresh}` is a new unique name).
    body: &'static str,
    /// Per caller in `ACTORS` order: `y` allowed (200), `n` refused (403), `-` not asked.
    expect: &'static str,
}

const fn row(
    method: &'static str,
    route: &'static str,
    url: &'static str,
    target: Target,
    body: &'static str,
    expect: &'static str,
) -> Row {
    Row {
        method,
        route,
        url,
        target,
        body,
        expect,
    }
}

use Target::*;

//                                                                    callers: M A V T U O W
#[rustfmt::skip]
const TABLE: &[Row] = &[
    row("POST", "/key/generate", "/key/generate", Nothing, "{}", "yynyyyn"),
    row("POST", "/key/generate", "/key/generate", MemberKey, r#"{"user_id": "member", "team_id": "{team}"}"#, "yynynnn"),
    row("POST", "/key/generate", "/key/generate", StrangerKey, r#"{"user_id": "{user}"}"#, "yynnnnn"),
    row("POST", "/key/generate", "/key/generate", StrangerKey, r#"{"user_id": "{user}", "team_id": "{team}"}"#, "yynnnnn"),
    row("POST", "/key/generate", "/key/generate", Nothing, r#"{"user_id": "admin1", "team_id": "{team}"}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "key_alias": "{fresh}", "metadata": {"a": 1}}"#, "yynyyyn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "rpm_limit": 100000}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "max_budget": 1000000}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "models": []}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "duration": "3650d"}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "spend": 0}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", SelfMintedKey, r#"{"key": "{key}", "rpm_limit": 5}"#, "yynyyyn"),
    row("POST", "/key/update", "/key/update", MemberKey, r#"{"key": "{key}", "key_alias": "{fresh}"}"#, "yynyynn"),
    row("POST", "/key/update", "/key/update", MemberKey, r#"{"key": "{key}", "rpm_limit": 5}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", TeamMintedKey, r#"{"key": "{key}", "rpm_limit": 5}"#, "yynynnn"),
    row("POST", "/key/update", "/key/update", TeamMintedKey, r#"{"key": "{key}", "user_id": "admin1"}"#, "yynnnnn"),
    row("POST", "/key/update", "/key/update", StrangerKey, r#"{"key": "{key}", "key_alias": "{fresh}"}"#, "yynnnnn"),
    row("POST", "/key/delete", "/key/delete", OwnKey, r#"{"keys": ["{key}"]}"#, "yynyyyn"),
    row("POST", "/key/delete", "/key/delete", MemberKey, r#"{"keys": ["{key}"]}"#, "yynyynn"),
    row("POST", "/key/delete", "/key/delete", StrangerKey, r#"{"keys": ["{key}"]}"#, "yynnnnn"),
    row("GET", "/key/info", "/key/info?key={key}", OwnKey, "", "yyyyyyy"),
    row("GET", "/key/info", "/key/info?key={key}", MemberKey, "", "yyyyynn"),
    row("GET", "/key/info", "/key/info?key={key}", StrangerKey, "", "yyynnnn"),
    row("GET", "/key/list", "/key/list", Nothing, "", "yyyyyyy"),
    row("GET", "/key/list", "/key/list?team_id={team}", Team, "", "yyyyyyy"),
    row("POST", "/key/regenerate", "/key/regenerate", OwnKey, r#"{"key": "{key}"}"#, "yynyyyn"),
    row("POST", "/key/regenerate", "/key/regenerate", OwnKey, r#"{"key": "{key}", "max_budget": 1000}"#, "yynnnnn"),
    row("POST", "/key/regenerate", "/key/regenerate", MemberKey, r#"{"key": "{key}"}"#, "yynyynn"),
    row("POST", "/key/regenerate", "/key/regenerate", StrangerKey, r#"{"key": "{key}"}"#, "yynnnnn"),
    row("POST", "/key/{key}/regenerate", "/key/{key}/regenerate", OwnKey, "{}", "yynyyyn"),
    row("POST", "/key/{key}/regenerate", "/key/{key}/regenerate", StrangerKey, "{}", "yynnnnn"),
    row("POST", "/key/block", "/key/block", OwnKey, r#"{"key": "{key}"}"#, "yynyyyn"),
    row("POST", "/key/block", "/key/block", MemberKey, r#"{"key": "{key}"}"#, "yynyynn"),
    row("POST", "/key/block", "/key/block", StrangerKey, r#"{"key": "{key}"}"#, "yynnnnn"),
    row("POST", "/key/unblock", "/key/unblock", BlockedOwnKey, r#"{"key": "{key}"}"#, "yynnnnn"),
    row("POST", "/key/unblock", "/key/unblock", StrangerKey, r#"{"key": "{key}"}"#, "yynnnnn"),
    row("POST", "/user/new", "/user/new", Nothing, r#"{"user_id": "{fresh}", "auto_create_key": false}"#, "yynnnnn"),
    row("POST", "/user/new", "/user/new", Nothing, r#"{"user_id": "{fresh}", "user_role": "proxy_admin", "auto_create_key": false}"#, "yynnnnn"),
    row("POST", "/user/update", "/user/update", OwnUser, r#"{"user_id": "{user}", "user_role": "proxy_admin"}"#, "-ynnnnn"),
    row("POST", "/user/update", "/user/update", StrangerUser, r#"{"user_id": "{user}", "max_budget": 5}"#, "yynnnnn"),
    row("POST", "/user/delete", "/user/delete", StrangerUser, r#"{"user_ids": ["{user}"]}"#, "yynnnnn"),
    row("GET", "/user/info", "/user/info?user_id={user}", OwnUser, "", "-yyyyyy"),
    row("GET", "/user/info", "/user/info?user_id={user}", StrangerUser, "", "yyynnnn"),
    row("GET", "/user/list", "/user/list", Nothing, "", "yyynnnn"),
    row("POST", "/team/new", "/team/new", Nothing, r#"{"team_alias": "{fresh}"}"#, "yynnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "team_alias": "{fresh}", "metadata": {"a": 1}}"#, "yynynnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "max_budget": 1000000}"#, "yynnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "models": []}"#, "yynnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "blocked": false}"#, "yynnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "rpm_limit": 100000}"#, "yynnnnn"),
    row("POST", "/team/delete", "/team/delete", Team, r#"{"team_ids": ["{team}"]}"#, "yynnnnn"),
    row("GET", "/team/info", "/team/info?team_id={team}", Team, "", "yyyyynn"),
    row("GET", "/team/list", "/team/list", Nothing, "", "yyyyyyy"),
    row("POST", "/team/member_add", "/team/member_add", Team, r#"{"team_id": "{team}", "member": {"user_id": "{fresh}", "role": "user"}}"#, "yynynnn"),
    row("POST", "/team/member_delete", "/team/member_delete", Team, r#"{"team_id": "{team}", "user_id": "member"}"#, "yynynnn"),
    row("POST", "/team/block", "/team/block", Team, r#"{"team_id": "{team}"}"#, "yynnnnn"),
    row("POST", "/team/unblock", "/team/unblock", Team, r#"{"team_id": "{team}"}"#, "yynnnnn"),
    row("POST", "/organization/new", "/organization/new", Nothing, r#"{"organization_alias": "{fresh}"}"#, "yynnnnn"),
    row("POST", "/organization/update", "/organization/update", Org, r#"{"organization_id": "{id}", "max_budget": 9}"#, "yynnnnn"),
    row("PATCH", "/organization/update", "/organization/update", Org, r#"{"organization_id": "{id}", "max_budget": 9}"#, "yynnnnn"),
    row("DELETE", "/organization/delete", "/organization/delete", Org, r#"{"organization_ids": ["{id}"]}"#, "yynnnnn"),
    row("POST", "/organization/delete", "/organization/delete", Org, r#"{"organization_ids": ["{id}"]}"#, "yynnnnn"),
    row("GET", "/organization/info", "/organization/info?organization_id={id}", Org, "", "yyynnnn"),
    row("POST", "/organization/info", "/organization/info", Org, r#"{"organization_id": "{id}"}"#, "yyynnnn"),
    row("GET", "/organization/list", "/organization/list", Nothing, "", "yyynnnn"),
    row("POST", "/customer/new", "/customer/new", Nothing, r#"{"user_id": "{fresh}"}"#, "yynnnnn"),
    row("POST", "/customer/update", "/customer/update", Customer, r#"{"user_id": "{id}", "max_budget": 3}"#, "yynnnnn"),
    row("POST", "/customer/delete", "/customer/delete", Customer, r#"{"user_ids": ["{id}"]}"#, "yynnnnn"),
    row("GET", "/customer/info", "/customer/info?end_user_id={id}", Customer, "", "yyynnnn"),
    row("GET", "/customer/list", "/customer/list", Nothing, "", "yyynnnn"),
    row("POST", "/customer/block", "/customer/block", Customer, r#"{"user_ids": ["{id}"]}"#, "yynnnnn"),
    row("POST", "/customer/unblock", "/customer/unblock", Customer, r#"{"user_ids": ["{id}"]}"#, "yynnnnn"),
    row("POST", "/end_user/new", "/end_user/new", Nothing, r#"{"user_id": "{fresh}"}"#, "yynnnnn"),
    row("GET", "/end_user/info", "/end_user/info?end_user_id={id}", Customer, "", "yyynnnn"),
    row("POST", "/budget/new", "/budget/new", Nothing, r#"{"budget_id": "{fresh}", "max_budget": 1}"#, "yynnnnn"),
    row("POST", "/budget/update", "/budget/update", Budget, r#"{"budget_id": "{id}", "max_budget": 2}"#, "yynnnnn"),
    row("POST", "/budget/delete", "/budget/delete", Budget, r#"{"id": ["{id}"]}"#, "yynnnnn"),
    row("POST", "/budget/info", "/budget/info", Budget, r#"{"budgets": ["{id}"]}"#, "yyynnnn"),
    row("GET", "/budget/list", "/budget/list", Nothing, "", "yyynnnn"),
    row("GET", "/spend/logs", "/spend/logs", Nothing, "", "yyyyyyy"),
    row("GET", "/spend/keys", "/spend/keys", Nothing, "", "yyynnnn"),
    row("GET", "/spend/users", "/spend/users", Nothing, "", "yyynnnn"),
    row("GET", "/spend/users", "/spend/users?user_id={user}", OwnUser, "", "-yyyyyy"),
    row("GET", "/spend/users", "/spend/users?user_id={user}", StrangerUser, "", "yyynnnn"),
    row("GET", "/spend/tags", "/spend/tags", Nothing, "", "yyynnnn"),
    row("GET", "/global/spend", "/global/spend", Nothing, "", "yyynnnn"),
    row("GET", "/global/spend/keys", "/global/spend/keys", Nothing, "", "yyynnnn"),
    row("GET", "/global/spend/models", "/global/spend/models", Nothing, "", "yyynnnn"),
    row("GET", "/global/spend/teams", "/global/spend/teams", Nothing, "", "yyynnnn"),
    row("POST", "/model/new", "/model/new", Nothing, r#"{"model_name": "{fresh}", "litellm_params": {"model": "mock/x"}}"#, "yynnnnn"),
    row("POST", "/model/update", "/model/update", Model, r#"{"model_info": {"id": "{id}"}, "model_name": "{fresh}"}"#, "yynnnnn"),
    row("POST", "/model/delete", "/model/delete", Model, r#"{"id": "{id}"}"#, "yynnnnn"),
    row("GET", "/model/info", "/model/info", Nothing, "", "yyyyyyy"),
    row("GET", "/v1/model/info", "/v1/model/info", Nothing, "", "yyyyyyy"),
];

static FRESH: AtomicU64 = AtomicU64::new(0);

fn fresh(prefix: &str) -> String {
    format!("{prefix}-{}", FRESH.fetch_add(1, Ordering::Relaxed))
}

struct World {
    h: Harness,
    /// Each actor's key and user id (the master has no user).
    keys: Vec<(String, Option<String>)>,
}

async fn world(db: Db) -> World {
    let h = start_governed(MODELS, db).await;
    h.admin(
        "/user/new",
        json!({"user_id": "admin1", "user_role": "proxy_admin", "auto_create_key": false}),
    )
    .await;
    let mut keys = vec![(MASTER.to_owned(), None)];
    for (actor, role) in [
        ("proxy_admin", "proxy_admin"),
        ("proxy_admin_viewer", "proxy_admin_viewer"),
        ("team_admin", "internal_user"),
        ("member", "internal_user"),
        ("outsider", "internal_user"),
        ("internal_user_viewer", "internal_user_viewer"),
    ] {
        let u = h
            .admin("/user/new", json!({"user_id": actor, "user_role": role}))
            .await;
        keys.push((
            u["key"].as_str().unwrap().to_owned(),
            Some(actor.to_owned()),
        ));
    }
    World { h, keys }
}

/// A team led by `team_admin` with `member` in it.
async fn team(h: &Harness) -> String {
    let t = h
        .admin(
            "/team/new",
            json!({"team_alias": fresh("team"), "members_with_roles": [
                {"user_id": "team_admin", "role": "admin"}, {"user_id": "member", "role": "user"}]}),
        )
        .await;
    t["team_id"].as_str().unwrap().to_owned()
}

/// Placeholders for one (row, caller): the object made for it.
struct Made {
    key: String,
    user: String,
    team: String,
    id: String,
}

async fn make(w: &World, target: Target, actor: usize) -> Made {
    let h = &w.h;
    let (actor_key, actor_user) = &w.keys[actor];
    let team_id = team(h).await;
    let mut made = Made {
        key: String::new(),
        user: actor_user.clone().unwrap_or_default(),
        team: team_id.clone(),
        id: String::new(),
    };
    let master_key = |body: Value| async move { h.admin("/key/generate", body).await };
    match target {
        Nothing | Team => {}
        OwnKey => {
            let body = match actor_user {
                Some(u) => json!({"user_id": u, "models": ["mock-model"], "rpm_limit": 50}),
                None => json!({"models": ["mock-model"]}),
            };
            made.key = master_key(body).await["key"].as_str().unwrap().to_owned();
        }
        SelfMintedKey => {
            let r = h.post_as(actor_key, "/key/generate", &json!({})).await;
            made.key = if r.status() == 200 {
                r.json::<Value>().await.unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            } else {
                let body = match actor_user {
                    Some(u) => json!({"user_id": u}),
                    None => json!({}),
                };
                master_key(body).await["key"].as_str().unwrap().to_owned()
            };
        }
        MemberKey => {
            made.key = master_key(json!({"user_id": "member", "team_id": team_id})).await["key"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        TeamMintedKey => {
            let r = h
                .post_as(
                    &w.keys[3].0,
                    "/key/generate",
                    &json!({"user_id": "member", "team_id": team_id, "rpm_limit": 10}),
                )
                .await;
            assert_eq!(r.status(), 200, "the team admin mints for a member");
            made.key = r.json::<Value>().await.unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        StrangerKey | StrangerUser => {
            let stranger = fresh("stranger");
            h.admin(
                "/user/new",
                json!({"user_id": stranger, "auto_create_key": false}),
            )
            .await;
            made.user = stranger.clone();
            if target == StrangerKey {
                made.key = master_key(json!({"user_id": stranger})).await["key"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
        }
        BlockedOwnKey => {
            let body = match actor_user {
                Some(u) => json!({"user_id": u}),
                None => json!({}),
            };
            let k = master_key(body).await["key"].as_str().unwrap().to_owned();
            h.admin("/key/block", json!({"key": k})).await;
            made.key = k;
        }
        OwnUser => {}
        Org => {
            made.id = h
                .admin(
                    "/organization/new",
                    json!({"organization_alias": fresh("org")}),
                )
                .await["organization_id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        Customer => {
            made.id = fresh("customer");
            h.admin("/customer/new", json!({"user_id": made.id})).await;
        }
        Budget => {
            made.id = fresh("budget");
            h.admin(
                "/budget/new",
                json!({"budget_id": made.id, "max_budget": 1}),
            )
            .await;
        }
        Model => {
            made.id = fresh("model");
            h.admin(
                "/model/new",
                json!({"model_name": fresh("m"), "litellm_params": {"model": "mock/x"}, "model_info": {"id": made.id}}),
            )
            .await;
        }
    }
    made
}

fn fill(template: &str, made: &Made) -> String {
    template
        .replace("{key}", &made.key)
        .replace("{user}", &made.user)
        .replace("{team}", &made.team)
        .replace("{id}", &made.id)
        .replace("{fresh}", &fresh("x"))
}

async fn send(
    h: &Harness,
    key: Option<&str>,
    method: &str,
    url: &str,
    body: &str,
) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = h.http.request(method, format!("{}{url}", h.url));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if !body.is_empty() {
        req = req
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[test]
fn the_table_lists_every_route_and_method_and_nothing_else() {
    let mut missing = Vec::new();
    for (path, methods) in ROUTES {
        for m in *methods {
            if !TABLE.iter().any(|r| r.route == *path && r.method == *m) {
                missing.push(format!("{m} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "routes without a row: {missing:?}");
    for r in TABLE {
        assert!(
            ROUTES
                .iter()
                .any(|(p, ms)| *p == r.route && ms.contains(&r.method)),
            "row for an unknown route: {} {}",
            r.method,
            r.route
        );
        assert_eq!(r.expect.len(), ACTORS.len(), "{} {}", r.method, r.url);
    }
}

#[tokio::test]
async fn every_role_on_every_route_and_owner_gets_exactly_its_rights() {
    let w = world(Db::Sqlite).await;
    let mut wrong = Vec::new();
    for r in TABLE {
        for (actor, expect) in r.expect.chars().enumerate() {
            if expect == '-' {
                continue;
            }
            let made = make(&w, r.target, actor).await;
            let url = fill(r.url, &made);
            let body = fill(r.body, &made);
            let (status, text) = send(&w.h, Some(&w.keys[actor].0), r.method, &url, &body).await;
            let ok = match expect {
                'y' => status == 200,
                _ => status == 403,
            };
            if !ok {
                wrong.push(format!(
                    "{} {} [{:?}] as {}: expected {}, got {status} {}",
                    r.method,
                    r.url,
                    r.target,
                    ACTORS[actor],
                    if expect == 'y' { "200" } else { "403" },
                    text.chars().take(200).collect::<String>()
                ));
            }
            if status == 403 {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if v["error"]["type"].as_str().is_none() {
                    wrong.push(format!(
                        "{} {}: 403 not OpenAI-shaped: {text}",
                        r.method, url
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn no_route_answers_without_a_valid_key() {
    let w = world(Db::Sqlite).await;
    for (path, methods) in ROUTES {
        let url = path.replace("{key}", "sk-nothing");
        for m in *methods {
            for key in [None, Some("sk-not-a-key"), Some("")] {
                let (status, text) = send(&w.h, key, m, &url, "{}").await;
                assert_eq!(status, 401, "{m} {url} with {key:?}: {text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["error"]["type"], "authentication_error", "{text}");
            }
        }
    }
}

async fn status_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Issue 17, finding 1: a team admin minted a key for a proxy admin of their team and became
/// proxy admin with it.
#[tokio::test]
async fn a_team_admin_cannot_mint_rights_above_their_own() {
    let w = world(Db::Sqlite).await;
    let h = &w.h;
    h.admin(
        "/user/new",
        json!({"user_id": "viewer1", "user_role": "proxy_admin_viewer", "auto_create_key": false}),
    )
    .await;
    let t = team(h).await;
    let tl = &w.keys[3].0;
    // Outside the team: refused, so nobody else is billed.
    for who in ["admin1", "viewer1", "outsider"] {
        let (s, v) = status_of(
            h.post_as(tl, "/key/generate", &json!({"team_id": t, "user_id": who}))
                .await,
        )
        .await;
        assert_eq!(s, 403, "{who}: {v}");
    }
    // Inside the team, the key acts with no more than the team admin's role.
    h.admin(
        "/team/member_add",
        json!({"team_id": t, "member": [{"user_id": "admin1", "role": "user"}, {"user_id": "viewer1", "role": "user"}]}),
    )
    .await;
    for who in ["admin1", "viewer1"] {
        let (s, v) = status_of(
            h.post_as(tl, "/key/generate", &json!({"team_id": t, "user_id": who}))
                .await,
        )
        .await;
        assert_eq!(s, 200, "{who}: {v}");
        let minted = v["key"].as_str().unwrap();
        assert_eq!(v["max_role"], "internal_user");
        let (s, _) = status_of(h.get_as(minted, "/user/list").await).await;
        assert_eq!(s, 403, "{who}'s team key lists users");
        let (s, _) = status_of(
            h.post_as(
                minted,
                "/user/update",
                &json!({"user_id": "team_admin", "user_role": "proxy_admin"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 403, "{who}'s team key promotes the team admin");
        let (s, _) = status_of(
            h.post_as(
                minted,
                "/model/new",
                &json!({"model_name": "x", "litellm_params": {"model": "mock/x"}}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 403);
        let listed: Value = h.get_as(minted, "/key/list").await.json().await.unwrap();
        assert!(
            listed["keys"].as_array().unwrap().len() <= 2,
            "sees only its user's keys: {listed}"
        );
    }
    // The team admin is still an internal user.
    let me: Value = h
        .get_as(MASTER, "/user/info?user_id=team_admin")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["user_info"]["user_role"], "internal_user");
}

/// Issue 17, finding 2: a key's holder lifted its own limits, unblocked itself, and a team
/// admin raised its own team's budget.
#[tokio::test]
async fn a_keys_holder_cannot_lift_what_a_higher_role_set() {
    let w = world(Db::Sqlite).await;
    let h = &w.h;
    h.admin(
        "/user/new",
        json!({"user_id": "alice", "auto_create_key": false}),
    )
    .await;
    let limited = h
        .admin(
            "/key/generate",
            json!({"user_id": "alice", "max_budget": 0.01, "rpm_limit": 1, "models": ["mock-model"], "duration": "60s"}),
        )
        .await;
    let sk = limited["key"].as_str().unwrap().to_owned();
    for change in [
        json!({"max_budget": 1e6}),
        json!({"rpm_limit": 100000}),
        json!({"models": []}),
        json!({"duration": "3650d"}),
        json!({"max_budget": 1e6, "rpm_limit": 100000, "models": [], "duration": "3650d"}),
        json!({"spend": 0}),
        json!({"team_id": null}),
        json!({"max_parallel_requests": 1000}),
    ] {
        let mut body = change.clone();
        body["key"] = json!(sk);
        let (s, v) = status_of(h.post_as(&sk, "/key/update", &body).await).await;
        assert_eq!(s, 403, "{change}: {v}");
        assert_eq!(v["error"]["code"], "forbidden");
    }
    // Its alias and metadata are the holder's to change.
    let (s, v) = status_of(
        h.post_as(
            &sk,
            "/key/update",
            &json!({"key": sk, "key_alias": "mine", "metadata": {"note": "x"}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // Nothing changed the limits.
    let info: Value = h
        .get_as(MASTER, &format!("/key/info?key={sk}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["info"]["max_budget"], 0.01);
    assert_eq!(info["info"]["rpm_limit"], 1);
    assert_eq!(info["info"]["models"], json!(["mock-model"]));
    assert_eq!(h.chat_as(&sk, "other-model").await.status(), 403);

    // A key minted with it gets no more: same models, limits and expiry, and a budget carved
    // out of the one it has.
    let (s, v) = status_of(
        h.post_as(&sk, "/key/generate", &json!({"models": ["other-model"]}))
            .await,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "exceeds_creating_key");
    let (s, v) = status_of(
        h.post_as(&sk, "/key/generate", &json!({"rpm_limit": 100}))
            .await,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = status_of(
        h.post_as(&sk, "/key/generate", &json!({"max_budget": 1.0}))
            .await,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, child) = status_of(
        h.post_as(
            &sk,
            "/key/generate",
            &json!({"max_budget": 0.004, "duration": "3650d"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{child}");
    assert_eq!(child["models"], json!(["mock-model"]));
    assert_eq!(child["rpm_limit"], 1);
    assert_eq!(
        child["expires"], info["info"]["expires"],
        "never outlives the creating key"
    );
    assert_eq!(child["limits_set_by"], "proxy_admin");
    let parent: Value = h
        .get_as(MASTER, &format!("/key/info?key={sk}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        (parent["info"]["max_budget"].as_f64().unwrap() - 0.006).abs() < 1e-12,
        "{parent}"
    );
    // And the child cannot lift its inherited limits either.
    let child_key = child["key"].as_str().unwrap();
    let (s, _) = status_of(
        h.post_as(
            child_key,
            "/key/update",
            &json!({"key": child_key, "rpm_limit": 1000}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);

    // Blocked by the master key: another of alice's keys cannot unblock it.
    let other = h.admin("/key/generate", json!({"user_id": "alice"})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    h.admin("/key/block", json!({"key": sk})).await;
    let (s, v) = status_of(h.post_as(&sk, "/key/unblock", &json!({"key": sk})).await).await;
    assert_eq!(s, 401, "a blocked key does not authenticate: {v}");
    for body in [json!({"key": sk}), json!({"key": sk, "blocked": false})] {
        let path = if body.get("blocked").is_some() {
            "/key/update"
        } else {
            "/key/unblock"
        };
        let (s, v) = status_of(h.post_as(&other, path, &body).await).await;
        assert_eq!(s, 403, "{path}: {v}");
    }
    // A block the holder placed, the holder lifts.
    h.admin("/key/unblock", json!({"key": sk})).await;
    let own = h.post_as(&other, "/key/generate", &json!({})).await;
    let own = own.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        h.post_as(&other, "/key/block", &json!({"key": own}))
            .await
            .status(),
        200
    );
    assert_eq!(
        h.post_as(&other, "/key/unblock", &json!({"key": own}))
            .await
            .status(),
        200
    );

    // A team admin may not raise their team's budget or models, nor lift a master's block.
    let t = h
        .admin(
            "/team/new",
            json!({"max_budget": 1, "models": ["mock-model"], "members_with_roles": [{"user_id": "team_admin", "role": "admin"}]}),
        )
        .await["team_id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.admin("/team/block", json!({"team_id": t})).await;
    let tl = &w.keys[3].0;
    for change in [
        json!({"max_budget": 1e6}),
        json!({"models": []}),
        json!({"blocked": false}),
    ] {
        let mut body = change.clone();
        body["team_id"] = json!(t);
        assert_eq!(
            h.post_as(tl, "/team/update", &body).await.status(),
            403,
            "{change}"
        );
    }
    let team: Value = h
        .get_as(MASTER, &format!("/team/info?team_id={t}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(team["team_info"]["max_budget"], 1);
    assert_eq!(team["team_info"]["blocked"], true);
}

/// A key in a team uses only models both allow; listings show only what a key may use.
#[tokio::test]
async fn model_access_is_the_intersection_and_listings_follow_it() {
    let w = world(Db::Sqlite).await;
    let h = &w.h;
    let t = h
        .admin("/team/new", json!({"models": ["mock-model"]}))
        .await["team_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sk = h
        .admin(
            "/key/generate",
            json!({"team_id": t, "models": ["other-model"]}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = status_of(h.chat_as(&sk, "other-model").await).await;
    assert_eq!(s, 403, "the team does not allow it: {v}");
    let one = h
        .admin("/key/generate", json!({"models": ["mock-model"]}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed: Value = h.get_as(&one, "/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["mock-model"]);
    assert_eq!(h.get_as(&one, "/v1/models/mock-model").await.status(), 200);
    assert_eq!(h.get_as(&one, "/v1/models/other-model").await.status(), 404);
    let info: Value = h.get_as(&one, "/model/info").await.json().await.unwrap();
    let data = info["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{info}");
    assert_eq!(data[0]["model_name"], "mock-model");
    assert!(
        data[0]["litellm_params"].get("api_base").is_none(),
        "where a model is served is an admin's business: {info}"
    );
    // Admins see everything, with api_base.
    let all: Value = h.get_as(MASTER, "/model/info").await.json().await.unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert!(all["data"][0]["litellm_params"]["api_base"].is_string());
    let all: Value = h.get_as(MASTER, "/v1/models").await.json().await.unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
}
