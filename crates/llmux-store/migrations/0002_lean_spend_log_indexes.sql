-- Every index on the spend log is paid on every request (each is one more B-tree insert in the
-- write path, and at tens of thousands of requests a second it was a third of the spend writer's
-- cost). Keep what listing by time needs (start_time) and the primary key (replay dedup); the
-- per-key/user/team questions are answered by llmux_daily_spend and the owners' spend columns,
-- and a filtered /spend/logs walks the time index. LiteLLM's LiteLLM_SpendLogs makes the same
-- trade: it indexes startTime (and end_user), not api_key, user or team.
DROP INDEX IF EXISTS llmux_spend_logs_key;
DROP INDEX IF EXISTS llmux_spend_logs_user;
DROP INDEX IF EXISTS llmux_spend_logs_team;
