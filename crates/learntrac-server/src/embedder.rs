//! The sentence embedder behind search: the built-in feature-hashing
//! embedder, all-MiniLM-L6-v2 running in-process, or an OpenAI-compatible
//! `/v1/embeddings` service. Each has a model id that is stored with every
//! vector it makes, so that search never compares vectors of two models.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use learntrac_core::embed;
use learntrac_core::search::Scoring;
use serde::Deserialize;

/// Model id of the built-in embedder's vectors. Its version changes
/// whenever the feature hashing does, which makes stored vectors stale.
pub const BUILTIN_MODEL: &str = "learntrac-hash-384:1";

/// Window of the built-in embedder, which has none of its own: passages
/// are cut to about the same size as for MiniLM.
const BUILTIN_WINDOW: usize = 256;

/// Passages embedded per call: large enough to keep both cores busy, small
/// enough that progress and cancellation are noticed within a second or two.
pub const BATCH: usize = 16;

/// The `[embeddings]` table of learntrac.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingSettings {
    pub provider: ProviderChoice,
    /// Folder of the all-MiniLM-L6-v2 model; DATA_DIR/models/all-MiniLM-L6-v2 by default.
    pub model_dir: Option<PathBuf>,
    /// Relevance added to a passage that contains the query's identifiers
    /// verbatim (`str.format`, `__init__`), in proportion to the share it
    /// contains, with a sentence-embedding model; 0 ranks by meaning alone.
    pub identifier_bonus: f32,
    pub openai: Option<RemoteSettings>,
}

/// Default of `identifier_bonus`.
const IDENTIFIER_BONUS: f32 = 0.1;

impl Default for EmbeddingSettings {
    fn default() -> EmbeddingSettings {
        EmbeddingSettings {
            provider: ProviderChoice::Auto,
            model_dir: None,
            identifier_bonus: IDENTIFIER_BONUS,
            openai: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// MiniLM when it is installed, the built-in embedder otherwise.
    Auto,
    Builtin,
    Minilm,
    /// The service in `[embeddings.openai]`.
    Openai,
}

/// An OpenAI-compatible embeddings service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSettings {
    /// Base address, such as `https://models.example.org/v1`; requests go
    /// to its `/embeddings`.
    pub url: String,
    pub model: String,
    /// `secret:NAME` of the API key, sent as a bearer token.
    pub api_key: Option<String>,
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Further attempts after a timeout, a connection failure, 429 or a 5xx response.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The model's input limit in tokens; passages are cut to fit it.
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: usize,
}

fn default_timeout_seconds() -> u64 {
    30
}

fn default_retries() -> u32 {
    2
}

fn default_max_input_tokens() -> usize {
    512
}

impl EmbeddingSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.identifier_bonus) {
            return Err(format!("identifier_bonus {} must be from 0.0 to 1.0", self.identifier_bonus));
        }
        match (&self.provider, &self.openai) {
            (ProviderChoice::Openai, None) => {
                return Err("provider = \"openai\" needs an [embeddings.openai] table with url and model".into());
            }
            (_, Some(remote)) => remote.validate()?,
            _ => {}
        }
        Ok(())
    }
}

impl RemoteSettings {
    fn validate(&self) -> Result<(), String> {
        let lower = self.url.to_ascii_lowercase();
        if !lower.starts_with("https://") || self.url.len() <= "https://".len() {
            return Err(format!("[embeddings.openai] url {:?} must be an https:// address", self.url));
        }
        if self.model.trim().is_empty() {
            return Err("[embeddings.openai] model is empty; name the embedding model".into());
        }
        if let Some(key) = &self.api_key
            && !key.starts_with("secret:")
        {
            return Err(
                "[embeddings.openai] api_key must be secret:NAME; store the key with `learntrac secret put`".into()
            );
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err(format!("[embeddings.openai] timeout_seconds {} must be from 1 to 600", self.timeout_seconds));
        }
        if self.retries > 10 {
            return Err(format!("[embeddings.openai] retries {} must be at most 10", self.retries));
        }
        if !(16..=65_536).contains(&self.max_input_tokens) {
            return Err(format!(
                "[embeddings.openai] max_input_tokens {} must be from 16 to 65536",
                self.max_input_tokens
            ));
        }
        Ok(())
    }
}

/// `DATA_DIR/models/all-MiniLM-L6-v2`, where `learntrac model install` puts the model.
pub fn default_model_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join("all-MiniLM-L6-v2")
}

/// A loaded embedder.
#[derive(Clone)]
pub struct Embedder(Arc<Inner>);

struct Inner {
    kind: Kind,
    id: String,
    identifier_bonus: f32,
}

enum Kind {
    Builtin,
    MiniLm(Box<learntrac_embed::MiniLm>),
    Remote(Remote),
}

/// The cosine between a question and a passage that about 70% of the
/// passages answering the questions of `bench/eval` reach with MiniLM; it
/// maps to relevance 0.65 at any library size.
const MINILM_RELEVANT: f32 = 0.40;
/// The cosine that maps to relevance 1.0; few question and passage pairs
/// reach it.
const MINILM_FULL: f32 = 0.80;

impl Embedder {
    pub fn builtin() -> Embedder {
        Embedder::new(Kind::Builtin, BUILTIN_MODEL.to_string(), 0.0)
    }

    fn new(kind: Kind, id: String, identifier_bonus: f32) -> Embedder {
        Embedder(Arc::new(Inner { kind, id, identifier_bonus }))
    }

    /// Loads the embedder the settings choose. `secrets` gives the remote
    /// service's API key.
    pub fn from_settings(
        settings: &EmbeddingSettings,
        data_dir: &Path,
        egress: &crate::egress::EgressSettings,
        secrets: &crate::secrets::Secrets,
    ) -> Result<Embedder> {
        let model_dir = settings.model_dir.clone().unwrap_or_else(|| default_model_dir(data_dir));
        let installed = model_dir.join("model.safetensors").exists();
        match settings.provider {
            ProviderChoice::Builtin => Ok(Embedder::builtin()),
            ProviderChoice::Auto if !installed => {
                tracing::info!(
                    model_dir = %model_dir.display(),
                    "no sentence-embedding model is installed; search uses the built-in embedder \
                     (install all-MiniLM-L6-v2 with `learntrac model install`)"
                );
                Ok(Embedder::builtin())
            }
            ProviderChoice::Auto | ProviderChoice::Minilm => {
                let started = std::time::Instant::now();
                let model = learntrac_embed::MiniLm::load(&model_dir).with_context(|| {
                    format!(
                        "cannot load the sentence-embedding model from {}; install it with `learntrac model install`, \
                         or set [embeddings] provider = \"builtin\"",
                        model_dir.display()
                    )
                })?;
                let id = model.model_id().to_string();
                tracing::info!(model = %id, seconds = started.elapsed().as_secs_f32(), "sentence-embedding model loaded");
                Ok(Embedder::new(Kind::MiniLm(Box::new(model)), id, settings.identifier_bonus))
            }
            ProviderChoice::Openai => {
                let Some(remote) = &settings.openai else {
                    bail!("provider = \"openai\" needs an [embeddings.openai] table");
                };
                let api_key = match remote.api_key.as_deref().and_then(|r| r.strip_prefix("secret:")) {
                    Some(name) => Some(
                        secrets
                            .role(learntrac_secrets::Role::Api)
                            .get(name)
                            .with_context(|| format!("cannot read the embeddings API key (secret:{name})"))?
                            .expose()
                            .to_string(),
                    ),
                    None => None,
                };
                let mut egress = egress.clone();
                egress.timeout = Duration::from_secs(remote.timeout_seconds);
                let client = crate::egress::client(&egress)?;
                // No '@' in the id: logs mask what looks like a mail address.
                let id = format!("openai:{}:{}", remote.model, remote.url.trim_end_matches('/'));
                let remote = Remote { settings: remote.clone(), api_key, client };
                Ok(Embedder::new(Kind::Remote(remote), id, settings.identifier_bonus))
            }
        }
    }

    /// Returns the id stored with every vector this embedder makes.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Returns the most relevance [`EmbeddingSettings::identifier_bonus`] adds.
    pub fn identifier_bonus(&self) -> f32 {
        self.0.identifier_bonus
    }

    pub fn is_builtin(&self) -> bool {
        matches!(self.0.kind, Kind::Builtin)
    }

    /// Returns how the index turns this model's cosines into relevance.
    pub fn scoring(&self) -> Scoring {
        let cosine =
            Scoring::Cosine { relevant: MINILM_RELEVANT, full: MINILM_FULL, identifier_bonus: self.0.identifier_bonus };
        match self.0.kind {
            Kind::Builtin => Scoring::Hybrid,
            Kind::MiniLm(_) => cosine,
            // A remote model's cosines are not measured here; the MiniLM
            // mapping is a fair start for sentence-embedding models.
            // NOTE: operators of a remote model may need another min_relevance.
            Kind::Remote(_) => cosine,
        }
    }

    /// Returns the maximum number of tokens the model reads; passages are cut to fit.
    pub fn window(&self) -> usize {
        match &self.0.kind {
            Kind::Builtin => BUILTIN_WINDOW,
            Kind::MiniLm(model) => model.max_tokens(),
            Kind::Remote(remote) => remote.settings.max_input_tokens,
        }
    }

    /// Counts the tokens of `text` as the model would.
    pub fn count_tokens(&self, text: &str) -> usize {
        match &self.0.kind {
            Kind::MiniLm(model) => model.token_count(text),
            Kind::Builtin | Kind::Remote(_) => learntrac_core::text::estimate_tokens(text),
        }
    }

    /// Embeds passages; the vectors are unit length.
    pub async fn embed_passages(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        match &self.0.kind {
            Kind::Remote(remote) => remote.embed(&texts).await,
            Kind::Builtin | Kind::MiniLm(_) => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.embed_local(&texts)).await.context("the embedding task failed")
            }
        }
    }

    /// Embeds passages on this thread; a remote model is not reachable from
    /// here, so callers in async code use [`Embedder::embed_passages`].
    pub fn embed_local(&self, texts: &[String]) -> Vec<Vec<f32>> {
        match &self.0.kind {
            Kind::MiniLm(model) => model.embed_batch(&texts.iter().map(String::as_str).collect::<Vec<_>>()),
            Kind::Builtin | Kind::Remote(_) => texts.iter().map(|t| embed::embed(t)).collect(),
        }
    }

    /// Embeds a search query.
    pub async fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        match &self.0.kind {
            Kind::Builtin => Ok(embed::embed(query)),
            _ => {
                let mut vectors = self.embed_passages(vec![query.to_string()]).await?;
                vectors.pop().context("the model returned no vector for the query")
            }
        }
    }
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Embedder").field(&self.0.id).finish()
    }
}

/// An OpenAI-compatible embeddings service.
struct Remote {
    settings: RemoteSettings,
    api_key: Option<String>,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct RemoteResponse {
    data: Vec<RemoteVector>,
}

#[derive(Deserialize)]
struct RemoteVector {
    embedding: Vec<f32>,
    index: usize,
}

impl Remote {
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let url = format!("{}/embeddings", self.settings.url.trim_end_matches('/'));
        let body = serde_json::json!({ "model": self.settings.model, "input": texts });
        let mut attempt = 0;
        loop {
            let mut request = self.client.post(&url).json(&body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return parse_remote(
                        response.json().await.context("the embeddings service sent invalid JSON")?,
                        texts.len(),
                    );
                }
                Ok(response) => {
                    let status = response.status();
                    let retry = status.as_u16() == 429 || status.is_server_error();
                    let detail: String = response.text().await.unwrap_or_default().chars().take(200).collect();
                    (retry, anyhow::anyhow!("the embeddings service at {url} responded {status}: {detail}"))
                }
                Err(error) => (
                    error.is_timeout() || error.is_connect() || error.is_request(),
                    anyhow::Error::new(error).context(format!("cannot reach the embeddings service at {url}")),
                ),
            };
            let (retry, error) = outcome;
            if !retry || attempt >= self.settings.retries {
                return Err(error);
            }
            attempt += 1;
            tracing::warn!(error = format!("{error:#}"), attempt, "embeddings request failed; trying again");
            tokio::time::sleep(Duration::from_millis(250 << attempt.min(6))).await;
        }
    }
}

fn parse_remote(response: RemoteResponse, expected: usize) -> Result<Vec<Vec<f32>>> {
    if response.data.len() != expected {
        bail!("the embeddings service returned {} vectors for {expected} texts", response.data.len());
    }
    let mut vectors = vec![Vec::new(); expected];
    for item in response.data {
        let Some(slot) = vectors.get_mut(item.index) else {
            bail!("the embeddings service returned a vector for text {}, of {expected}", item.index);
        };
        *slot = item.embedding;
    }
    let dimensions = vectors.first().map_or(0, Vec::len);
    if dimensions == 0 || vectors.iter().any(|v| v.len() != dimensions || v.iter().any(|x| !x.is_finite())) {
        bail!("the embeddings service returned empty, uneven or non-finite vectors");
    }
    // A zero vector has no direction, so its passage could never be found.
    if vectors.iter().any(|v| v.iter().all(|x| *x == 0.0)) {
        bail!("the embeddings service returned an all-zero vector");
    }
    for vector in &mut vectors {
        embed::normalize(vector);
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_settings_are_checked() {
        let mut settings = EmbeddingSettings { provider: ProviderChoice::Openai, ..Default::default() };
        assert!(settings.validate().is_err(), "openai without its table");
        let remote = RemoteSettings {
            url: "http://models.example/v1".into(),
            model: "m".into(),
            api_key: None,
            timeout_seconds: 30,
            retries: 2,
            max_input_tokens: 512,
        };
        settings.openai = Some(remote.clone());
        assert!(settings.validate().is_err(), "plain http");
        let remote = RemoteSettings { url: "https://models.example/v1".into(), ..remote };
        settings.openai = Some(remote.clone());
        assert!(settings.validate().is_ok());
        settings.openai = Some(RemoteSettings { api_key: Some("sk-123".into()), ..remote });
        assert!(settings.validate().unwrap_err().contains("secret:NAME"));
    }

    #[test]
    fn remote_answers_are_ordered_and_checked() {
        let response = RemoteResponse {
            data: vec![
                RemoteVector { embedding: vec![0.0, 2.0], index: 1 },
                RemoteVector { embedding: vec![3.0, 0.0], index: 0 },
            ],
        };
        assert_eq!(parse_remote(response, 2).expect("parsed"), [vec![1.0, 0.0], vec![0.0, 1.0]]);
        let uneven = RemoteResponse {
            data: vec![RemoteVector { embedding: vec![1.0], index: 0 }, RemoteVector { embedding: vec![], index: 1 }],
        };
        assert!(parse_remote(uneven, 2).is_err());
        assert!(parse_remote(RemoteResponse { data: vec![] }, 1).is_err());
        let zero = RemoteResponse { data: vec![RemoteVector { embedding: vec![0.0, 0.0], index: 0 }] };
        assert!(parse_remote(zero, 1).is_err());
    }
}
