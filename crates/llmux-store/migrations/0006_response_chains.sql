-- Stored responses keep only their own turn (this input, this output) and a link to the response
-- they continue, instead of the whole conversation again (a chain of N turns stored N^2 items),
-- and expire (30 days, as OpenAI keeps them). Rows written before this keep their full
-- conversation and no link, which reads the same.
ALTER TABLE llmux_responses ADD COLUMN previous_id TEXT NOT NULL DEFAULT '';
ALTER TABLE llmux_responses ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX llmux_responses_expiry ON llmux_responses (expires_at);
