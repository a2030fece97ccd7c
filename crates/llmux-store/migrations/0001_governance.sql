-- Governance objects and spend. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are unix milliseconds (BIGINT); JSON documents are TEXT.

-- Keys, users, teams, organizations, customers (end users), budgets and database-stored models,
-- each a LiteLLM-shaped JSON document. Relations used for lookups and listings are columns;
-- spend is a column so it can be incremented atomically.
CREATE TABLE llmux_objects (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT,
    team_id TEXT,
    organization_id TEXT,
    alias TEXT,
    data TEXT NOT NULL,
    spend DOUBLE PRECISION NOT NULL DEFAULT 0,
    budget_reset_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX llmux_objects_user ON llmux_objects (kind, user_id);
CREATE INDEX llmux_objects_team ON llmux_objects (kind, team_id);
CREATE INDEX llmux_objects_org ON llmux_objects (kind, organization_id);
CREATE INDEX llmux_objects_alias ON llmux_objects (kind, alias);
CREATE INDEX llmux_objects_reset ON llmux_objects (budget_reset_at);

-- One row per request.
CREATE TABLE llmux_spend_logs (
    request_id TEXT PRIMARY KEY,
    api_key TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    team_id TEXT NOT NULL DEFAULT '',
    organization_id TEXT NOT NULL DEFAULT '',
    end_user TEXT NOT NULL DEFAULT '',
    model_group TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    deployment_id TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    call_type TEXT NOT NULL DEFAULT '',
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    spend DOUBLE PRECISION NOT NULL DEFAULT 0,
    start_time BIGINT NOT NULL,
    end_time BIGINT NOT NULL,
    ttft_ms BIGINT,
    status TEXT NOT NULL DEFAULT 'success',
    error_kind TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]',
    cache_hit BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX llmux_spend_logs_time ON llmux_spend_logs (start_time);
CREATE INDEX llmux_spend_logs_key ON llmux_spend_logs (api_key, start_time);
CREATE INDEX llmux_spend_logs_user ON llmux_spend_logs (user_id, start_time);
CREATE INDEX llmux_spend_logs_team ON llmux_spend_logs (team_id, start_time);

-- Daily rollups, maintained with every spend write, so /global/spend* reads a few rows per day
-- instead of scanning the logs. kind: key | user | team | organization | end_user | tag | model | all
CREATE TABLE llmux_daily_spend (
    day TEXT NOT NULL,
    kind TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    model_group TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    spend DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (day, kind, entity_id, model_group)
);
CREATE INDEX llmux_daily_spend_kind ON llmux_daily_spend (kind, day);
