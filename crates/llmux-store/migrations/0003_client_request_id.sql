-- The spend log is keyed by llmux's own request id; the id a client sent (`x-request-id`) is kept
-- beside it. Keying by the client's id let ten requests that reused one id collapse into one row
-- (and one tenth of their spend), and another key's request with a reused id vanish.
ALTER TABLE llmux_spend_logs ADD COLUMN client_request_id TEXT NOT NULL DEFAULT '';
