//! llmux's persistence: governance objects (virtual keys, users, teams, organizations, customers,
//! budgets, database-stored models) and spend (one log row per request, daily rollups), on an
//! embedded SQLite file or a shared PostgreSQL. One schema and one set of queries serve both
//! (sqlx's `Any` driver, portable SQL, `?` placeholders rewritten to `$n` for PostgreSQL), so
//! behaviour is identical; the test suite runs against both.
//!
//! Objects are LiteLLM-shaped JSON documents with the columns that are looked up (owner
//! relations, alias) or updated atomically (spend, next budget reset) kept beside them: LiteLLM's
//! objects have dozens of optional fields that the management API must round-trip, and only a
//! handful drive queries.

mod spend;

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use spend::{
    civil_from_days, days_from_civil, utc_day, DailySpend, SpendFilter, SpendRecord,
    SqliteSpendWriter,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL `{0}` (use sqlite://PATH or postgres://...)")]
    BadUrl(String),
    #[error("stored object {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("database contention: could not write to {0}")]
    Contention(&'static str),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a client sees when the database fails: a 503 to retry, with the cause logged here (never
/// sent: it may name tables, hosts or values).
impl From<StoreError> for llmux_types::GatewayError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "database error");
        llmux_types::GatewayError::new(
            llmux_types::ErrorKind::UpstreamUnavailable,
            "The database is unavailable; try again.",
        )
        .with_code("database_unavailable")
        .with_status(503)
    }
}

/// A Responses API answer kept for `GET /v1/responses/{id}` and `previous_response_id`; the
/// JSON documents as text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    /// The hash of the key that made it (empty: the master key).
    pub owner: String,
    pub created_at: i64,
    /// The Response object.
    pub response: String,
    /// This request's input items (a JSON array).
    pub input_items: String,
    /// This turn's items: its input and its output (a JSON array; rows written before
    /// migration 0006 hold the whole conversation and no `previous_id`).
    pub conversation: String,
    /// The response this one continues (`previous_response_id`), empty when none.
    pub previous_id: String,
    /// Unix ms after which it is gone (0: never).
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Key,
    User,
    Team,
    Organization,
    Customer,
    Budget,
    Model,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::User => "user",
            Kind::Team => "team",
            Kind::Organization => "organization",
            Kind::Customer => "customer",
            Kind::Budget => "budget",
            Kind::Model => "model",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "key" => Kind::Key,
            "user" => Kind::User,
            "team" => Kind::Team,
            "organization" => Kind::Organization,
            "customer" => Kind::Customer,
            "budget" => Kind::Budget,
            "model" => Kind::Model,
            _ => return None,
        })
    }
}

/// One stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub kind: Kind,
    /// For keys, the SHA-256 hex digest of the key; never the key itself.
    pub id: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub organization_id: Option<String>,
    pub alias: Option<String>,
    /// The LiteLLM-shaped document (without `spend`, which is the column below).
    pub data: Map<String, Value>,
    pub spend: f64,
    /// Unix ms of the next budget reset, when the object has a `budget_duration`.
    pub budget_reset_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Object {
    pub fn new(kind: Kind, id: impl Into<String>, data: Map<String, Value>) -> Object {
        let now = now_ms();
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
        Object {
            kind,
            id: id.into(),
            user_id: text("user_id"),
            team_id: text("team_id"),
            organization_id: text("organization_id"),
            alias: text("key_alias")
                .or_else(|| text("team_alias"))
                .or_else(|| text("organization_alias"))
                .or_else(|| text("budget_id"))
                .or_else(|| text("model_name")),
            data,
            spend: 0.0,
            budget_reset_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Refresh the relation columns from the document after it changed.
    pub fn sync_columns(&mut self) {
        let fresh = Object::new(self.kind, self.id.clone(), self.data.clone());
        self.user_id = fresh.user_id;
        self.team_id = fresh.team_id;
        self.organization_id = fresh.organization_id;
        self.alias = fresh.alias;
    }
}

/// Which objects a listing returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub organization_id: Option<String>,
    pub alias: Option<String>,
    /// Only these ids.
    pub ids: Option<Vec<String>>,
    pub offset: u64,
    pub limit: Option<u64>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The database handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The normalised connection URL, for `connect_again`.
    url: std::sync::Arc<str>,
    /// The database file (SQLite), for `SqliteSpendWriter`.
    sqlite_path: Option<std::sync::Arc<std::path::Path>>,
}

impl std::fmt::Debug for Store {
    /// The URL is left out: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Every SQLite connection's settings: WAL (readers never wait for the writer), a generous busy
/// timeout (the spend writer and management writes take turns), and `synchronous = NORMAL`
/// (durable at checkpoints; a power cut may lose the last transactions, never corrupt).
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;";

const OBJECT_COLUMNS: &str = "kind, id, user_id, team_id, organization_id, alias, data, spend, budget_reset_at, created_at, updated_at";

impl Store {
    /// Connect (creating a SQLite file if needed) and apply pending migrations.
    /// `sqlite://PATH`, `sqlite:PATH`, or `postgres://USER@HOST:PORT/DB` (also `postgresql://`).
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::connect(url, None).await?;
        sqlx::migrate!("./migrations").run(&store.pool).await?;
        Ok(store)
    }

    /// A second handle on the same database with its own pool of at most `max_connections`,
    /// bound to the runtime it is created on (the spend writer runs on its own thread and
    /// runtime). Migrations are not run again.
    pub async fn connect_again(&self, max_connections: u32) -> Result<Store> {
        Store::connect(&self.url, Some(max_connections)).await
    }

    async fn connect(url: &str, max_connections: Option<u32>) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let mut sqlite_path = None;
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path.contains(":memory:") {
                return Err(StoreError::BadUrl(url.to_owned()));
            }
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    let _ = std::fs::create_dir_all(parent);
                }
            }
            sqlite_path = Some(std::path::Path::new(path).into());
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else {
            return Err(StoreError::BadUrl(url.to_owned()));
        };
        let options =
            AnyPoolOptions::new().max_connections(max_connections.unwrap_or(match backend {
                // One writer at a time is SQLite's model; a few connections let reads proceed
                // (WAL).
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            }));
        let options = if backend == Backend::Sqlite {
            options.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options.connect(&url).await?;
        Ok(Store {
            pool,
            backend,
            url: url.into(),
            sqlite_path,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `?` placeholders as the backend wants them.
    pub(crate) fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        match self.backend {
            Backend::Sqlite => Cow::Borrowed(sql),
            Backend::Postgres => {
                let mut out = String::with_capacity(sql.len() + 16);
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Insert a new object; `false` when one with this kind and id exists.
    pub async fn insert(&self, obj: &Object) -> Result<bool> {
        let sql = self.sql(
            "INSERT INTO llmux_objects (kind, id, user_id, team_id, organization_id, alias, data, spend, budget_reset_at, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, id) DO NOTHING",
        );
        let done = sqlx::query(&sql)
            .bind(obj.kind.as_str())
            .bind(&obj.id)
            .bind(&obj.user_id)
            .bind(&obj.team_id)
            .bind(&obj.organization_id)
            .bind(&obj.alias)
            .bind(Value::Object(obj.data.clone()).to_string())
            .bind(obj.spend)
            .bind(obj.budget_reset_at)
            .bind(obj.created_at)
            .bind(obj.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replace an object's document, relations and next reset (its spend is left alone unless
    /// `set_spend`); `false` when it does not exist.
    pub async fn update(&self, obj: &Object, set_spend: bool) -> Result<bool> {
        let sql = if set_spend {
            "UPDATE llmux_objects SET user_id = ?, team_id = ?, organization_id = ?, alias = ?, data = ?, budget_reset_at = ?, updated_at = ?, spend = ? WHERE kind = ? AND id = ?"
        } else {
            "UPDATE llmux_objects SET user_id = ?, team_id = ?, organization_id = ?, alias = ?, data = ?, budget_reset_at = ?, updated_at = ? WHERE kind = ? AND id = ?"
        };
        let sql = self.sql(sql);
        let mut q = sqlx::query(&sql)
            .bind(&obj.user_id)
            .bind(&obj.team_id)
            .bind(&obj.organization_id)
            .bind(&obj.alias)
            .bind(Value::Object(obj.data.clone()).to_string())
            .bind(obj.budget_reset_at)
            .bind(now_ms());
        if set_spend {
            q = q.bind(obj.spend);
        }
        let done = q
            .bind(obj.kind.as_str())
            .bind(&obj.id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replace an object's document only if it still holds `expected` (the document as read):
    /// a compare-and-set for changes that must not race, such as carving a budget. `false`
    /// when the document changed meanwhile (read again and retry) or the object is gone.
    pub async fn update_if_unchanged(
        &self,
        obj: &Object,
        expected: &serde_json::Map<String, Value>,
    ) -> Result<bool> {
        let sql = self.sql(
            "UPDATE llmux_objects SET data = ?, updated_at = ? WHERE kind = ? AND id = ? AND data = ?",
        );
        let done = sqlx::query(&sql)
            .bind(Value::Object(obj.data.clone()).to_string())
            .bind(now_ms())
            .bind(obj.kind.as_str())
            .bind(&obj.id)
            .bind(Value::Object(expected.clone()).to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether the database answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn get(&self, kind: Kind, id: &str) -> Result<Option<Object>> {
        let sql = self
            .sql(&format!(
                "SELECT {OBJECT_COLUMNS} FROM llmux_objects WHERE kind = ? AND id = ?"
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(kind.as_str())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| object_from_row(&r)).transpose()
    }

    /// Delete objects; returns how many existed.
    pub async fn delete(&self, kind: Kind, ids: &[String]) -> Result<u64> {
        // Row locks in one order (sorted ids), as the spend writer takes them: two deletes of
        // overlapping lists could otherwise each hold a row the other waits for.
        let mut ids: Vec<&String> = ids.iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut deleted = 0;
        let mut tx = self.pool.begin().await?;
        let sql = self.sql("DELETE FROM llmux_objects WHERE kind = ? AND id = ?");
        for id in ids {
            deleted += sqlx::query(&sql)
                .bind(kind.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    pub async fn list(&self, kind: Kind, filter: &ListFilter) -> Result<Vec<Object>> {
        let (clause, binds) = where_clause(kind, filter);
        let limit = filter.limit.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
        let sql = self
            .sql(&format!(
                "SELECT {OBJECT_COLUMNS} FROM llmux_objects WHERE {clause} ORDER BY created_at, id LIMIT ? OFFSET ?"
            ))
            .into_owned();
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q
            .bind(limit as i64)
            .bind(filter.offset as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(object_from_row).collect()
    }

    pub async fn count(&self, kind: Kind, filter: &ListFilter) -> Result<u64> {
        let (clause, binds) = where_clause(kind, filter);
        let sql = self
            .sql(&format!(
                "SELECT COUNT(*) AS n FROM llmux_objects WHERE {clause}"
            ))
            .into_owned();
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let row = q.fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Keep a Responses API answer (see `StoredResponse`).
    pub async fn insert_response(&self, r: &StoredResponse) -> Result<()> {
        let sql = self.sql(
            "INSERT INTO llmux_responses (id, owner, created_at, response, input_items, conversation, previous_id, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        );
        sqlx::query(&sql)
            .bind(&r.id)
            .bind(&r.owner)
            .bind(r.created_at)
            .bind(&r.response)
            .bind(&r.input_items)
            .bind(&r.conversation)
            .bind(&r.previous_id)
            .bind(r.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A kept Responses API answer.
    pub async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>> {
        let sql = self.sql(
            "SELECT id, owner, created_at, response, input_items, conversation, previous_id, expires_at \
             FROM llmux_responses WHERE id = ? AND (expires_at = 0 OR expires_at > ?)",
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(StoredResponse {
                id: row.try_get("id")?,
                owner: row.try_get("owner")?,
                created_at: row.try_get("created_at")?,
                response: row.try_get("response")?,
                input_items: row.try_get("input_items")?,
                conversation: row.try_get("conversation")?,
                previous_id: row.try_get("previous_id")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// Forget kept Responses API answers that expired before `now`; how many.
    pub async fn prune_responses(&self, now: i64) -> Result<u64> {
        let sql = self.sql("DELETE FROM llmux_responses WHERE expires_at > 0 AND expires_at < ?");
        let done = sqlx::query(&sql).bind(now).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Forget a kept Responses API answer; `false` when there was none.
    pub async fn delete_response(&self, id: &str) -> Result<bool> {
        let sql = self.sql("DELETE FROM llmux_responses WHERE id = ?");
        let done = sqlx::query(&sql).bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Record that an object changed, for the other instances polling `changes_since`.
    pub async fn record_change(&self, kind: Kind, id: &str) -> Result<i64> {
        // `WHERE 1 = 1`: SQLite reads `ON CONFLICT` right after `FROM` as part of the join.
        let sql = self.sql(
            "INSERT INTO llmux_changes (seq, kind, id, at) \
             SELECT COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM llmux_changes WHERE 1 = 1 \
             ON CONFLICT (seq) DO NOTHING RETURNING seq",
        );
        if self.backend == Backend::Postgres {
            // Writers take turns (a transaction-scoped advisory lock), so each insert sees the
            // last number and none has to try again, however many record at once.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7245001)")
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(&sql)
                .bind(kind.as_str())
                .bind(id)
                .bind(now_ms())
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            return match row {
                Some(row) => Ok(row.try_get::<i64, _>("seq")?),
                None => Err(StoreError::Contention("llmux_changes")),
            };
        }
        // SQLite has one writer at a time; a conflict can only come from another process on
        // the same file, which tries again.
        for _ in 0..20 {
            let row = sqlx::query(&sql)
                .bind(kind.as_str())
                .bind(id)
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                return Ok(row.try_get::<i64, _>("seq")?);
            }
        }
        Err(StoreError::Contention("llmux_changes"))
    }

    /// Changes recorded after `seq`, oldest first (at most `limit`); a kind this version does
    /// not know comes with `None` (its number still moves the reader on).
    pub async fn changes_since(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<Kind>, String)>> {
        let sql =
            self.sql("SELECT seq, kind, id FROM llmux_changes WHERE seq > ? ORDER BY seq LIMIT ?");
        let rows = sqlx::query(&sql)
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get("kind")?;
            out.push((row.try_get("seq")?, Kind::parse(&kind), row.try_get("id")?));
        }
        Ok(out)
    }

    /// The number of the last change recorded (0: none).
    pub async fn last_change(&self) -> Result<i64> {
        let sql = "SELECT COALESCE(MAX(seq), 0) AS seq FROM llmux_changes";
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("seq")?)
    }

    /// Forget changes recorded before `before` (unix ms), keeping the last one (its number
    /// is where the next starts).
    pub async fn prune_changes(&self, before: i64) -> Result<u64> {
        let sql = self.sql(
            "DELETE FROM llmux_changes WHERE at < ? AND seq < (SELECT MAX(seq) FROM llmux_changes)",
        );
        let done = sqlx::query(&sql).bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Objects whose budget period ended at or before `now` (unix ms).
    pub async fn due_budget_resets(&self, now: i64) -> Result<Vec<Object>> {
        let sql = self
            .sql(&format!(
                "SELECT {OBJECT_COLUMNS} FROM llmux_objects WHERE budget_reset_at IS NOT NULL AND budget_reset_at <= ?"
            ))
            .into_owned();
        let rows = sqlx::query(&sql).bind(now).fetch_all(&self.pool).await?;
        rows.iter().map(object_from_row).collect()
    }

    /// Start a new budget period: spend back to 0 and the next reset at `next_reset`, unless
    /// another instance already did (the period's `budget_reset_at` is compared).
    pub async fn reset_budget(
        &self,
        kind: Kind,
        id: &str,
        period_end: i64,
        next_reset: i64,
    ) -> Result<bool> {
        let sql = self.sql(
            "UPDATE llmux_objects SET spend = 0, budget_reset_at = ?, updated_at = ? WHERE kind = ? AND id = ? AND budget_reset_at = ?",
        );
        let done = sqlx::query(&sql)
            .bind(next_reset)
            .bind(now_ms())
            .bind(kind.as_str())
            .bind(id)
            .bind(period_end)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn where_clause(kind: Kind, filter: &ListFilter) -> (String, Vec<String>) {
    let mut clause = String::from("kind = ?");
    let mut binds = vec![kind.as_str().to_owned()];
    for (column, value) in [
        ("user_id", &filter.user_id),
        ("team_id", &filter.team_id),
        ("organization_id", &filter.organization_id),
        ("alias", &filter.alias),
    ] {
        if let Some(v) = value {
            clause.push_str(&format!(" AND {column} = ?"));
            binds.push(v.clone());
        }
    }
    if let Some(ids) = &filter.ids {
        if ids.is_empty() {
            clause.push_str(" AND 1 = 0");
        } else {
            clause.push_str(" AND id IN (");
            clause.push_str(&vec!["?"; ids.len()].join(", "));
            clause.push(')');
            binds.extend(ids.iter().cloned());
        }
    }
    (clause, binds)
}

fn object_from_row(row: &AnyRow) -> Result<Object> {
    let kind: String = row.try_get("kind")?;
    let id: String = row.try_get("id")?;
    let data: String = row.try_get("data")?;
    let data = match serde_json::from_str::<Value>(&data) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(StoreError::Corrupt(
                format!("{kind}/{id}"),
                "data is not an object".into(),
            ))
        }
        Err(e) => return Err(StoreError::Corrupt(format!("{kind}/{id}"), e.to_string())),
    };
    Ok(Object {
        kind: Kind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("{kind}/{id}"), "unknown kind".into()))?,
        id,
        user_id: row.try_get("user_id")?,
        team_id: row.try_get("team_id")?,
        organization_id: row.try_get("organization_id")?,
        alias: row.try_get("alias")?,
        data,
        spend: row.try_get("spend")?,
        budget_reset_at: row.try_get("budget_reset_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests;

/// Databases for tests: a fresh SQLite file and a fresh PostgreSQL database per call. Test
/// support only: a missing test server must fail the test loudly, hence the panics.
#[allow(clippy::panic)]
pub mod testing {
    use sqlx::Connection;

    /// The PostgreSQL server the test suite uses (`LLMUX_TEST_POSTGRES_URL`, set by
    /// `scripts/test.sh`, which installs and starts one). Tests that need it fail without it.
    pub fn postgres_server_url() -> String {
        std::env::var("LLMUX_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!("LLMUX_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh, which starts PostgreSQL")
        })
    }

    /// A new, empty database on the test server; its URL.
    pub async fn fresh_postgres_url() -> String {
        let server = postgres_server_url();
        let name = format!(
            "llmux_test_{}_{}",
            std::process::id(),
            super::now_ms() as u64 % 1_000_000_000 * 1000
                + u64::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        );
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        format!("{base}/{name}")
    }

    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// A SQLite URL for a new file in `dir`.
    pub fn sqlite_url(dir: &std::path::Path) -> String {
        format!(
            "sqlite://{}/llmux-{}.db",
            dir.display(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }
}
