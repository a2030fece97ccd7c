//! Embeddings on Bedrock through InvokeModel: Amazon Titan (one text per call) and Cohere Embed
//! (a batch per call), translated to and from OpenAI's embeddings shape (pure).

use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};
use serde_json::{json, Value};

use crate::common::invalid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Titan,
    Cohere,
}

/// Which embedding family a Bedrock model id (possibly region-prefixed) belongs to.
pub fn family(model: &str) -> Option<Family> {
    let id = model.rsplit('/').next().unwrap_or(model);
    if id.contains("amazon.titan-embed") {
        Some(Family::Titan)
    } else if id.contains("cohere.embed") {
        Some(Family::Cohere)
    } else {
        None
    }
}

fn inputs(request: &RawObject<'_>) -> Result<Vec<String>, GatewayError> {
    match request.decode::<Value>("input").ok().flatten() {
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(invalid(
                    "Bedrock embeddings take text inputs (strings), not token arrays",
                    "input",
                )),
            })
            .collect(),
        _ => Err(invalid(
            "`input` must be a string or an array of strings",
            "input",
        )),
    }
}

/// The InvokeModel body for an OpenAI embeddings request.
pub fn build(family: Family, request: &RawObject<'_>) -> Result<Value, GatewayError> {
    let texts = inputs(request)?;
    match family {
        Family::Titan => {
            let [text] = texts.as_slice() else {
                return Err(invalid(
                    format!(
                        "Amazon Titan embeds one text per request; got {} (send them one at a time)",
                        texts.len()
                    ),
                    "input",
                ));
            };
            let mut body = json!({"inputText": text});
            if let Some(d) = request.decode::<u64>("dimensions").ok().flatten() {
                body["dimensions"] = json!(d);
            }
            if let Some(n) = request.decode::<bool>("normalize").ok().flatten() {
                body["normalize"] = json!(n);
            }
            Ok(body)
        }
        Family::Cohere => {
            let input_type = request
                .decode::<String>("input_type")
                .ok()
                .flatten()
                .unwrap_or_else(|| "search_document".to_owned());
            let mut body = json!({"texts": texts, "input_type": input_type});
            if let Some(t) = request.decode::<String>("truncate").ok().flatten() {
                body["truncate"] = json!(t);
            }
            Ok(body)
        }
    }
}

fn vector(v: &Value) -> Result<Value, GatewayError> {
    v.as_array()
        .map(|a| Value::Array(a.clone()))
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::UpstreamError,
                "bedrock embedding is not an array",
            )
        })
}

/// The InvokeModel answer as an OpenAI embeddings list.
pub fn translate(
    family: Family,
    body: &[u8],
    model: &str,
) -> Result<(Value, Option<Usage>), GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("bedrock returned invalid JSON: {e}"),
        )
    })?;
    let (vectors, tokens) = match family {
        Family::Titan => (
            vec![vector(v.get("embedding").unwrap_or(&Value::Null))?],
            v.get("inputTextTokenCount")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        ),
        Family::Cohere => {
            // `embeddings` is a list of vectors, or by type (`{"float": [...]}`) when
            // `embedding_types` was sent.
            let list = match v.get("embeddings") {
                Some(Value::Object(by_type)) => by_type.get("float").cloned().unwrap_or_default(),
                Some(other) => other.clone(),
                None => Value::Null,
            };
            let vectors = list
                .as_array()
                .ok_or_else(|| {
                    GatewayError::new(ErrorKind::UpstreamError, "bedrock returned no embeddings")
                })?
                .iter()
                .map(vector)
                .collect::<Result<Vec<_>, _>>()?;
            (vectors, 0)
        }
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
        .collect();
    let usage = Usage::new(tokens, 0);
    Ok((
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        Some(usage),
    ))
}
