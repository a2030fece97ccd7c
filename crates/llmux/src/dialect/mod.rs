//! Inbound dialects: APIs a client may speak besides OpenAI chat completions. Each converts its
//! request into the internal (OpenAI chat) request, and the internal response and stream back
//! into its own shapes, so everything between (auth, limits, routing, retries, fallbacks,
//! spend, logs) is the same for every dialect.

pub mod anthropic;
pub mod responses;
