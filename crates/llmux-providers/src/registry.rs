//! The table of OpenAI-compatible providers (adding one is a row), the list of native providers
//! that have their own adapters, and resolution of `litellm_params.model` to a provider.

use llmux_config::{DeploymentConfig, Diagnostic};

/// How a provider expects the API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>`
    Bearer,
    /// `<header>: <key>`
    Header(&'static str),
}

/// How a provider lays out its URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlStyle {
    /// `{base}/chat/completions`, `{base}/completions`, `{base}/embeddings`.
    OpenAi,
    /// Azure OpenAI: `{base}/openai/deployments/{model}/chat/completions?api-version=...`.
    AzureDeployments,
    /// OpenAI paths with `?api-version=...` when the deployment sets one (Azure AI Foundry).
    OpenAiWithApiVersion,
}

/// One OpenAI-compatible provider: where it lives and how to authenticate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderSpec {
    /// The `provider/` prefix in `litellm_params.model`.
    pub name: &'static str,
    /// Base URL used when the deployment has no `api_base`.
    pub default_base: Option<&'static str>,
    /// Environment variables read for `api_base` when the deployment has none, in order.
    pub base_env: &'static [&'static str],
    /// Environment variables read for the key when the deployment has none, in order.
    pub key_env: &'static [&'static str],
    pub auth: AuthStyle,
    /// Whether a request without any key is a configuration error (local servers need none).
    pub key_required: bool,
    /// Path appended to an `api_base` that lacks it (Ollama users write the server root).
    pub base_suffix: Option<&'static str>,
    /// Prefix added to model names that have no `/` (Fireworks' `accounts/fireworks/models/`).
    pub model_prefix: Option<&'static str>,
    /// OpenAI parameters the provider rejects: dropped with `drop_params`, else a 400.
    pub unsupported_params: &'static [&'static str],
    pub supports_embeddings: bool,
    pub supports_completions: bool,
    pub url_style: UrlStyle,
}

const fn row(
    name: &'static str,
    default_base: &'static str,
    key_env: &'static [&'static str],
) -> ProviderSpec {
    ProviderSpec {
        name,
        default_base: Some(default_base),
        base_env: &[],
        key_env,
        auth: AuthStyle::Bearer,
        key_required: true,
        base_suffix: None,
        model_prefix: None,
        unsupported_params: &[],
        supports_embeddings: false,
        supports_completions: false,
        url_style: UrlStyle::OpenAi,
    }
}

/// A local or self-hosted server: base URL from config or environment, key optional.
const fn local(
    name: &'static str,
    default_base: Option<&'static str>,
    base_env: &'static [&'static str],
    key_env: &'static [&'static str],
) -> ProviderSpec {
    ProviderSpec {
        name,
        default_base,
        base_env,
        key_env,
        auth: AuthStyle::Bearer,
        key_required: false,
        base_suffix: None,
        model_prefix: None,
        unsupported_params: &[],
        supports_embeddings: true,
        supports_completions: true,
        url_style: UrlStyle::OpenAi,
    }
}

/// Every OpenAI-compatible provider llmux knows by prefix.
pub static OPENAI_COMPATIBLE: &[ProviderSpec] = &[
    ProviderSpec {
        default_base: None,
        base_env: &["AZURE_API_BASE", "AZURE_OPENAI_ENDPOINT"],
        auth: AuthStyle::Header("api-key"),
        supports_embeddings: true,
        supports_completions: true,
        url_style: UrlStyle::AzureDeployments,
        ..row("azure", "", &["AZURE_API_KEY", "AZURE_OPENAI_API_KEY"])
    },
    ProviderSpec {
        default_base: None,
        base_env: &["AZURE_AI_API_BASE"],
        auth: AuthStyle::Header("api-key"),
        supports_embeddings: true,
        url_style: UrlStyle::OpenAiWithApiVersion,
        ..row("azure_ai", "", &["AZURE_AI_API_KEY"])
    },
    ProviderSpec {
        base_env: &["OPENAI_BASE_URL", "OPENAI_API_BASE"],
        supports_embeddings: true,
        supports_completions: true,
        ..row("openai", "https://api.openai.com/v1", &["OPENAI_API_KEY"])
    },
    ProviderSpec {
        key_required: false,
        supports_embeddings: true,
        supports_completions: true,
        ..row(
            "text-completion-openai",
            "https://api.openai.com/v1",
            &["OPENAI_API_KEY"],
        )
    },
    local(
        "openai_like",
        None,
        &["OPENAI_LIKE_API_BASE"],
        &["OPENAI_LIKE_API_KEY"],
    ),
    local(
        "custom_openai",
        None,
        &["CUSTOM_OPENAI_API_BASE"],
        &["CUSTOM_OPENAI_API_KEY"],
    ),
    ProviderSpec {
        unsupported_params: &["logit_bias", "logprobs", "top_logprobs"],
        ..row("groq", "https://api.groq.com/openai/v1", &["GROQ_API_KEY"])
    },
    ProviderSpec {
        base_env: &["DEEPSEEK_API_BASE"],
        ..row(
            "deepseek",
            "https://api.deepseek.com/v1",
            &["DEEPSEEK_API_KEY"],
        )
    },
    ProviderSpec {
        supports_embeddings: true,
        ..row("mistral", "https://api.mistral.ai/v1", &["MISTRAL_API_KEY"])
    },
    ProviderSpec {
        supports_embeddings: true,
        supports_completions: true,
        ..row(
            "together_ai",
            "https://api.together.xyz/v1",
            &[
                "TOGETHERAI_API_KEY",
                "TOGETHER_API_KEY",
                "TOGETHER_AI_API_KEY",
            ],
        )
    },
    ProviderSpec {
        model_prefix: Some("accounts/fireworks/models/"),
        supports_embeddings: true,
        supports_completions: true,
        ..row(
            "fireworks_ai",
            "https://api.fireworks.ai/inference/v1",
            &[
                "FIREWORKS_AI_API_KEY",
                "FIREWORKS_API_KEY",
                "FIREWORKSAI_API_KEY",
            ],
        )
    },
    ProviderSpec {
        base_env: &["OPENROUTER_API_BASE"],
        ..row(
            "openrouter",
            "https://openrouter.ai/api/v1",
            &["OPENROUTER_API_KEY", "OR_API_KEY"],
        )
    },
    row("xai", "https://api.x.ai/v1", &["XAI_API_KEY"]),
    row(
        "perplexity",
        "https://api.perplexity.ai",
        &["PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"],
    ),
    ProviderSpec {
        supports_embeddings: true,
        supports_completions: true,
        ..row(
            "deepinfra",
            "https://api.deepinfra.com/v1/openai",
            &["DEEPINFRA_API_KEY"],
        )
    },
    row(
        "cerebras",
        "https://api.cerebras.ai/v1",
        &["CEREBRAS_API_KEY"],
    ),
    ProviderSpec {
        base_env: &["NVIDIA_NIM_API_BASE"],
        supports_embeddings: true,
        ..row(
            "nvidia_nim",
            "https://integrate.api.nvidia.com/v1",
            &["NVIDIA_NIM_API_KEY"],
        )
    },
    local(
        "hosted_vllm",
        None,
        &["HOSTED_VLLM_API_BASE"],
        &["HOSTED_VLLM_API_KEY"],
    ),
    local(
        "vllm",
        None,
        &["VLLM_API_BASE", "HOSTED_VLLM_API_BASE"],
        &["VLLM_API_KEY", "HOSTED_VLLM_API_KEY"],
    ),
    ProviderSpec {
        base_suffix: Some("/v1"),
        ..local(
            "ollama_chat",
            Some("http://localhost:11434"),
            &["OLLAMA_API_BASE"],
            &["OLLAMA_API_KEY"],
        )
    },
    ProviderSpec {
        base_suffix: Some("/v1"),
        ..local(
            "ollama",
            Some("http://localhost:11434"),
            &["OLLAMA_API_BASE"],
            &["OLLAMA_API_KEY"],
        )
    },
    local(
        "lm_studio",
        Some("http://localhost:1234/v1"),
        &["LM_STUDIO_API_BASE"],
        &["LM_STUDIO_API_KEY"],
    ),
    local(
        "llamafile",
        Some("http://127.0.0.1:8080/v1"),
        &["LLAMAFILE_API_BASE"],
        &["LLAMAFILE_API_KEY"],
    ),
    ProviderSpec {
        supports_embeddings: true,
        ..row(
            "github",
            "https://models.inference.ai.azure.com",
            &["GITHUB_API_KEY", "GITHUB_TOKEN"],
        )
    },
    row(
        "sambanova",
        "https://api.sambanova.ai/v1",
        &["SAMBANOVA_API_KEY"],
    ),
    row(
        "hyperbolic",
        "https://api.hyperbolic.xyz/v1",
        &["HYPERBOLIC_API_KEY"],
    ),
    row(
        "novita",
        "https://api.novita.ai/v3/openai",
        &["NOVITA_API_KEY"],
    ),
    row(
        "moonshot",
        "https://api.moonshot.ai/v1",
        &["MOONSHOT_API_KEY"],
    ),
    ProviderSpec {
        supports_embeddings: true,
        ..row(
            "dashscope",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            &["DASHSCOPE_API_KEY"],
        )
    },
    ProviderSpec {
        supports_embeddings: true,
        ..row(
            "zhipu",
            "https://open.bigmodel.cn/api/paas/v4",
            &["ZHIPUAI_API_KEY", "ZHIPU_API_KEY"],
        )
    },
    row("zai", "https://api.z.ai/api/paas/v4", &["ZAI_API_KEY"]),
    ProviderSpec {
        supports_embeddings: true,
        ..row(
            "volcengine",
            "https://ark.cn-beijing.volces.com/api/v3",
            &["VOLCENGINE_API_KEY", "ARK_API_KEY"],
        )
    },
    ProviderSpec {
        supports_embeddings: true,
        ..row(
            "siliconflow",
            "https://api.siliconflow.cn/v1",
            &["SILICONFLOW_API_KEY"],
        )
    },
    ProviderSpec {
        supports_embeddings: true,
        ..row(
            "nebius",
            "https://api.studio.nebius.com/v1",
            &["NEBIUS_API_KEY"],
        )
    },
    row("lambda_ai", "https://api.lambda.ai/v1", &["LAMBDA_API_KEY"]),
    row(
        "featherless_ai",
        "https://api.featherless.ai/v1",
        &["FEATHERLESS_AI_API_KEY"],
    ),
];

/// Providers that need a native adapter (their own wire format or auth). Deployments using them
/// load with a warning and are not routed until their adapter lands.
pub const NATIVE_PROVIDERS: &[&str] = &[
    "azure_text",
    "sagemaker",
    "huggingface",
    "replicate",
    "watsonx",
    "databricks",
    "predibase",
    "cloudflare",
    "ai21",
    "voyage",
    "jina_ai",
    "clarifai",
    "triton",
    "petals",
    "palm",
    "nlp_cloud",
    "aleph_alpha",
    "baseten",
    "snowflake",
    "oci",
];

/// OpenAI-compatible providers known to accept `stream_options.include_usage`: llmux asks them
/// for usage on every stream (so spend and token limits count streamed requests) and hides the
/// usage chunk from clients that did not ask for it.
pub const STREAM_USAGE_PROVIDERS: &[&str] = &[
    "openai",
    "custom_openai",
    "openai_like",
    "azure",
    "azure_ai",
    "groq",
    "deepseek",
    "together_ai",
    "fireworks_ai",
    "openrouter",
    "xai",
    "deepinfra",
    "cerebras",
    "nvidia_nim",
    "hosted_vllm",
    "vllm",
    "lm_studio",
];

/// `mock/`: answered in-process, like LiteLLM's `mock_response`.
pub const MOCK_PROVIDER: &str = "mock";

/// What a deployment's `model` resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedProvider {
    OpenAiCompatible {
        spec: &'static ProviderSpec,
        upstream_model: String,
    },
    Mock {
        upstream_model: String,
    },
    /// A provider with its own adapter (`native_target` builds it).
    Native {
        provider: &'static str,
        upstream_model: String,
    },
}

/// Providers with a native adapter in this crate.
pub const NATIVE_ADAPTERS: &[&str] = &[
    "anthropic",
    "gemini",
    "cohere",
    "cohere_chat",
    "bedrock",
    "bedrock_converse",
    "vertex_ai",
    "vertex_ai_beta",
];

pub fn lookup(name: &str) -> Option<&'static ProviderSpec> {
    OPENAI_COMPATIBLE.iter().find(|p| p.name == name)
}

/// Resolve a deployment's provider the way LiteLLM does: `custom_llm_provider`, else the prefix
/// of `model` when it names a provider, else OpenAI. `None` means the deployment cannot be routed
/// (the reason is in `diags`).
pub fn resolve(dep: &DeploymentConfig, diags: &mut Vec<Diagnostic>) -> Option<ResolvedProvider> {
    let path = format!("{}.litellm_params.model", dep.path());
    let (provider, rest) = match &dep.custom_llm_provider {
        Some(p) => {
            let rest = dep
                .model
                .strip_prefix(&format!("{p}/"))
                .unwrap_or(&dep.model);
            (p.as_str(), rest.to_owned())
        }
        None => match dep.model.split_once('/') {
            Some((prefix, rest)) if is_known(prefix) => (prefix, rest.to_owned()),
            Some((prefix, _)) => {
                diags.push(Diagnostic::warning(
                    &path,
                    format!(
                        "`{prefix}` is not a known provider; `{}` is sent as an OpenAI model name{}",
                        dep.model,
                        if dep.api_base.is_some() { " to api_base" } else { "" }
                    ),
                ));
                ("openai", dep.model.clone())
            }
            None => ("openai", dep.model.clone()),
        },
    };
    if provider == MOCK_PROVIDER {
        return Some(ResolvedProvider::Mock {
            upstream_model: rest,
        });
    }
    if let Some(native) = NATIVE_ADAPTERS.iter().find(|n| **n == provider) {
        return Some(ResolvedProvider::Native {
            provider: native,
            upstream_model: rest,
        });
    }
    if let Some(spec) = lookup(provider) {
        let upstream_model = match spec.model_prefix {
            Some(prefix) if !rest.contains('/') && !rest.contains('*') => format!("{prefix}{rest}"),
            _ => rest,
        };
        return Some(ResolvedProvider::OpenAiCompatible {
            spec,
            upstream_model,
        });
    }
    if NATIVE_PROVIDERS.contains(&provider) {
        diags.push(Diagnostic::warning(
            &path,
            format!("provider `{provider}` needs a native adapter that llmux does not have yet; this deployment is not routed"),
        ));
    } else {
        diags.push(Diagnostic::error(
            &path,
            format!("unknown provider `{provider}`"),
        ));
    }
    None
}

fn is_known(prefix: &str) -> bool {
    prefix == MOCK_PROVIDER
        || NATIVE_ADAPTERS.contains(&prefix)
        || lookup(prefix).is_some()
        || NATIVE_PROVIDERS.contains(&prefix)
}

/// The provider-specific `litellm_params` a provider's adapter reads (the router warns about
/// the others).
pub fn provider_params_used(provider: &str) -> &'static [&'static str] {
    match provider {
        "vertex_ai" | "vertex_ai_beta" => &[
            "vertex_project",
            "vertex_location",
            "vertex_credentials",
            "safety_settings",
        ],
        "gemini" => &["safety_settings"],
        "bedrock" | "bedrock_converse" => &[
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "aws_region_name",
            "aws_bedrock_runtime_endpoint",
        ],
        "azure" | "azure_ai" => &["azure_ad_token", "tenant_id", "client_id", "client_secret"],
        _ => &[],
    }
}

/// Build the adapter for a native provider's deployment (`None`: the reason is in `diags`).
pub fn native_target(
    provider: &str,
    upstream_model: &str,
    dep: &llmux_config::DeploymentConfig,
    config: &llmux_config::Config,
    env: &dyn llmux_config::EnvSource,
    diags: &mut Vec<Diagnostic>,
) -> Option<std::sync::Arc<dyn crate::Provider>> {
    use std::sync::Arc;
    Some(match provider {
        "anthropic" => Arc::new(crate::anthropic::AnthropicTarget::new(
            upstream_model,
            dep,
            config,
            env,
            diags,
        )?),
        "gemini" => Arc::new(crate::gemini::GeminiTarget::new(
            upstream_model,
            dep,
            config,
            env,
            diags,
        )?),
        "cohere" | "cohere_chat" => Arc::new(crate::cohere::CohereTarget::new(
            upstream_model,
            dep,
            config,
            env,
            diags,
        )?),
        "bedrock" | "bedrock_converse" => Arc::new(crate::bedrock::BedrockTarget::new(
            upstream_model,
            dep,
            config,
            env,
            diags,
        )?),
        "vertex_ai" | "vertex_ai_beta" => {
            crate::vertex::target(upstream_model, dep, config, env, diags)?
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &[&str] = &[
        "openai",
        "groq",
        "deepseek",
        "mistral",
        "together_ai",
        "fireworks_ai",
        "openrouter",
        "xai",
        "perplexity",
        "deepinfra",
        "cerebras",
        "nvidia_nim",
        "hosted_vllm",
        "ollama_chat",
        "lm_studio",
        "github",
        "sambanova",
        "hyperbolic",
        "novita",
        "moonshot",
        "dashscope",
        "zhipu",
        "volcengine",
        "siliconflow",
        "nebius",
        "lambda_ai",
    ];

    #[test]
    fn table_covers_the_required_providers_once_each() {
        for name in REQUIRED {
            assert!(lookup(name).is_some(), "{name} missing");
        }
        let mut names: Vec<_> = OPENAI_COMPATIBLE.iter().map(|p| p.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate provider rows");
        for spec in OPENAI_COMPATIBLE {
            assert!(!NATIVE_PROVIDERS.contains(&spec.name));
            if let Some(base) = spec.default_base {
                assert!(
                    base.starts_with("http") && !base.ends_with('/'),
                    "{}: {base}",
                    spec.name
                );
            } else {
                assert!(
                    !spec.base_env.is_empty(),
                    "{} needs a base from somewhere",
                    spec.name
                );
            }
        }
    }

    fn dep(model: &str) -> DeploymentConfig {
        let loaded = llmux_config::load_str(
            &format!("model_list: [{{model_name: m, litellm_params: {{model: {model:?}}}}}]"),
            &std::collections::HashMap::new(),
        )
        .unwrap();
        loaded.config.deployments[0].clone()
    }

    #[test]
    fn resolves_prefixes_like_litellm() {
        let mut d = Vec::new();
        let r = resolve(&dep("gpt-4o"), &mut d).unwrap();
        assert!(
            matches!(r, ResolvedProvider::OpenAiCompatible { spec, ref upstream_model } if spec.name == "openai" && upstream_model == "gpt-4o")
        );
        let r = resolve(&dep("groq/llama-3.1-8b-instant"), &mut d).unwrap();
        assert!(
            matches!(r, ResolvedProvider::OpenAiCompatible { spec, ref upstream_model } if spec.name == "groq" && upstream_model == "llama-3.1-8b-instant")
        );
        let r = resolve(&dep("openai/meta-llama/Llama-3-8B"), &mut d).unwrap();
        assert!(
            matches!(r, ResolvedProvider::OpenAiCompatible { ref upstream_model, .. } if upstream_model == "meta-llama/Llama-3-8B")
        );
        let r = resolve(&dep("fireworks_ai/llama-v3-8b"), &mut d).unwrap();
        assert!(
            matches!(r, ResolvedProvider::OpenAiCompatible { ref upstream_model, .. } if upstream_model == "accounts/fireworks/models/llama-v3-8b")
        );
        assert!(matches!(
            resolve(&dep("mock/demo"), &mut d).unwrap(),
            ResolvedProvider::Mock { .. }
        ));
        assert!(d.is_empty(), "{d:?}");

        let r = resolve(&dep("mistralai/mistral-7b-instruct"), &mut d).unwrap();
        assert!(
            matches!(r, ResolvedProvider::OpenAiCompatible { spec, .. } if spec.name == "openai")
        );
        assert_eq!(d.len(), 1);
        assert!(resolve(&dep("sagemaker/endpoint"), &mut d).is_none());
        assert!(!d[1].is_error());
        assert!(matches!(
            resolve(&dep("bedrock/anthropic.claude-3-haiku-20240307-v1:0"), &mut d).unwrap(),
            ResolvedProvider::Native { provider: "bedrock", ref upstream_model } if upstream_model == "anthropic.claude-3-haiku-20240307-v1:0"
        ));
        assert!(matches!(
            resolve(&dep("vertex_ai/gemini-2.5-pro"), &mut d).unwrap(),
            ResolvedProvider::Native {
                provider: "vertex_ai",
                ..
            }
        ));
    }
}
