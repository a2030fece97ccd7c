//! The store on both backends: every test runs against a fresh SQLite file and a fresh
//! PostgreSQL database.

use serde_json::{json, Map, Value};

use super::*;
use crate::testing::{fresh_postgres_url, sqlite_url};

async fn both(dir: &tempfile::TempDir) -> Vec<Store> {
    vec![
        Store::open(&sqlite_url(dir.path())).await.unwrap(),
        Store::open(&fresh_postgres_url().await).await.unwrap(),
    ]
}

/// Each way spend is written: SQLite through sqlx, SQLite through the spend writer's own
/// connection, PostgreSQL.
async fn spend_paths(dir: &tempfile::TempDir) -> Vec<(Store, Option<SqliteSpendWriter>)> {
    let direct = Store::open(&sqlite_url(&dir.path().join("direct")))
        .await
        .unwrap();
    let writer = direct.sqlite_spend_writer().unwrap();
    assert!(writer.is_some());
    let mut paths: Vec<_> = both(dir).await.into_iter().map(|s| (s, None)).collect();
    paths.push((direct, writer));
    paths
}

async fn write(
    store: &Store,
    direct: &mut Option<SqliteSpendWriter>,
    batch: &[SpendRecord],
) -> u64 {
    match direct {
        Some(w) => w.record_spend(batch).unwrap(),
        None => store.record_spend(batch).await.unwrap(),
    }
}

fn doc(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

#[tokio::test]
async fn objects_round_trip_list_and_delete_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(&dir).await {
        let b = store.backend();
        let key = Object::new(
            Kind::Key,
            "hash1",
            doc(
                json!({"key_alias": "ci", "user_id": "u1", "team_id": "t1", "models": ["gpt-4o"], "max_budget": 1.5}),
            ),
        );
        assert!(store.insert(&key).await.unwrap(), "{b:?}");
        assert!(!store.insert(&key).await.unwrap(), "{b:?}: duplicate");
        let mut other = Object::new(Kind::Key, "hash2", doc(json!({"user_id": "u2"})));
        other.created_at += 1;
        store.insert(&other).await.unwrap();
        store
            .insert(&Object::new(
                Kind::User,
                "u1",
                doc(json!({"user_email": "a@b.c"})),
            ))
            .await
            .unwrap();

        let got = store.get(Kind::Key, "hash1").await.unwrap().unwrap();
        assert_eq!(got.data["models"], json!(["gpt-4o"]), "{b:?}");
        assert_eq!(got.user_id.as_deref(), Some("u1"));
        assert_eq!(got.alias.as_deref(), Some("ci"));
        assert!(
            store.get(Kind::User, "hash1").await.unwrap().is_none(),
            "kinds are separate"
        );

        let all = store.list(Kind::Key, &ListFilter::default()).await.unwrap();
        assert_eq!(
            all.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["hash1", "hash2"]
        );
        let mine = ListFilter {
            user_id: Some("u2".into()),
            ..Default::default()
        };
        assert_eq!(store.list(Kind::Key, &mine).await.unwrap().len(), 1);
        assert_eq!(
            store
                .count(Kind::Key, &ListFilter::default())
                .await
                .unwrap(),
            2
        );
        let page = ListFilter {
            offset: 1,
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(store.list(Kind::Key, &page).await.unwrap()[0].id, "hash2");
        let ids = ListFilter {
            ids: Some(vec!["hash2".into(), "nope".into()]),
            ..Default::default()
        };
        assert_eq!(store.list(Kind::Key, &ids).await.unwrap().len(), 1);

        let mut changed = got.clone();
        changed.data.insert("key_alias".into(), json!("renamed"));
        changed.data.insert("team_id".into(), Value::Null);
        changed.sync_columns();
        assert!(store.update(&changed, false).await.unwrap());
        let got = store.get(Kind::Key, "hash1").await.unwrap().unwrap();
        assert_eq!(got.alias.as_deref(), Some("renamed"));
        assert_eq!(got.team_id, None);

        assert_eq!(
            store
                .delete(Kind::Key, &["hash1".into(), "zzz".into()])
                .await
                .unwrap(),
            1
        );
        assert!(store.get(Kind::Key, "hash1").await.unwrap().is_none());
    }
}

fn record(id: &str, key: &str, spend: f64, day_ms: i64) -> SpendRecord {
    SpendRecord {
        request_id: id.into(),
        api_key: key.into(),
        user_id: "u1".into(),
        team_id: "t1".into(),
        model_group: "gpt".into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
        spend,
        start_time: day_ms,
        end_time: day_ms + 10,
        status: "success".into(),
        tags: vec!["prod".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn spend_is_counted_once_with_rollups_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    // 2026-11-23T10:00:00Z and the next day.
    let day1 = 1_795_428_000_000;
    let day2 = day1 + 86_400_000;
    assert_eq!(utc_day(day1), "2026-11-23");
    assert_eq!(utc_day(day2), "2026-11-24");
    assert_eq!(utc_day(0), "1970-01-01");
    for (store, mut direct) in spend_paths(&dir).await {
        let b = store.backend();
        for (kind, id) in [(Kind::Key, "k1"), (Kind::User, "u1"), (Kind::Team, "t1")] {
            store
                .insert(&Object::new(kind, id, Map::new()))
                .await
                .unwrap();
        }
        let batch = vec![
            record("r1", "k1", 0.25, day1),
            record("r2", "k1", 0.5, day1 + 1000),
            record("r3", "k1", 1.0, day2),
        ];
        assert_eq!(write(&store, &mut direct, &batch).await, 3, "{b:?}");
        assert_eq!(
            write(&store, &mut direct, &batch[..2]).await,
            0,
            "{b:?}: replay is a no-op"
        );
        for (kind, id) in [(Kind::Key, "k1"), (Kind::User, "u1"), (Kind::Team, "t1")] {
            let o = store.get(kind, id).await.unwrap().unwrap();
            assert!((o.spend - 1.75).abs() < 1e-9, "{b:?} {kind:?}: {}", o.spend);
        }
        let logs = store
            .spend_logs(&SpendFilter {
                api_key: Some("k1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(logs.len(), 3);
        assert_eq!(logs[0].request_id, "r3", "newest first");
        assert_eq!(logs[0].tags, vec!["prod".to_owned()]);
        let window = SpendFilter {
            start: Some(day1),
            end: Some(day2),
            ..Default::default()
        };
        assert_eq!(store.spend_logs(&window).await.unwrap().len(), 2);

        let daily = store
            .daily_spend("key", Some("k1"), "2026-11-23", "2026-11-24")
            .await
            .unwrap();
        assert_eq!(daily.len(), 2, "{b:?}");
        assert_eq!(daily[0].requests, 2);
        assert!((daily[0].spend - 0.75).abs() < 1e-9);
        assert_eq!(daily[0].prompt_tokens, 20);
        let tags = store
            .daily_spend("tag", None, "2026-11-01", "2026-11-30")
            .await
            .unwrap();
        assert_eq!(tags.iter().map(|d| d.requests).sum::<i64>(), 3);
        let all = store
            .daily_spend("all", None, "2026-11-23", "2026-11-23")
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
    }
}

#[tokio::test]
async fn budget_resets_happen_once_per_period_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(&dir).await {
        let mut o = Object::new(Kind::Key, "k", Map::new());
        o.spend = 3.0;
        o.budget_reset_at = Some(1000);
        store.insert(&o).await.unwrap();
        assert!(store.due_budget_resets(999).await.unwrap().is_empty());
        let due = store.due_budget_resets(1000).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(store
            .reset_budget(Kind::Key, "k", 1000, 2000)
            .await
            .unwrap());
        assert!(
            !store
                .reset_budget(Kind::Key, "k", 1000, 2000)
                .await
                .unwrap(),
            "a second instance loses the race"
        );
        let o = store.get(Kind::Key, "k").await.unwrap().unwrap();
        assert_eq!((o.spend, o.budget_reset_at), (0.0, Some(2000)));
    }
}

/// Changes recorded by many instances at once get distinct numbers in commit order, are read
/// back in order after a number, and pruning keeps the last (the next continues from it).
#[tokio::test]
async fn changes_are_numbered_in_order_under_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(&dir).await {
        assert_eq!(store.last_change().await.unwrap(), 0);
        let writers: Vec<Store> = match store.backend() {
            Backend::Postgres => {
                let mut w = Vec::new();
                for _ in 0..4 {
                    w.push(Store::open(&store.url).await.unwrap());
                }
                w
            }
            Backend::Sqlite => vec![store.clone()],
        };
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let w = writers[i % writers.len()].clone();
            tasks.spawn(async move { w.record_change(Kind::Key, &format!("k{i}")).await.unwrap() });
        }
        let mut seqs: Vec<i64> = tasks.join_all().await;
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<i64>>(), "distinct, no gaps");
        let after = store.changes_since(195, 100).await.unwrap();
        assert_eq!(
            after.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![196, 197, 198, 199, 200]
        );
        assert!(after
            .iter()
            .all(|c| c.1 == Some(Kind::Key) && c.2.starts_with('k')));
        assert_eq!(store.changes_since(0, 3).await.unwrap().len(), 3, "limited");
        assert_eq!(store.prune_changes(i64::MAX).await.unwrap(), 199);
        assert_eq!(store.last_change().await.unwrap(), 200);
        assert_eq!(store.record_change(Kind::Team, "t").await.unwrap(), 201);
    }
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(matches!(
        Store::open("mysql://x").await,
        Err(StoreError::BadUrl(_))
    ));
    assert!(matches!(
        Store::open("sqlite::memory:").await,
        Err(StoreError::BadUrl(_))
    ));
}

#[tokio::test]
async fn large_batches_use_multi_row_inserts_and_stay_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    for (store, mut direct) in spend_paths(&dir).await {
        store
            .insert(&Object::new(Kind::Key, "k1", Map::new()))
            .await
            .unwrap();
        let day = 1_795_428_000_000;
        let batch: Vec<SpendRecord> = (0..200)
            .map(|i| record(&format!("r{i}"), "k1", 0.01, day + i))
            .collect();
        assert_eq!(write(&store, &mut direct, &batch[..150]).await, 150);
        // 50 replayed, 50 new: only the new ones count.
        assert_eq!(
            write(&store, &mut direct, &batch[100..]).await,
            50,
            "{:?}",
            store.backend()
        );
        let key = store.get(Kind::Key, "k1").await.unwrap().unwrap();
        assert!(
            (key.spend - 2.0).abs() < 1e-9,
            "{:?}: {}",
            store.backend(),
            key.spend
        );
        let logs = store
            .spend_logs(&SpendFilter {
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(logs.len(), 200);
        let daily = store
            .daily_spend("key", Some("k1"), "2026-11-23", "2026-11-23")
            .await
            .unwrap();
        assert_eq!(daily[0].requests, 200);
    }
}

/// Several gateway instances (one pool each) flushing batches that touch the same keys, users,
/// teams and rollup rows at once: every batch goes in, none is refused as a deadlock, and the
/// totals add up. Each transaction takes its row locks in one order (sorted), the same in every
/// instance; in map order, two instances could wait on each other's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_instances_write_overlapping_spend_without_deadlocks() {
    let url = fresh_postgres_url().await;
    let first = Store::open(&url).await.unwrap();
    let owners = 8;
    for i in 0..owners {
        for kind in [Kind::Key, Kind::User, Kind::Team] {
            first
                .insert(&Object::new(kind, format!("o{i}"), Map::new()))
                .await
                .unwrap();
        }
    }
    let instances = 6;
    let batches = 12;
    let day = 1_795_428_000_000;
    let mut tasks = Vec::new();
    for n in 0..instances {
        let store = first.connect_again(2).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for b in 0..batches {
                // Every batch touches every owner, starting at a different one.
                let batch: Vec<SpendRecord> = (0..owners)
                    .map(|i| {
                        let o = format!("o{}", (i + n + b) % owners);
                        SpendRecord {
                            user_id: o.clone(),
                            team_id: o.clone(),
                            tags: vec![format!("tag{}", i % 3)],
                            ..record(&format!("i{n}-b{b}-r{i}"), &o, 0.5, day + i as i64)
                        }
                    })
                    .collect();
                store.record_spend(&batch).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("a batch was refused");
    }
    let per_owner = 0.5 * f64::from(instances * batches);
    for i in 0..owners {
        for kind in [Kind::Key, Kind::User, Kind::Team] {
            let o = first.get(kind, &format!("o{i}")).await.unwrap().unwrap();
            assert!(
                (o.spend - per_owner).abs() < 1e-9,
                "{kind:?} o{i}: {}",
                o.spend
            );
        }
    }
}

/// Two instances deleting the same objects, listed in opposite orders, at once: both succeed
/// (one deletes, the other finds them gone) instead of one being refused as a deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deletes_of_overlapping_lists_do_not_deadlock() {
    let url = fresh_postgres_url().await;
    let first = Store::open(&url).await.unwrap();
    let second = first.connect_again(2).await.unwrap();
    for round in 0..5 {
        let ids: Vec<String> = (0..200).map(|i| format!("r{round}-o{i}")).collect();
        for id in &ids {
            first
                .insert(&Object::new(Kind::Team, id, Map::new()))
                .await
                .unwrap();
        }
        let reversed: Vec<String> = ids.iter().rev().cloned().collect();
        let (a, b) = tokio::join!(
            first.delete(Kind::Team, &ids),
            second.delete(Kind::Team, &reversed)
        );
        let (a, b) = (a.expect("first delete"), b.expect("second delete"));
        assert_eq!(a + b, 200, "round {round}: every object deleted once");
    }
}
