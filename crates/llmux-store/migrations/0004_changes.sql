-- Object changes, in order: instances of a fleet poll for rows after the last they saw and drop
-- their cached copies, so a change holds everywhere within a second even without Redis (or
-- while it is down). `seq` is assigned as MAX + 1 by the insert itself (portable, and a later
-- commit never takes a lower number); rows older than an hour are pruned.
CREATE TABLE llmux_changes (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    at BIGINT NOT NULL
);
