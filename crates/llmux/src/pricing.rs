//! What a request cost: a price registry in LiteLLM's `model_prices_and_context_window.json`
//! format (loaded from a file or URL, reloaded when it changes, or a small built-in table), plus
//! per-deployment overrides from `litellm_params` / `model_info`. Cost comes from actual usage:
//! uncached, cached (read) and cache-write prompt tokens, and output with reasoning tokens,
//! at tiered prices above a prompt size where the format has them. An unknown model costs 0,
//! with one warning per model and a counter, never an error.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use llmux_config::DeploymentConfig;
use llmux_types::Usage;
use serde_json::{Map, Value};

/// Public list prices of a few common models, for when no `model_cost_map` is configured.
const BUILTIN: &str = include_str!("pricing_builtin.json");

/// Prices above a prompt size (`*_above_200k_tokens`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTier {
    pub above_tokens: u64,
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
}

/// Per-token prices of one model, in USD.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
    pub reasoning: Option<f64>,
    /// Ascending by threshold.
    pub tiers: Vec<PriceTier>,
}

const INPUT: &str = "input_cost_per_token";
const OUTPUT: &str = "output_cost_per_token";
const CACHE_READ: &str = "cache_read_input_token_cost";
const CACHE_WRITE: &str = "cache_creation_input_token_cost";
const REASONING: &str = "output_cost_per_reasoning_token";

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
}

/// `input_cost_per_token_above_200k_tokens` → (`input_cost_per_token`, 200_000).
fn tier_key(key: &str) -> Option<(&str, u64)> {
    let (base, rest) = key.split_once("_above_")?;
    let n: u64 = rest.strip_suffix("k_tokens")?.parse().ok()?;
    Some((base, n * 1000))
}

impl ModelPrice {
    /// From one entry of the LiteLLM format; `None` when it has no token prices.
    pub fn from_entry(entry: &Map<String, Value>) -> Option<ModelPrice> {
        let get = |k: &str| entry.get(k).and_then(number);
        if get(INPUT).is_none() && get(OUTPUT).is_none() {
            return None;
        }
        let mut tiers: HashMap<u64, PriceTier> = HashMap::new();
        for (key, value) in entry {
            let (Some((base, above)), Some(price)) = (tier_key(key), number(value)) else {
                continue;
            };
            let tier = tiers.entry(above).or_insert_with(|| PriceTier {
                above_tokens: above,
                ..PriceTier::default()
            });
            match base {
                INPUT => tier.input = Some(price),
                OUTPUT => tier.output = Some(price),
                CACHE_READ => tier.cache_read = Some(price),
                CACHE_WRITE => tier.cache_write = Some(price),
                _ => {}
            }
        }
        let mut tiers: Vec<PriceTier> = tiers.into_values().collect();
        tiers.sort_by_key(|t| t.above_tokens);
        Some(ModelPrice {
            input: get(INPUT).unwrap_or(0.0),
            output: get(OUTPUT).unwrap_or(0.0),
            cache_read: get(CACHE_READ),
            cache_write: get(CACHE_WRITE),
            reasoning: get(REASONING),
            tiers,
        })
    }

    /// Apply a deployment's own prices (any of the five keys) over this one.
    fn overridden(mut self, overrides: &Map<String, Value>) -> ModelPrice {
        let get = |k: &str| overrides.get(k).and_then(number);
        if let Some(v) = get(INPUT) {
            self.input = v;
            // A deployment's own price replaces the table's tiers for it.
            self.tiers.clear();
        }
        if let Some(v) = get(OUTPUT) {
            self.output = v;
            self.tiers.clear();
        }
        if let Some(v) = get(CACHE_READ) {
            self.cache_read = Some(v);
        }
        if let Some(v) = get(CACHE_WRITE) {
            self.cache_write = Some(v);
        }
        if let Some(v) = get(REASONING) {
            self.reasoning = Some(v);
        }
        self
    }

    /// USD for this usage.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let prompt = usage.prompt_tokens;
        let tier = self.tiers.iter().rev().find(|t| prompt > t.above_tokens);
        let input = tier.and_then(|t| t.input).unwrap_or(self.input);
        let output = tier.and_then(|t| t.output).unwrap_or(self.output);
        let cache_read = tier
            .and_then(|t| t.cache_read)
            .or(self.cache_read)
            .unwrap_or(input);
        let cache_write = tier
            .and_then(|t| t.cache_write)
            .or(self.cache_write)
            .unwrap_or(input);
        let cached = usage.cached_tokens().min(prompt);
        let written = usage.cache_creation_tokens().min(prompt - cached);
        let uncached = prompt - cached - written;
        let reasoning = usage.reasoning_tokens().min(usage.completion_tokens);
        let visible = usage.completion_tokens - reasoning;
        uncached as f64 * input
            + cached as f64 * cache_read
            + written as f64 * cache_write
            + visible as f64 * output
            + reasoning as f64 * self.reasoning.unwrap_or(output)
    }
}

/// Prices by model name.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    models: foldhash::HashMap<String, ModelPrice>,
}

impl PriceTable {
    pub fn builtin() -> PriceTable {
        // The built-in table is part of the binary and tested; it always parses.
        PriceTable::parse(BUILTIN).unwrap_or_default()
    }

    /// Parse LiteLLM's format: `{model: {input_cost_per_token, ...}, ...}`. Entries without token
    /// prices (images, audio seconds, the `sample_spec` entry) are skipped.
    pub fn parse(json: &str) -> Result<PriceTable, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
        let Value::Object(entries) = v else {
            return Err("expected an object of models".into());
        };
        let models: foldhash::HashMap<String, ModelPrice> = entries
            .iter()
            .filter_map(|(name, entry)| {
                Some((name.clone(), ModelPrice::from_entry(entry.as_object()?)?))
            })
            .collect();
        if models.is_empty() {
            return Err("no model has token prices".into());
        }
        Ok(PriceTable { models })
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }
}

/// The names a deployment's model may be priced under, most specific first: `base_model`, the
/// full `provider/model`, the bare model, and for Bedrock the id without a route or region prefix.
pub fn price_keys(dep: &DeploymentConfig) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(base) = dep
        .model_info
        .extra
        .get("base_model")
        .or_else(|| dep.provider_params.get("base_model"))
        .and_then(Value::as_str)
    {
        keys.push(base.to_owned());
    }
    keys.push(dep.model.clone());
    if let Some((_, bare)) = dep.model.split_once('/') {
        keys.push(bare.to_owned());
        let route = bare
            .strip_prefix("converse/")
            .or_else(|| bare.strip_prefix("invoke/"))
            .unwrap_or(bare);
        keys.push(route.to_owned());
        for region in ["us.", "eu.", "apac.", "global."] {
            if let Some(id) = route.strip_prefix(region) {
                keys.push(id.to_owned());
            }
        }
    }
    keys.dedup();
    keys
}

/// The registry the gateway prices with; the table can be swapped while requests run.
#[derive(Debug)]
pub struct Pricing {
    table: ArcSwap<PriceTable>,
    /// Resolved prices by deployment id (cleared when the table changes), so a request does one
    /// map lookup instead of building price keys.
    resolved: std::sync::RwLock<foldhash::HashMap<String, Option<Arc<ModelPrice>>>>,
    warned: Mutex<HashSet<String>>,
    unpriced: AtomicU64,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing::new(PriceTable::builtin())
    }
}

impl Pricing {
    pub fn new(table: PriceTable) -> Pricing {
        Pricing {
            table: ArcSwap::from_pointee(table),
            resolved: Default::default(),
            warned: Mutex::new(HashSet::new()),
            unpriced: AtomicU64::new(0),
        }
    }

    pub fn replace(&self, table: PriceTable) {
        self.table.store(Arc::new(table));
        if let Ok(mut r) = self.resolved.write() {
            r.clear();
        }
        if let Ok(mut w) = self.warned.lock() {
            w.clear();
        }
    }

    pub fn table(&self) -> Arc<PriceTable> {
        self.table.load_full()
    }

    /// Requests priced at 0 because their model has no price.
    pub fn unpriced_requests(&self) -> u64 {
        self.unpriced.load(Ordering::Relaxed)
    }

    /// The deployment's price: its own overrides over the table's entry. `None` when neither
    /// knows it (warned once per model).
    pub fn price_for(&self, dep: &DeploymentConfig) -> Option<ModelPrice> {
        let mut overrides = dep.model_info.extra.clone();
        overrides.extend(dep.provider_params.clone());
        let table = self.table.load();
        let from_table = price_keys(dep).iter().find_map(|k| table.get(k).cloned());
        match from_table {
            Some(p) => Some(p.overridden(&overrides)),
            None if overrides.contains_key(INPUT) || overrides.contains_key(OUTPUT) => {
                Some(ModelPrice::default().overridden(&overrides))
            }
            None => None,
        }
    }

    /// `price_for`, cached by deployment id until the table changes.
    pub fn deployment_price(&self, id: &str, dep: &DeploymentConfig) -> Option<Arc<ModelPrice>> {
        if let Some(hit) = self.resolved.read().ok().and_then(|r| r.get(id).cloned()) {
            return hit;
        }
        let price = self.price_for(dep).map(Arc::new);
        if let Ok(mut r) = self.resolved.write() {
            if r.len() < 100_000 {
                r.insert(id.to_owned(), price.clone());
            }
        }
        price
    }

    /// USD for a deployment's usage; 0 (counted, warned once) when the model has no price.
    pub fn cost(&self, dep: &DeploymentConfig, usage: &Usage) -> f64 {
        self.cost_of(self.price_for(dep).as_ref(), &dep.model, usage)
    }

    /// USD for usage at `price`; 0 (counted, warned once per model) without one.
    pub fn cost_of(&self, price: Option<&ModelPrice>, model: &str, usage: &Usage) -> f64 {
        match price {
            Some(p) => p.cost(usage),
            None => {
                self.unpriced.fetch_add(1, Ordering::Relaxed);
                let first = self
                    .warned
                    .lock()
                    .map(|mut w| w.insert(model.to_owned()))
                    .unwrap_or(false);
                if first {
                    tracing::warn!(model = %model, "no price for this model; its requests cost 0 (set input_cost_per_token / output_cost_per_token or llmux_settings.model_cost_map)");
                }
                0.0
            }
        }
    }
}

/// Read a cost map from a path or an http(s) URL.
pub async fn fetch_table(source: &str) -> Result<PriceTable, String> {
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        let response = reqwest::get(source)
            .await
            .map_err(|e| format!("cannot fetch {source}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("cannot fetch {source}: HTTP {}", response.status()));
        }
        response
            .text()
            .await
            .map_err(|e| format!("cannot fetch {source}: {e}"))?
    } else {
        tokio::fs::read_to_string(source)
            .await
            .map_err(|e| format!("cannot read {source}: {e}"))?
    };
    PriceTable::parse(&text).map_err(|e| format!("{source}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmux_types::usage::{CompletionTokensDetails, PromptTokensDetails};

    fn fixture() -> PriceTable {
        let path = format!(
            "{}/../../tests/fixtures/pricing/model_prices_and_context_window.json",
            std::env::var("CARGO_MANIFEST_DIR").unwrap()
        );
        PriceTable::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn dep(yaml_params: &str) -> DeploymentConfig {
        let loaded = llmux_config::load_str(
            &format!("model_list: [{{model_name: m, litellm_params: {yaml_params}}}]"),
            &HashMap::<String, String>::new(),
        )
        .unwrap();
        loaded.config.deployments[0].clone()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_litellm_fixture_parses_and_prices_match_it() {
        let table = fixture();
        assert!(table.len() > 3000);
        let gpt = table.get("gpt-4o").unwrap();
        assert_eq!(
            (gpt.input, gpt.output, gpt.cache_read),
            (2.5e-6, 1e-5, Some(1.25e-6))
        );
        let mut usage = Usage::new(1000, 200);
        usage.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(400),
        });
        // 600 uncached at 2.5e-6, 400 cached at 1.25e-6, 200 out at 1e-5.
        assert!(close(
            gpt.cost(&usage),
            600.0 * 2.5e-6 + 400.0 * 1.25e-6 + 200.0 * 1e-5
        ));
    }

    #[test]
    fn tiers_apply_above_their_prompt_size() {
        let table = fixture();
        let pro = table.get("gemini-2.5-pro").unwrap();
        assert_eq!(pro.tiers[0].above_tokens, 200_000);
        let small = Usage::new(200_000, 100);
        assert!(close(pro.cost(&small), 200_000.0 * 1.25e-6 + 100.0 * 1e-5));
        let large = Usage::new(200_001, 100);
        assert!(close(pro.cost(&large), 200_001.0 * 2.5e-6 + 100.0 * 1.5e-5));
    }

    #[test]
    fn reasoning_and_cache_writes_are_priced() {
        let mut entry = Map::new();
        entry.insert(INPUT.into(), Value::from(1e-6));
        entry.insert(OUTPUT.into(), Value::from(4e-6));
        entry.insert(CACHE_WRITE.into(), Value::from(1.25e-6));
        entry.insert(REASONING.into(), Value::from(8e-6));
        let price = ModelPrice::from_entry(&entry).unwrap();
        let mut usage = Usage::new(100, 50);
        usage.cache_creation_input_tokens = Some(40);
        usage.completion_tokens_details = Some(CompletionTokensDetails {
            reasoning_tokens: Some(30),
        });
        let expected = 60.0 * 1e-6 + 40.0 * 1.25e-6 + 20.0 * 4e-6 + 30.0 * 8e-6;
        assert!(close(price.cost(&usage), expected));
    }

    #[test]
    fn deployments_find_their_price_and_may_override_it() {
        let pricing = Pricing::new(fixture());
        let usage = Usage::new(1_000_000, 1_000_000);
        let p = pricing.price_for(&dep("{model: openai/gpt-4o}")).unwrap();
        assert!(close(p.cost(&usage), 2.5 + 10.0));
        let p = pricing
            .price_for(&dep(
                "{model: azure/my-deployment, base_model: gpt-4o-mini}",
            ))
            .unwrap();
        assert_eq!(p.input, 1.5e-7, "base_model prices an Azure deployment");
        let p = pricing
            .price_for(&dep("{model: openai/gpt-4o, input_cost_per_token: 0.001}"))
            .unwrap();
        assert_eq!((p.input, p.output), (0.001, 1e-5));
        let p = pricing
            .price_for(&dep("{model: hosted_vllm/llama, api_base: \"http://x\", input_cost_per_token: 1, output_cost_per_token: 2}"))
            .unwrap();
        assert!(close(p.cost(&Usage::new(3, 4)), 11.0));
        assert!(pricing
            .price_for(&dep(
                "{model: \"bedrock/us.anthropic.claude-3-5-sonnet-20240620-v1:0\"}"
            ))
            .is_some());

        let unknown = dep("{model: openai/no-such-model}");
        assert_eq!(pricing.cost(&unknown, &usage), 0.0);
        assert_eq!(pricing.cost(&unknown, &usage), 0.0);
        assert_eq!(pricing.unpriced_requests(), 2);
    }

    #[test]
    fn the_builtin_table_parses_and_bad_maps_are_refused() {
        let builtin = PriceTable::builtin();
        assert!(builtin.len() >= 15);
        assert!(builtin.get("gpt-4o-mini").is_some());
        assert!(PriceTable::parse("[]").is_err());
        assert!(PriceTable::parse("{\"sample_spec\": {\"mode\": \"chat\"}}").is_err());
        assert!(PriceTable::parse("nope").is_err());
    }
}
