//! Deployments and model groups: builds them from the configuration, matches a requested model
//! name (exact, then the most specific wildcard), and picks a deployment (weighted random within
//! the best `order` tier). The router issue replaces the pick with full strategies and health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource, PROVIDER_SPECIFIC_PARAMS};
use llmux_providers::registry::{self, ResolvedProvider};
use llmux_providers::{HttpTarget, Operation, Provider};
use rand::Rng;
use serde_json::Value;

/// How a deployment is reached.
pub enum Backend {
    /// An HTTP upstream through a provider adapter.
    Http(Arc<dyn Provider>),
    /// The in-process `mock/` provider.
    Mock {
        model: String,
        response: Option<Value>,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Http(p) => write!(f, "Http({})", p.name()),
            Backend::Mock { model, .. } => write!(f, "Mock({model})"),
        }
    }
}

/// One routable deployment.
#[derive(Debug)]
pub struct Deployment {
    /// `model_info.id`, or a stable id derived from the entry.
    pub id: String,
    pub model_name: String,
    pub provider: &'static str,
    pub backend: Backend,
    pub timeout: Option<Duration>,
    pub stream_timeout: Option<Duration>,
    pub order: u32,
    pub config: DeploymentConfig,
}

impl Deployment {
    pub fn supports(&self, op: Operation) -> bool {
        match &self.backend {
            Backend::Http(p) => p.supports(op),
            Backend::Mock { .. } => true,
        }
    }
}

/// The result of matching a requested model name.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// Indices into `Router::deployments`.
    pub candidates: &'a [usize],
    /// What the group's `*` matched, for substitution into the upstream model.
    pub wildcard: Option<&'a str>,
    /// The model group's name as configured (e.g. `openai/*`).
    pub group: &'a str,
}

#[derive(Debug)]
struct Wildcard {
    pattern: String,
    prefix: String,
    suffix: String,
    members: Vec<usize>,
}

/// Model groups and their deployments, immutable once built.
#[derive(Debug, Default)]
pub struct Router {
    deployments: Vec<Arc<Deployment>>,
    groups: HashMap<String, Vec<usize>>,
    /// Group names in configuration order, for `/v1/models`.
    group_order: Vec<String>,
    /// Most specific (longest literal text) first.
    wildcards: Vec<Wildcard>,
}

impl Router {
    /// Build the routing table. Deployments that cannot be routed are reported and left out.
    pub fn build(config: &Config, env: &dyn EnvSource, diags: &mut Vec<Diagnostic>) -> Router {
        let mut router = Router::default();
        for dep in &config.deployments {
            let Some(deployment) = build_deployment(dep, config, env, diags) else {
                continue;
            };
            let index = router.deployments.len();
            router.deployments.push(Arc::new(deployment));
            let name = dep.model_name.clone();
            if let Some((prefix, suffix)) = name.split_once('*') {
                match router.wildcards.iter_mut().find(|w| w.pattern == name) {
                    Some(w) => w.members.push(index),
                    None => router.wildcards.push(Wildcard {
                        prefix: prefix.to_owned(),
                        suffix: suffix.to_owned(),
                        pattern: name,
                        members: vec![index],
                    }),
                }
            } else {
                let members = router.groups.entry(name.clone()).or_default();
                if members.is_empty() {
                    router.group_order.push(name);
                }
                members.push(index);
            }
        }
        router
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.prefix.len() + w.suffix.len()));
        router
    }

    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }

    pub fn deployment(&self, index: usize) -> &Arc<Deployment> {
        &self.deployments[index]
    }

    /// Model group names clients can ask for (wildcard groups are not listed).
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.group_order.iter().map(String::as_str)
    }

    pub fn has_model(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    /// Find the deployments serving `model`: an exact group, else the most specific wildcard.
    pub fn route<'a>(&'a self, model: &'a str) -> Option<RouteMatch<'a>> {
        if let Some((name, members)) = self.groups.get_key_value(model) {
            return Some(RouteMatch {
                candidates: members,
                wildcard: None,
                group: name,
            });
        }
        self.wildcards.iter().find_map(|w| {
            let matched = model.len() >= w.prefix.len() + w.suffix.len()
                && model.starts_with(&w.prefix)
                && model.ends_with(&w.suffix);
            matched.then(|| RouteMatch {
                candidates: &w.members,
                wildcard: Some(&model[w.prefix.len()..model.len() - w.suffix.len()]),
                group: &w.pattern,
            })
        })
    }

    /// Weighted random pick among the candidates of the best (lowest) `order` tier that support
    /// `op`. Weights: `weight` if any candidate sets one, else `rpm`, else `tpm`, else equal.
    pub fn pick(&self, candidates: &[usize], op: Operation) -> Option<usize> {
        let usable = |i: &&usize| self.deployments[**i].supports(op);
        let best_order = candidates
            .iter()
            .filter(usable)
            .map(|i| self.deployments[*i].order)
            .min()?;
        let tier: Vec<usize> = candidates
            .iter()
            .filter(usable)
            .copied()
            .filter(|i| self.deployments[*i].order == best_order)
            .collect();
        if tier.len() == 1 {
            return Some(tier[0]);
        }
        let weights = tier_weights(
            &tier
                .iter()
                .map(|i| &self.deployments[*i].config)
                .collect::<Vec<_>>(),
        );
        let total: f64 = weights.iter().sum();
        let mut rng = rand::rng();
        if total.is_nan() || total <= 0.0 {
            return Some(tier[rng.random_range(0..tier.len())]);
        }
        let mut point = rng.random_range(0.0..total);
        for (i, w) in tier.iter().zip(&weights) {
            if point < *w {
                return Some(*i);
            }
            point -= w;
        }
        tier.last().copied()
    }
}

fn tier_weights(configs: &[&DeploymentConfig]) -> Vec<f64> {
    let pick_basis = |get: &dyn Fn(&DeploymentConfig) -> Option<f64>| -> Option<Vec<f64>> {
        let values: Vec<Option<f64>> = configs.iter().map(|c| get(c)).collect();
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        if present.is_empty() {
            return None;
        }
        // A deployment without a value in the chosen basis gets the group's average.
        let fallback = present.iter().sum::<f64>() / present.len() as f64;
        Some(values.into_iter().map(|v| v.unwrap_or(fallback)).collect())
    };
    pick_basis(&|c| c.weight)
        .or_else(|| pick_basis(&|c| c.rpm.map(|v| v as f64)))
        .or_else(|| pick_basis(&|c| c.tpm.map(|v| v as f64)))
        .unwrap_or_else(|| vec![1.0; configs.len()])
}

fn build_deployment(
    dep: &DeploymentConfig,
    config: &Config,
    env: &dyn EnvSource,
    diags: &mut Vec<Diagnostic>,
) -> Option<Deployment> {
    let resolved = registry::resolve(dep, diags)?;
    let (provider, backend) = match resolved {
        ResolvedProvider::Mock { upstream_model } => (
            registry::MOCK_PROVIDER,
            Backend::Mock {
                model: upstream_model,
                response: dep.mock_response.clone(),
            },
        ),
        ResolvedProvider::OpenAiCompatible {
            spec,
            upstream_model,
        } => {
            let target = HttpTarget::new(spec, &upstream_model, dep, config, env, diags)?;
            (spec.name, Backend::Http(Arc::new(target)))
        }
    };
    if dep.mock_response.is_some() && provider != registry::MOCK_PROVIDER {
        diags.push(Diagnostic::warning(
            format!("{}.litellm_params.mock_response", dep.path()),
            "mock_response only applies to `mock/` models; ignored",
        ));
    }
    for key in dep.provider_params.keys() {
        let path = format!("{}.litellm_params.{key}", dep.path());
        let message = if PROVIDER_SPECIFIC_PARAMS.contains(&key.as_str()) {
            format!("`{key}` is not supported yet for provider `{provider}`; ignored")
        } else {
            format!("unknown litellm_params key `{key}`; ignored")
        };
        diags.push(Diagnostic::warning(path, message));
    }
    let id = dep.model_info.id.clone().unwrap_or_else(|| stable_id(dep));
    Some(Deployment {
        id,
        model_name: dep.model_name.clone(),
        provider,
        backend,
        timeout: dep.timeout,
        stream_timeout: dep.stream_timeout,
        order: dep.order.unwrap_or(u32::MAX),
        config: dep.clone(),
    })
}

/// FNV-1a over what identifies an entry: stable across restarts while the entry is unchanged.
fn stable_id(dep: &DeploymentConfig) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    let parts = [
        dep.model_name.as_str(),
        dep.model.as_str(),
        dep.api_base.as_deref().unwrap_or(""),
    ];
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash ^= dep.index as u64;
    hash = hash.wrapping_mul(0x100000001b3);
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Env;

    fn router(yaml: &str) -> (Router, Vec<Diagnostic>) {
        let loaded = llmux_config::load_str(yaml, &Env::new()).unwrap();
        let mut diags = loaded.diagnostics;
        let r = Router::build(&loaded.config, &Env::<String, String>::new(), &mut diags);
        (r, diags)
    }

    #[test]
    fn exact_groups_win_over_wildcards_and_specific_wildcards_over_general() {
        let (r, _) = router(
            r#"
model_list:
  - {model_name: gpt-4o, litellm_params: {model: mock/exact}}
  - {model_name: "openai/*", litellm_params: {model: "openai/*", api_key: k}}
  - {model_name: "*", litellm_params: {model: "groq/*", api_key: k}}
"#,
        );
        let m = r.route("gpt-4o").unwrap();
        assert_eq!((m.group, m.wildcard), ("gpt-4o", None));
        let m = r.route("openai/gpt-4.1").unwrap();
        assert_eq!((m.group, m.wildcard), ("openai/*", Some("gpt-4.1")));
        let m = r.route("llama").unwrap();
        assert_eq!((m.group, m.wildcard), ("*", Some("llama")));
        let Backend::Http(p) = &r.deployment(m.candidates[0]).backend else {
            panic!()
        };
        assert_eq!(p.name(), "groq");
        assert_eq!(r.model_names().collect::<Vec<_>>(), vec!["gpt-4o"]);
    }

    #[test]
    fn unknown_model_is_none_without_a_catch_all() {
        let (r, _) = router("model_list: [{model_name: a, litellm_params: {model: mock/a}}]");
        assert!(r.route("b").is_none());
        assert!(r.route("a").is_some());
    }

    #[test]
    fn weighted_pick_follows_weights_and_order_tiers() {
        let (r, _) = router(
            r#"
model_list:
  - {model_name: g, litellm_params: {model: mock/a, weight: 9}}
  - {model_name: g, litellm_params: {model: mock/b, weight: 1}}
  - {model_name: h, litellm_params: {model: mock/c, order: 2}}
  - {model_name: h, litellm_params: {model: mock/d, order: 1}}
"#,
        );
        let g = r.route("g").unwrap();
        let mut counts = [0usize; 2];
        for _ in 0..10_000 {
            counts[r.pick(g.candidates, Operation::Chat).unwrap()] += 1;
        }
        // 90% expected; the bound is far outside what chance produces in 10,000 draws.
        assert!(counts[0] > 8_500 && counts[0] < 9_500, "{counts:?}");
        let h = r.route("h").unwrap();
        for _ in 0..100 {
            assert_eq!(r.pick(h.candidates, Operation::Chat), Some(3));
        }
    }

    #[test]
    fn rpm_is_the_weight_when_no_weight_is_set() {
        let w = tier_weights(&[
            &llmux_config::load_str(
                "model_list: [{model_name: g, litellm_params: {model: mock/a, rpm: 30}}]",
                &Env::new(),
            )
            .unwrap()
            .config
            .deployments[0],
            &llmux_config::load_str(
                "model_list: [{model_name: g, litellm_params: {model: mock/b}}]",
                &Env::new(),
            )
            .unwrap()
            .config
            .deployments[0],
        ]);
        assert_eq!(w, vec![30.0, 30.0]);
    }

    #[test]
    fn native_and_misconfigured_deployments_are_reported_and_skipped() {
        let (r, diags) = router(
            r#"
model_list:
  - {model_name: c, litellm_params: {model: anthropic/claude}}
  - {model_name: v, litellm_params: {model: hosted_vllm/llama}}
  - {model_name: ok, litellm_params: {model: mock/x, vertex_project: p, frobnicate: 1}}
"#,
        );
        assert!(r.route("c").is_none());
        assert!(r.route("v").is_none(), "hosted_vllm needs an api_base");
        assert!(r.route("ok").is_some());
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("model_list[0].litellm_params.model")
                    && t.contains("native adapter")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("error: model_list[1].litellm_params.api_base")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("vertex_project") && t.contains("not supported yet")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("frobnicate") && t.contains("unknown")),
            "{text:?}"
        );
    }

    #[test]
    fn ids_are_stable_and_model_info_id_wins() {
        let yaml = "model_list: [{model_name: a, litellm_params: {model: mock/a}}, {model_name: a, litellm_params: {model: mock/a}, model_info: {id: mine}}]";
        let (r1, _) = router(yaml);
        let (r2, _) = router(yaml);
        assert_eq!(r1.deployment(0).id, r2.deployment(0).id);
        assert_eq!(r1.deployment(1).id, "mine");
    }
}
