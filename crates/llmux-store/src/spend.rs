//! Spend: one log row per request, the owners' spend counters and daily rollups, all written in
//! one transaction per batch so a batch is either wholly counted or not at all. A request id
//! already stored is skipped, so replaying a batch (after a crash between commit and ack) never
//! counts twice.

use serde::Serialize;
use sqlx::Row;

use crate::{Kind, Result, Store};

/// One request's spend record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpendRecord {
    /// llmux's own id for the request (the row's key).
    pub request_id: String,
    /// The `x-request-id` the client sent, if any (not unique: clients reuse them).
    pub client_request_id: String,
    /// SHA-256 hex of the virtual key (empty for the master key).
    pub api_key: String,
    pub user_id: String,
    pub team_id: String,
    pub organization_id: String,
    pub end_user: String,
    pub model_group: String,
    /// The upstream model (`litellm_params.model`).
    pub model: String,
    pub deployment_id: String,
    pub provider: String,
    pub call_type: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    pub spend: f64,
    /// Unix ms.
    pub start_time: i64,
    pub end_time: i64,
    pub ttft_ms: Option<i64>,
    /// `success` or `failure`.
    pub status: String,
    pub error_kind: String,
    pub tags: Vec<String>,
    pub cache_hit: bool,
}

/// A day's totals for one entity and model group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DailySpend {
    pub day: String,
    pub kind: String,
    pub entity_id: String,
    pub model_group: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub spend: f64,
}

#[derive(Debug, Clone, Default)]
pub struct SpendFilter {
    pub request_id: Option<String>,
    pub client_request_id: Option<String>,
    pub api_key: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Unix ms, inclusive.
    pub start: Option<i64>,
    /// Unix ms, exclusive.
    pub end: Option<i64>,
    pub limit: Option<u64>,
}

/// `YYYY-MM-DD` (UTC) of a unix-ms time.
pub fn utc_day(ms: i64) -> String {
    day_text(ms.div_euclid(DAY_MS))
}

const DAY_MS: i64 = 86_400_000;

/// `YYYY-MM-DD` of a day number.
fn day_text(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day) of a day number (days since 1970-01-01), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day number of a date (the inverse of `civil_from_days`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl SpendRecord {
    /// The objects whose spend this record adds to (empty ids are none).
    pub fn owners(&self) -> [(Kind, &str); 5] {
        [
            (Kind::Key, &self.api_key),
            (Kind::User, &self.user_id),
            (Kind::Team, &self.team_id),
            (Kind::Organization, &self.organization_id),
            (Kind::Customer, &self.end_user),
        ]
    }
}

/// Records per multi-row INSERT (25 parameters each, well within SQLite's and PostgreSQL's
/// limits).
const ROWS_PER_INSERT: usize = 64;

/// The multi-row insert, naming the rows it stored (`RETURNING`), for drivers that run many rows
/// per statement.
fn insert_sql(rows: usize) -> String {
    let mut sql = insert_sql_silent(rows);
    sql.push_str(" RETURNING request_id");
    sql
}

/// The insert without `RETURNING`: the single-row statement of the SQLite writer, which learns
/// whether the row was new from the change count. SQLite runs `RETURNING` through a temporary
/// table opened and closed per statement (about 10k instructions per row, measured).
fn insert_sql_silent(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO llmux_spend_logs (request_id, client_request_id, api_key, user_id, team_id, organization_id, end_user, model_group, model, deployment_id, provider, call_type, \
         prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, total_tokens, spend, start_time, end_time, ttft_ms, status, error_kind, tags, cache_hit) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
    sql
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_rows<'q>(mut q: AnyQuery<'q>, rows: &'q [SpendRecord]) -> AnyQuery<'q> {
    for r in rows {
        q = q
            .bind(&r.request_id)
            .bind(&r.client_request_id)
            .bind(&r.api_key)
            .bind(&r.user_id)
            .bind(&r.team_id)
            .bind(&r.organization_id)
            .bind(&r.end_user)
            .bind(&r.model_group)
            .bind(&r.model)
            .bind(&r.deployment_id)
            .bind(&r.provider)
            .bind(&r.call_type)
            .bind(r.prompt_tokens)
            .bind(r.completion_tokens)
            .bind(r.cached_tokens)
            .bind(r.reasoning_tokens)
            .bind(r.total_tokens)
            .bind(r.spend)
            .bind(r.start_time)
            .bind(r.end_time)
            .bind(r.ttft_ms)
            .bind(&r.status)
            .bind(&r.error_kind)
            .bind(tags_json(r))
            .bind(i64::from(r.cache_hit));
    }
    q
}

#[derive(Default)]
struct Rollup {
    requests: i64,
    prompt: i64,
    completion: i64,
    spend: f64,
}

/// What a batch's new records add to their owners' spend and to the daily rollups. Keys borrow
/// from the batch: hundreds of rows touch a handful of owners and rollup rows, so nothing per
/// row is allocated.
#[derive(Default)]
struct Totals<'a> {
    owners: foldhash::HashMap<(Kind, &'a str), f64>,
    rollups: foldhash::HashMap<RollupKey<'a>, Rollup>,
}

/// (day, entity kind, entity id, model group) of a daily rollup row.
type RollupKey<'a> = (i64, &'static str, &'a str, &'a str);

impl<'a> Totals<'a> {
    fn add(&mut self, r: &'a SpendRecord) {
        for (kind, id) in r.owners() {
            if !id.is_empty() && r.spend != 0.0 {
                *self.owners.entry((kind, id)).or_default() += r.spend;
            }
        }
        let day = r.start_time.div_euclid(DAY_MS);
        let entities = [
            ("all", ""),
            ("model", ""),
            ("key", r.api_key.as_str()),
            ("user", r.user_id.as_str()),
            ("team", r.team_id.as_str()),
            ("organization", r.organization_id.as_str()),
            ("end_user", r.end_user.as_str()),
        ];
        let tags = r.tags.iter().map(|t| ("tag", t.as_str()));
        for (kind, entity) in entities.into_iter().chain(tags) {
            if kind != "all" && kind != "model" && entity.is_empty() {
                continue;
            }
            let e = self
                .rollups
                .entry((day, kind, entity, r.model_group.as_str()))
                .or_default();
            e.requests += 1;
            e.prompt += r.prompt_tokens;
            e.completion += r.completion_tokens;
            e.spend += r.spend;
        }
    }

    /// The owners' increments in one fixed order. Each row update holds that row's lock until
    /// the transaction ends; instances sharing PostgreSQL that took their locks in map order
    /// (a different order in every process) deadlocked on each other's rows.
    fn owners_in_lock_order(&self) -> Vec<(&(Kind, &'a str), &f64)> {
        let mut owners: Vec<_> = self.owners.iter().collect();
        owners.sort_unstable_by(|a, b| a.0.cmp(b.0));
        owners
    }

    /// The rollup upserts in one fixed order, for the same reason.
    fn rollups_in_lock_order(&self) -> Vec<(&RollupKey<'a>, &Rollup)> {
        let mut rollups: Vec<_> = self.rollups.iter().collect();
        rollups.sort_unstable_by(|a, b| a.0.cmp(b.0));
        rollups
    }
}

const BUMP_SQL: &str = "UPDATE llmux_objects SET spend = spend + ? WHERE kind = ? AND id = ?";

const ROLLUP_SQL: &str = "INSERT INTO llmux_daily_spend (day, kind, entity_id, model_group, requests, prompt_tokens, completion_tokens, spend) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (day, kind, entity_id, model_group) DO UPDATE SET \
     requests = llmux_daily_spend.requests + excluded.requests, \
     prompt_tokens = llmux_daily_spend.prompt_tokens + excluded.prompt_tokens, \
     completion_tokens = llmux_daily_spend.completion_tokens + excluded.completion_tokens, \
     spend = llmux_daily_spend.spend + excluded.spend";

fn tags_json(r: &SpendRecord) -> String {
    if r.tags.is_empty() {
        return "[]".to_owned();
    }
    serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".into())
}

/// The spend writer's own SQLite connection: the same batch transaction as
/// `Store::record_spend`, run synchronously with prepared statements on the writer's thread.
/// sqlx's `Any` layer (values converted per bind, every statement a message to a worker thread)
/// cost as much per row as SQLite's own insert.
pub struct SqliteSpendWriter {
    conn: rusqlite::Connection,
}

impl std::fmt::Debug for SqliteSpendWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSpendWriter").finish_non_exhaustive()
    }
}

impl SqliteSpendWriter {
    /// Store a batch of records and count their spend; returns how many were new. Same
    /// semantics as `Store::record_spend`.
    pub fn record_spend(&mut self, batch: &[SpendRecord]) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        let mut totals = Totals::default();
        let mut new = 0;
        {
            let mut insert = tx.prepare_cached(&insert_sql_silent(1))?;
            for r in batch {
                if insert_new(&mut insert, r)? {
                    new += 1;
                    totals.add(r);
                }
            }
            let mut bump = tx.prepare_cached(BUMP_SQL)?;
            for ((kind, id), amount) in totals.owners_in_lock_order() {
                bump.execute(rusqlite::params![amount, kind.as_str(), id])?;
            }
            let mut upsert = tx.prepare_cached(ROLLUP_SQL)?;
            for ((day, kind, entity, group), r) in totals.rollups_in_lock_order() {
                upsert.execute(rusqlite::params![
                    day_text(*day),
                    kind,
                    entity,
                    group,
                    r.requests,
                    r.prompt,
                    r.completion,
                    r.spend
                ])?;
            }
        }
        tx.commit()?;
        Ok(new)
    }
}

/// Run the single-row insert for one record; `true` when it was new (a replayed id changes no
/// row).
fn insert_new(insert: &mut rusqlite::CachedStatement<'_>, r: &SpendRecord) -> Result<bool> {
    let changed = insert.execute(rusqlite::params![
        r.request_id,
        r.client_request_id,
        r.api_key,
        r.user_id,
        r.team_id,
        r.organization_id,
        r.end_user,
        r.model_group,
        r.model,
        r.deployment_id,
        r.provider,
        r.call_type,
        r.prompt_tokens,
        r.completion_tokens,
        r.cached_tokens,
        r.reasoning_tokens,
        r.total_tokens,
        r.spend,
        r.start_time,
        r.end_time,
        r.ttft_ms,
        r.status,
        r.error_kind,
        tags_json(r),
        i64::from(r.cache_hit),
    ])?;
    Ok(changed == 1)
}

impl Store {
    /// For SQLite, a connection of the spend writer's own (`None` on PostgreSQL, whose writer
    /// uses `record_spend`).
    pub fn sqlite_spend_writer(&self) -> Result<Option<SqliteSpendWriter>> {
        let Some(path) = &self.sqlite_path else {
            return Ok(None);
        };
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(crate::SQLITE_PRAGMAS)?;
        // Appends touch the rightmost pages of each B-tree: a small page cache (256 KiB instead
        // of SQLite's 2 MiB default) is enough and keeps the idle footprint down.
        conn.execute_batch("PRAGMA cache_size = -256;")?;
        conn.set_prepared_statement_cache_capacity(8);
        Ok(Some(SqliteSpendWriter { conn }))
    }

    /// Store a batch of records and count their spend; returns how many were new.
    pub async fn record_spend(&self, batch: &[SpendRecord]) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut totals = Totals::default();
        let mut new = 0;
        let mut tx = self.pool().begin().await?;
        // Rows go in fixed-size multi-row statements (one statement per `ROWS_PER_INSERT`, the
        // remainder one row at a time), so there are few round trips to the database and every
        // statement text repeats and stays prepared. `RETURNING` names the new rows: a replayed
        // record is neither stored nor counted twice.
        let mut inserted: std::collections::HashSet<String> = std::collections::HashSet::new();
        let many = self.sql(&insert_sql(ROWS_PER_INSERT)).into_owned();
        let one = self.sql(&insert_sql(1)).into_owned();
        let mut chunks = batch.chunks_exact(ROWS_PER_INSERT);
        for chunk in chunks.by_ref() {
            for row in bind_rows(sqlx::query(&many), chunk)
                .fetch_all(&mut *tx)
                .await?
            {
                inserted.insert(row.try_get::<String, _>("request_id")?);
            }
        }
        for r in chunks.remainder() {
            for row in bind_rows(sqlx::query(&one), std::slice::from_ref(r))
                .fetch_all(&mut *tx)
                .await?
            {
                inserted.insert(row.try_get::<String, _>("request_id")?);
            }
        }
        for r in batch {
            if inserted.remove(&r.request_id) {
                new += 1;
                totals.add(r);
            }
        }
        let bump = self.sql(BUMP_SQL);
        for ((kind, id), amount) in totals.owners_in_lock_order() {
            sqlx::query(&bump)
                .bind(*amount)
                .bind(kind.as_str())
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        let upsert = self.sql(ROLLUP_SQL);
        for ((day, kind, entity, group), r) in totals.rollups_in_lock_order() {
            sqlx::query(&upsert)
                .bind(day_text(*day))
                .bind(*kind)
                .bind(*entity)
                .bind(*group)
                .bind(r.requests)
                .bind(r.prompt)
                .bind(r.completion)
                .bind(r.spend)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Spend log rows, newest first.
    pub async fn spend_logs(&self, filter: &SpendFilter) -> Result<Vec<SpendRecord>> {
        let mut clause = String::from("1 = 1");
        let mut text: Vec<&str> = Vec::new();
        for (column, value) in [
            ("request_id", &filter.request_id),
            ("client_request_id", &filter.client_request_id),
            ("api_key", &filter.api_key),
            ("user_id", &filter.user_id),
            ("team_id", &filter.team_id),
        ] {
            if let Some(v) = value {
                clause.push_str(&format!(" AND {column} = ?"));
                text.push(v);
            }
        }
        let mut times = Vec::new();
        if let Some(start) = filter.start {
            clause.push_str(" AND start_time >= ?");
            times.push(start);
        }
        if let Some(end) = filter.end {
            clause.push_str(" AND start_time < ?");
            times.push(end);
        }
        let limit = filter.limit.unwrap_or(1000).min(100_000) as i64;
        let sql = self
            .sql(&format!(
                "SELECT * FROM llmux_spend_logs WHERE {clause} ORDER BY start_time DESC, request_id LIMIT ?"
            ))
            .into_owned();
        let mut q = sqlx::query(&sql);
        for t in text {
            q = q.bind(t);
        }
        for t in times {
            q = q.bind(t);
        }
        let rows = q.bind(limit).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| {
                let tags: String = row.try_get("tags")?;
                Ok(SpendRecord {
                    request_id: row.try_get("request_id")?,
                    client_request_id: row.try_get("client_request_id")?,
                    api_key: row.try_get("api_key")?,
                    user_id: row.try_get("user_id")?,
                    team_id: row.try_get("team_id")?,
                    organization_id: row.try_get("organization_id")?,
                    end_user: row.try_get("end_user")?,
                    model_group: row.try_get("model_group")?,
                    model: row.try_get("model")?,
                    deployment_id: row.try_get("deployment_id")?,
                    provider: row.try_get("provider")?,
                    call_type: row.try_get("call_type")?,
                    prompt_tokens: row.try_get("prompt_tokens")?,
                    completion_tokens: row.try_get("completion_tokens")?,
                    cached_tokens: row.try_get("cached_tokens")?,
                    reasoning_tokens: row.try_get("reasoning_tokens")?,
                    total_tokens: row.try_get("total_tokens")?,
                    spend: row.try_get("spend")?,
                    start_time: row.try_get("start_time")?,
                    end_time: row.try_get("end_time")?,
                    ttft_ms: row.try_get("ttft_ms")?,
                    status: row.try_get("status")?,
                    error_kind: row.try_get("error_kind")?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    cache_hit: row.try_get::<i64, _>("cache_hit")? != 0,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Daily rollups of one kind (`all`, `model`, `key`, `user`, `team`, `organization`,
    /// `end_user`, `tag`) between two days (inclusive, `YYYY-MM-DD`), optionally one entity.
    pub async fn daily_spend(
        &self,
        kind: &str,
        entity: Option<&str>,
        start_day: &str,
        end_day: &str,
    ) -> Result<Vec<DailySpend>> {
        let mut sql = String::from(
            "SELECT day, kind, entity_id, model_group, requests, prompt_tokens, completion_tokens, spend FROM llmux_daily_spend WHERE kind = ? AND day >= ? AND day <= ?",
        );
        if entity.is_some() {
            sql.push_str(" AND entity_id = ?");
        }
        sql.push_str(" ORDER BY day, entity_id, model_group");
        let sql = self.sql(&sql).into_owned();
        let mut q = sqlx::query(&sql).bind(kind).bind(start_day).bind(end_day);
        if let Some(e) = entity {
            q = q.bind(e);
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| {
                Ok(DailySpend {
                    day: row.try_get("day")?,
                    kind: row.try_get("kind")?,
                    entity_id: row.try_get("entity_id")?,
                    model_group: row.try_get("model_group")?,
                    requests: row.try_get("requests")?,
                    prompt_tokens: row.try_get("prompt_tokens")?,
                    completion_tokens: row.try_get("completion_tokens")?,
                    spend: row.try_get("spend")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }
}
