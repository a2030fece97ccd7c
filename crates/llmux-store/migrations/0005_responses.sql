-- Responses kept for the OpenAI Responses API's `store` (`GET /v1/responses/{id}`,
-- `previous_response_id`): the Response object, this request's input items, and the whole
-- conversation up to and including this answer (earlier turns, this input, this output), owned
-- by the key that made it (`owner`: its hash; empty for the master key).
CREATE TABLE llmux_responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
);
