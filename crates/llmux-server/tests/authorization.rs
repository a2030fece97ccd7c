//! The authorization matrix: every management route (`management::ROUTES`, from which the
//! router itself is built) x every role x whose object it touches, from one table. A route or
//! method missing from the table fails the test, so a new route cannot ship without its row.
//! Below it, the escalations found by probing (issue 17) replayed end to end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{start_governed, Db, Harness, MASTER};
use llmux_server::management::ROUTES;
use serde_json::{json, Value};

const MODELS: &str = r#"
model_list:
  - model_name: mock-model
    litellm_params: {model: openai/mock-model, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
  - model_name: other-model
    litellm_params: {model: openai/other-model, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
router_settings: {num_retries: 0}
# A cache nobody's requests use unasked (the cache routes need one to answer).
litellm_settings: {cache: true, cache_params: {type: local, mode: default_off}}
"#;

/// The callers, in the order of a row's expectation string.
const ACTORS: [&str; 8] = [
    "master",
    "proxy_admin",
    "proxy_admin_viewer",
    "team_admin",
    "member",
    "outsider",
    "internal_user_viewer",
    // A key the team admin minted for `member` in the world's own team: it reaches only that
    // team (every row's objects are in fresh teams, so it reaches none of them).
    "delegated",
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

//                                                                    callers: M A V T U O W D
#[rustfmt::skip]
const TABLE: &[Row] = &[
    row("POST", "/key/generate", "/key/generate", Nothing, "{}", "yynyyynn"),
    row("POST", "/key/generate", "/key/generate", MemberKey, r#"{"user_id": "member", "team_id": "{team}"}"#, "yynynnnn"),
    row("POST", "/key/generate", "/key/generate", StrangerKey, r#"{"user_id": "{user}"}"#, "yynnnnnn"),
    row("POST", "/key/generate", "/key/generate", StrangerKey, r#"{"user_id": "{user}", "team_id": "{team}"}"#, "yynnnnnn"),
    row("POST", "/key/generate", "/key/generate", Nothing, r#"{"user_id": "admin1", "team_id": "{team}"}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "key_alias": "{fresh}", "metadata": {"a": 1}}"#, "yynyyynn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "rpm_limit": 100000}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "max_budget": 1000000}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "models": []}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "duration": "3650d"}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", OwnKey, r#"{"key": "{key}", "spend": 0}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", SelfMintedKey, r#"{"key": "{key}", "rpm_limit": 5}"#, "yynyyynn"),
    row("POST", "/key/update", "/key/update", MemberKey, r#"{"key": "{key}", "key_alias": "{fresh}"}"#, "yynyynnn"),
    row("POST", "/key/update", "/key/update", MemberKey, r#"{"key": "{key}", "rpm_limit": 5}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", TeamMintedKey, r#"{"key": "{key}", "rpm_limit": 5}"#, "yynynnnn"),
    row("POST", "/key/update", "/key/update", TeamMintedKey, r#"{"key": "{key}", "user_id": "admin1"}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", StrangerKey, r#"{"key": "{key}", "key_alias": "{fresh}"}"#, "yynnnnnn"),
    row("POST", "/key/delete", "/key/delete", OwnKey, r#"{"keys": ["{key}"]}"#, "yynyyynn"),
    row("POST", "/key/delete", "/key/delete", MemberKey, r#"{"keys": ["{key}"]}"#, "yynyynnn"),
    row("POST", "/key/delete", "/key/delete", StrangerKey, r#"{"keys": ["{key}"]}"#, "yynnnnnn"),
    row("GET", "/key/info", "/key/info?key={key}", OwnKey, "", "yyyyyyyn"),
    row("GET", "/key/info", "/key/info?key={key}", MemberKey, "", "yyyyynnn"),
    row("GET", "/key/info", "/key/info?key={key}", StrangerKey, "", "yyynnnnn"),
    row("GET", "/key/list", "/key/list", Nothing, "", "yyyyyyyy"),
    row("GET", "/key/list", "/key/list?team_id={team}", Team, "", "yyyyyyyy"),
    row("POST", "/key/regenerate", "/key/regenerate", OwnKey, r#"{"key": "{key}"}"#, "yynyyynn"),
    row("POST", "/key/regenerate", "/key/regenerate", OwnKey, r#"{"key": "{key}", "max_budget": 1000}"#, "yynnnnnn"),
    row("POST", "/key/regenerate", "/key/regenerate", MemberKey, r#"{"key": "{key}"}"#, "yynyynnn"),
    row("POST", "/key/regenerate", "/key/regenerate", StrangerKey, r#"{"key": "{key}"}"#, "yynnnnnn"),
    row("POST", "/key/{key}/regenerate", "/key/{key}/regenerate", OwnKey, "{}", "yynyyynn"),
    row("POST", "/key/{key}/regenerate", "/key/{key}/regenerate", StrangerKey, "{}", "yynnnnnn"),
    row("POST", "/key/block", "/key/block", OwnKey, r#"{"key": "{key}"}"#, "yynyyynn"),
    row("POST", "/key/block", "/key/block", MemberKey, r#"{"key": "{key}"}"#, "yynyynnn"),
    row("POST", "/key/block", "/key/block", StrangerKey, r#"{"key": "{key}"}"#, "yynnnnnn"),
    row("POST", "/key/unblock", "/key/unblock", BlockedOwnKey, r#"{"key": "{key}"}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", BlockedOwnKey, r#"{"key": "{key}", "blocked": null}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", BlockedOwnKey, r#"{"key": "{key}", "blocked": false}"#, "yynnnnnn"),
    row("POST", "/key/regenerate", "/key/regenerate", BlockedOwnKey, r#"{"key": "{key}", "blocked": null}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", SelfMintedKey, r#"{"key": "{key}", "user_id": null}"#, "yynnnnnn"),
    row("POST", "/key/update", "/key/update", SelfMintedKey, r#"{"key": "{key}", "organization_id": "some-org"}"#, "yynnnnnn"),
    row("POST", "/key/generate", "/key/generate", Org, r#"{"organization_id": "{id}"}"#, "yynnnnnn"),
    row("POST", "/key/unblock", "/key/unblock", StrangerKey, r#"{"key": "{key}"}"#, "yynnnnnn"),
    row("POST", "/user/new", "/user/new", Nothing, r#"{"user_id": "{fresh}", "auto_create_key": false}"#, "yynnnnnn"),
    row("POST", "/user/new", "/user/new", Nothing, r#"{"user_id": "{fresh}", "user_role": "proxy_admin", "auto_create_key": false}"#, "yynnnnnn"),
    row("POST", "/user/update", "/user/update", OwnUser, r#"{"user_id": "{user}", "user_role": "proxy_admin"}"#, "-ynnnnnn"),
    row("POST", "/user/update", "/user/update", StrangerUser, r#"{"user_id": "{user}", "max_budget": 5}"#, "yynnnnnn"),
    row("POST", "/user/delete", "/user/delete", StrangerUser, r#"{"user_ids": ["{user}"]}"#, "yynnnnnn"),
    row("GET", "/user/info", "/user/info?user_id={user}", OwnUser, "", "-yyyyyyy"),
    row("GET", "/user/info", "/user/info?user_id={user}", StrangerUser, "", "yyynnnnn"),
    row("GET", "/user/list", "/user/list", Nothing, "", "yyynnnnn"),
    row("POST", "/team/new", "/team/new", Nothing, r#"{"team_alias": "{fresh}"}"#, "yynnnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "team_alias": "{fresh}", "metadata": {"a": 1}}"#, "yynynnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "max_budget": 1000000}"#, "yynnnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "models": []}"#, "yynnnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "blocked": false}"#, "yynnnnnn"),
    row("POST", "/team/update", "/team/update", Team, r#"{"team_id": "{team}", "rpm_limit": 100000}"#, "yynnnnnn"),
    row("POST", "/team/delete", "/team/delete", Team, r#"{"team_ids": ["{team}"]}"#, "yynnnnnn"),
    row("GET", "/team/info", "/team/info?team_id={team}", Team, "", "yyyyynnn"),
    row("GET", "/team/list", "/team/list", Nothing, "", "yyyyyyyy"),
    row("POST", "/team/member_add", "/team/member_add", Team, r#"{"team_id": "{team}", "member": {"user_id": "outsider", "role": "user"}}"#, "yynynnnn"),
    row("POST", "/team/member_add", "/team/member_add", Team, r#"{"team_id": "{team}", "member": {"user_id": "outsider", "role": "admin"}}"#, "yynnnnnn"),
    row("POST", "/team/member_add", "/team/member_add", Team, r#"{"team_id": "{team}", "member": [{"user_id": "outsider"}, {"user_id": "admin1", "role": "admin"}]}"#, "yynnnnnn"),
    row("POST", "/team/member_delete", "/team/member_delete", Team, r#"{"team_id": "{team}", "user_id": "member"}"#, "yynynnnn"),
    row("POST", "/team/member_delete", "/team/member_delete", Team, r#"{"team_id": "{team}", "user_id": "team_admin"}"#, "yynnnnnn"),
    row("POST", "/team/block", "/team/block", Team, r#"{"team_id": "{team}"}"#, "yynnnnnn"),
    row("POST", "/team/unblock", "/team/unblock", Team, r#"{"team_id": "{team}"}"#, "yynnnnnn"),
    row("POST", "/organization/new", "/organization/new", Nothing, r#"{"organization_alias": "{fresh}"}"#, "yynnnnnn"),
    row("POST", "/organization/update", "/organization/update", Org, r#"{"organization_id": "{id}", "max_budget": 9}"#, "yynnnnnn"),
    row("PATCH", "/organization/update", "/organization/update", Org, r#"{"organization_id": "{id}", "max_budget": 9}"#, "yynnnnnn"),
    row("DELETE", "/organization/delete", "/organization/delete", Org, r#"{"organization_ids": ["{id}"]}"#, "yynnnnnn"),
    row("POST", "/organization/delete", "/organization/delete", Org, r#"{"organization_ids": ["{id}"]}"#, "yynnnnnn"),
    row("GET", "/organization/info", "/organization/info?organization_id={id}", Org, "", "yyynnnnn"),
    row("POST", "/organization/info", "/organization/info", Org, r#"{"organization_id": "{id}"}"#, "yyynnnnn"),
    row("GET", "/organization/list", "/organization/list", Nothing, "", "yyynnnnn"),
    row("POST", "/customer/new", "/customer/new", Nothing, r#"{"user_id": "{fresh}"}"#, "yynnnnnn"),
    row("POST", "/customer/update", "/customer/update", Customer, r#"{"user_id": "{id}", "max_budget": 3}"#, "yynnnnnn"),
    row("POST", "/customer/delete", "/customer/delete", Customer, r#"{"user_ids": ["{id}"]}"#, "yynnnnnn"),
    row("GET", "/customer/info", "/customer/info?end_user_id={id}", Customer, "", "yyynnnnn"),
    row("GET", "/customer/list", "/customer/list", Nothing, "", "yyynnnnn"),
    row("POST", "/customer/block", "/customer/block", Customer, r#"{"user_ids": ["{id}"]}"#, "yynnnnnn"),
    row("POST", "/customer/unblock", "/customer/unblock", Customer, r#"{"user_ids": ["{id}"]}"#, "yynnnnnn"),
    row("POST", "/end_user/new", "/end_user/new", Nothing, r#"{"user_id": "{fresh}"}"#, "yynnnnnn"),
    row("GET", "/end_user/info", "/end_user/info?end_user_id={id}", Customer, "", "yyynnnnn"),
    row("POST", "/budget/new", "/budget/new", Nothing, r#"{"budget_id": "{fresh}", "max_budget": 1}"#, "yynnnnnn"),
    row("POST", "/budget/update", "/budget/update", Budget, r#"{"budget_id": "{id}", "max_budget": 2}"#, "yynnnnnn"),
    row("POST", "/budget/delete", "/budget/delete", Budget, r#"{"id": ["{id}"]}"#, "yynnnnnn"),
    row("POST", "/budget/info", "/budget/info", Budget, r#"{"budgets": ["{id}"]}"#, "yyynnnnn"),
    row("GET", "/budget/list", "/budget/list", Nothing, "", "yyynnnnn"),
    row("GET", "/spend/logs", "/spend/logs", Nothing, "", "yyyyyyyy"),
    row("GET", "/spend/keys", "/spend/keys", Nothing, "", "yyynnnnn"),
    row("GET", "/spend/users", "/spend/users", Nothing, "", "yyynnnnn"),
    row("GET", "/spend/users", "/spend/users?user_id={user}", OwnUser, "", "-yyyyyyy"),
    row("GET", "/spend/users", "/spend/users?user_id={user}", StrangerUser, "", "yyynnnnn"),
    row("GET", "/spend/tags", "/spend/tags", Nothing, "", "yyynnnnn"),
    row("GET", "/global/spend", "/global/spend", Nothing, "", "yyynnnnn"),
    row("GET", "/global/spend/keys", "/global/spend/keys", Nothing, "", "yyynnnnn"),
    row("GET", "/global/spend/models", "/global/spend/models", Nothing, "", "yyynnnnn"),
    row("GET", "/global/spend/teams", "/global/spend/teams", Nothing, "", "yyynnnnn"),
    row("POST", "/model/new", "/model/new", Nothing, r#"{"model_name": "{fresh}", "litellm_params": {"model": "mock/x"}}"#, "yynnnnnn"),
    row("POST", "/model/update", "/model/update", Model, r#"{"model_info": {"id": "{id}"}, "model_name": "{fresh}"}"#, "yynnnnnn"),
    row("POST", "/model/delete", "/model/delete", Model, r#"{"id": "{id}"}"#, "yynnnnnn"),
    row("GET", "/model/info", "/model/info", Nothing, "", "yyyyyyyy"),
    row("GET", "/v1/model/info", "/v1/model/info", Nothing, "", "yyyyyyyy"),
    row("GET", "/cache/ping", "/cache/ping", Nothing, "", "yyynnnnn"),
    row("POST", "/cache/delete", "/cache/delete", Nothing, r#"{"keys": ["{fresh}"]}"#, "yynnnnnn"),
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
    let own_team = team(&h).await;
    let r = h
        .post_as(
            &keys[3].0,
            "/key/generate",
            &json!({"user_id": "member", "team_id": own_team}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let delegated = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    keys.push((delegated, Some("member".to_owned())));
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
    // Inside the team, a member whose role is above the team admin's gets no key from them
    // (not even a capped one: it would read that member's keys and logs).
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
        assert_eq!(s, 403, "{who}: {v}");
    }
    // A member's key made by the team admin acts as an internal user, within the team only.
    let admin1_key = h.new_key(json!({"user_id": "member"})).await;
    let (s, v) = status_of(
        h.post_as(
            tl,
            "/key/generate",
            &json!({"team_id": t, "user_id": "member"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["max_role"], "internal_user");
    assert_eq!(v["delegated"], true);
    let minted = v["key"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        ("GET", "/user/list", json!(null)),
        (
            "POST",
            "/user/update",
            json!({"user_id": "team_admin", "user_role": "proxy_admin"}),
        ),
        (
            "POST",
            "/model/new",
            json!({"model_name": "x", "litellm_params": {"model": "mock/x"}}),
        ),
        ("POST", "/key/regenerate", json!({"key": admin1_key})),
        ("POST", "/key/delete", json!({"keys": [admin1_key]})),
        ("POST", "/key/block", json!({"key": admin1_key})),
        ("GET", "/key/info?key=ADMIN1", json!(null)),
        ("POST", "/key/generate", json!({})),
    ] {
        let path = path.replace("ADMIN1", &admin1_key);
        let r = if method == "GET" {
            h.get_as(&minted, &path).await
        } else {
            h.post_as(&minted, &path, &body).await
        };
        assert_eq!(r.status(), 403, "{method} {path}");
    }
    // The member's personal key still works: the team admin's key took nothing over.
    assert_eq!(h.chat_as(&admin1_key, "mock-model").await.status(), 200);
    let listed: Value = h
        .get_json(&minted, "/key/list?return_full_object=true")
        .await;
    let listed = listed["keys"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.iter().all(|k| k["team_id"] == json!(t)),
        "sees only the team's keys: {listed:?}"
    );
    let info: Value = h.get_json(&minted, "/user/info").await;
    assert!(
        info["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["team_id"] == json!(t)),
        "{info}"
    );
    // The team admin is still an internal user.
    let me: Value = h.get_json(MASTER, "/user/info?user_id=team_admin").await;
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
    let info: Value = h.get_json(MASTER, &format!("/key/info?key={sk}")).await;
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
    let parent: Value = h.get_json(MASTER, &format!("/key/info?key={sk}")).await;
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
    let other = h.new_key(json!({"user_id": "alice"})).await;
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
    let team: Value = h.get_json(MASTER, &format!("/team/info?team_id={t}")).await;
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
        .new_key(json!({"team_id": t, "models": ["other-model"]}))
        .await;
    let (s, v) = status_of(h.chat_as(&sk, "other-model").await).await;
    assert_eq!(s, 403, "the team does not allow it: {v}");
    let one = h.new_key(json!({"models": ["mock-model"]})).await;
    let listed: Value = h.get_json(&one, "/v1/models").await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["mock-model"]);
    assert_eq!(h.get_as(&one, "/v1/models/mock-model").await.status(), 200);
    assert_eq!(h.get_as(&one, "/v1/models/other-model").await.status(), 404);
    let info: Value = h.get_json(&one, "/model/info").await;
    let data = info["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{info}");
    assert_eq!(data[0]["model_name"], "mock-model");
    assert!(
        data[0]["litellm_params"].get("api_base").is_none(),
        "where a model is served is an admin's business: {info}"
    );
    // Admins see everything, with api_base.
    let all: Value = h.get_json(MASTER, "/model/info").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert!(all["data"][0]["litellm_params"]["api_base"].is_string());
    let all: Value = h.get_json(MASTER, "/v1/models").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
}

/// Keys minted with a limited key share its windows and carve its budget atomically; a
/// regenerated key keeps its windows and spend; route lists and per-model budgets.
#[tokio::test]
async fn minted_and_regenerated_keys_keep_every_limit() {
    let w = world(Db::Sqlite).await;
    let h = &w.h;
    h.admin(
        "/user/new",
        json!({"user_id": "bob", "auto_create_key": false}),
    )
    .await;
    // Twenty concurrent mints from a key with 10 to spend never hand out more than 10.
    let parent = h
        .new_key(json!({"user_id": "bob", "max_budget": 10.0}))
        .await;
    let ask = json!({"max_budget": 1.5});
    let answers =
        futures_util::future::join_all((0..20).map(|_| h.post_as(&parent, "/key/generate", &ask)))
            .await;
    let mut granted = 0.0;
    for r in answers {
        let (s, v) = status_of(r).await;
        if s == 200 {
            granted += v["max_budget"].as_f64().unwrap();
        } else {
            assert!(s == 403 || s == 429, "{s} {v}");
        }
    }
    let left: Value = h.get_json(MASTER, &format!("/key/info?key={parent}")).await;
    let left = left["info"]["max_budget"].as_f64().unwrap();
    assert!(granted > 0.0);
    assert!(
        (granted + left - 10.0).abs() < 1e-9,
        "carved {granted} + left {left} must be the 10 there was"
    );
    assert!(granted <= 10.0 + 1e-9);

    // A child shares its parent's rpm window.
    let limited = h.new_key(json!({"user_id": "bob", "rpm_limit": 2})).await;
    let child = h
        .post_as(&limited, "/key/generate", &json!({}))
        .await
        .json::<Value>()
        .await
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let codes = [
        h.chat_as(&limited, "mock-model").await.status().as_u16(),
        h.chat_as(&child, "mock-model").await.status().as_u16(),
        h.chat_as(&child, "mock-model").await.status().as_u16(),
        h.chat_as(&limited, "mock-model").await.status().as_u16(),
    ];
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 2, "{codes:?}");

    // Regenerating keeps the window and the spend.
    let one = h
        .admin("/key/generate", json!({"user_id": "bob", "rpm_limit": 1}))
        .await;
    let one_key = one["key"].as_str().unwrap().to_owned();
    let r = h.chat_as(&one_key, "mock-model").await;
    assert_eq!(r.status(), 200);
    let cost: f64 = r.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (s, fresh) = status_of(
        h.post_as(&one_key, "/key/regenerate", &json!({"key": one_key}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{fresh}");
    let fresh_key = fresh["key"].as_str().unwrap();
    assert!(
        (fresh["spend"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{fresh}"
    );
    assert_eq!(h.chat_as(fresh_key, "mock-model").await.status(), 429);
    assert_eq!(h.chat_as(&one_key, "mock-model").await.status(), 401);

    // allowed_routes narrows what a key may call.
    let llm_only = h
        .new_key(json!({"user_id": "bob", "allowed_routes": ["llm_api_routes"]}))
        .await;
    assert_eq!(h.chat_as(&llm_only, "mock-model").await.status(), 200);
    assert_eq!(h.get_as(&llm_only, "/v1/models").await.status(), 200);
    let (s, v) = status_of(h.get_as(&llm_only, "/key/info").await).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "route_not_allowed");
    let info_only = h
        .new_key(json!({"user_id": "bob", "allowed_routes": ["/key/info"]}))
        .await;
    assert_eq!(h.get_as(&info_only, "/key/info").await.status(), 200);
    assert_eq!(h.chat_as(&info_only, "mock-model").await.status(), 403);
    // Listing a management route never lifts the role's own rules.
    let listed = h
        .new_key(json!({"user_id": "bob", "allowed_routes": ["/user/list", "management_routes"]}))
        .await;
    assert_eq!(h.get_as(&listed, "/user/list").await.status(), 403);

    // A per-model budget is refused rather than stored and ignored.
    let (s, v) = status_of(
        h.post_as(
            MASTER,
            "/key/generate",
            &json!({"model_max_budget": {"mock-model": {"budget_limit": 1}}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "unsupported_field");
}

#[tokio::test]
async fn smaller_holes_stay_closed() {
    let w = world(Db::Sqlite).await;
    let h = &w.h;
    // A key without a user cannot list users' spend.
    let service = h.new_key(json!({})).await;
    assert_eq!(h.get_as(&service, "/spend/users").await.status(), 403);
    // An organization's model list restricts its teams' keys.
    let org = h
        .admin("/organization/new", json!({"models": ["mock-model"]}))
        .await["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = h.admin("/team/new", json!({"organization_id": org})).await["team_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let in_org = h.new_key(json!({"team_id": t})).await;
    assert_eq!(h.chat_as(&in_org, "mock-model").await.status(), 200);
    assert_eq!(h.chat_as(&in_org, "other-model").await.status(), 403);
    // A plain member sees the team but only their own keys in it.
    let team_id = team(h).await;
    h.admin(
        "/key/generate",
        json!({"team_id": team_id, "user_id": "team_admin"}),
    )
    .await;
    h.admin(
        "/key/generate",
        json!({"team_id": team_id, "user_id": "member"}),
    )
    .await;
    let info: Value = h
        .get_json(&w.keys[4].0, &format!("/team/info?team_id={team_id}"))
        .await;
    let keys = info["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{info}");
    assert_eq!(keys[0]["user_id"], "member");
    let info: Value = h
        .get_json(&w.keys[3].0, &format!("/team/info?team_id={team_id}"))
        .await;
    assert_eq!(
        info["keys"].as_array().unwrap().len(),
        2,
        "the team admin sees all"
    );
    // A member removed from a team loses its keys in that team.
    h.admin(
        "/team/member_delete",
        json!({"team_id": team_id, "user_id": "member"}),
    )
    .await;
    let left: Value = h
        .get_json(
            MASTER,
            &format!("/key/list?team_id={team_id}&user_id=member"),
        )
        .await;
    assert_eq!(left["total_count"], 0, "{left}");
    // A role llmux does not know reads at most.
    h.admin(
        "/user/new",
        json!({"user_id": "odd", "auto_create_key": false}),
    )
    .await;
    let odd = h.new_key(json!({"user_id": "odd"})).await;
    let gov = h.gov.as_ref().unwrap();
    let mut user = gov
        .store
        .get(llmux_store::Kind::User, "odd")
        .await
        .unwrap()
        .unwrap();
    user.data.insert("user_role".into(), json!("super_admin"));
    gov.store.update(&user, false).await.unwrap();
    gov.invalidate(llmux_store::Kind::User, "odd");
    assert_eq!(
        h.post_as(&odd, "/key/generate", &json!({})).await.status(),
        403
    );
    // Absurd pages are answered, not overflowed.
    assert_eq!(
        h.get_as(MASTER, "/key/list?page=18446744073709551615&size=1000")
            .await
            .status(),
        200
    );
}

/// Issue 17, finding 12: stored strings are bounded and key aliases unique.
#[tokio::test]
async fn stored_values_are_bounded_and_aliases_unique() {
    let w = world(Db::Sqlite).await;
    let h = &w.h;
    let long = "x".repeat(257);
    let huge: serde_json::Map<String, Value> =
        (0..2000).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (path, body) in [
        ("/key/generate", json!({"key_alias": long})),
        ("/key/generate", json!({"metadata": huge})),
        ("/key/generate", json!({"tags": vec!["t"; 1001]})),
        ("/key/generate", json!({"models": [long]})),
        ("/team/new", json!({"team_alias": long})),
        ("/user/new", json!({"user_id": long})),
        ("/user/new", json!({"user_email": long})),
    ] {
        let (s, v) = status_of(h.post_as(MASTER, path, &body).await).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let a = h
        .admin("/key/generate", json!({"key_alias": "unique-one"}))
        .await;
    let (s, v) = status_of(
        h.post_as(MASTER, "/key/generate", &json!({"key_alias": "unique-one"}))
            .await,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "key_alias_exists");
    let b = h.admin("/key/generate", json!({})).await;
    let (s, _) = status_of(
        h.post_as(
            MASTER,
            "/key/update",
            &json!({"key": b["key"], "key_alias": "unique-one"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 400);
    // Its own alias, set again, is fine.
    h.admin(
        "/key/update",
        json!({"key": a["key"], "key_alias": "unique-one", "metadata": {"n": 1}}),
    )
    .await;
    // Tags and end users a request would write into the spend log are bounded too.
    let r = h
        .post_as(
            MASTER,
            "/v1/chat/completions",
            &json!({"model": "mock-model", "messages": [{"role": "user", "content": "x"}], "user": long}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = h
        .post_as(
            MASTER,
            "/v1/chat/completions",
            &json!({"model": "mock-model", "messages": [{"role": "user", "content": "x"}], "metadata": {"tags": vec!["t"; 65]}}),
        )
        .await;
    assert_eq!(r.status(), 400);
}
