//! The model engine: loads models, turns prompts and conversations into completions.
//!
//! One [`LoadedModel`] per model file; [`Engine`] holds them with the first as the default.
//! Generations on one model run through its scheduler ([`scheduler`]): concurrent requests share
//! forward passes (continuous batching). Every failure is an [`EngineError`] with an
//! [`ErrorCode`].

pub mod chat_template;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod gguf;
pub mod kquant;
pub mod kv_cache;
pub mod models;
pub mod packed;
pub mod prefix_cache;
pub mod quant;
pub mod remote;
pub mod sampling;
pub mod scheduler;
pub mod simd;
pub mod synthetic;
pub mod threads;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Instant;

use chat_template::{ChatTemplate, TemplateMessage};
pub use device::Device;
use gguf::GgufFile;
use models::{Architecture, CausalLm, ConfigSource, HfConfig};
pub use sampling::SamplingParams;
pub use scheduler::{BatchLimits, BatchStats};
use scheduler::{Progress, Scheduler};
use tokenizer::{Tokenizer, TokenizerError};
use weights::{ModelFileError, WeightStore};

use crate::error_code::ErrorCode;

/// Why a request with nothing to continue from is refused (an API names the field).
pub const EMPTY_PROMPT: &str = "the prompt is empty";

/// Why the engine could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model {0:?} is not loaded")]
    ModelNotFound(String),
    #[error("cannot load model {path}: {source}")]
    Load {
        path: PathBuf,
        source: ModelFileError,
    },
    #[error("cannot load the tokenizer of {path}: {source}")]
    Tokenizer {
        path: PathBuf,
        source: TokenizerError,
    },
    /// The architecture's name, quoted, and where the model names it.
    #[error("model architecture {0} is not supported (supported: {sup})", sup = Architecture::SUPPORTED)]
    UnsupportedArchitecture(String),
    #[error("model {0} has no chat template")]
    NoChatTemplate(String),
    #[error("model {0} does not support fill-in-the-middle (its tokenizer has no FIM tokens)")]
    NoFillInTheMiddle(String),
    #[error(
        "prompt of {prompt} tokens plus {max_tokens} new tokens exceeds the context of {context}"
    )]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("generation was cancelled")]
    Cancelled,
    #[error("the model is busy: {waiting} generations are already waiting; try again shortly")]
    QueueFull { waiting: usize },
    #[error("generation ran past its deadline")]
    Timeout,
    #[error("engine failure: {0}")]
    Runtime(String),
    #[error("model server {url}: {message}")]
    Remote {
        url: String,
        /// The HTTP status it answered, when it answered.
        status: Option<u16>,
        code: ErrorCode,
        message: String,
    },
    #[error(
        "the request's KV cache needs {need_mib} MiB (its prompt plus max_tokens), more than the \
         {budget_mib} MiB all requests may hold (AGENTRT_KV_CACHE_MB): ask for fewer tokens"
    )]
    KvCacheBudget { need_mib: usize, budget_mib: usize },
    #[error("cannot run model {path} on {device}: {message}")]
    Device {
        path: PathBuf,
        device: &'static str,
        message: String,
        /// Out of device memory (MODEL_003) rather than unavailable (MODEL_001).
        memory: bool,
    },
}

impl EngineError {
    /// The message for those outside the server (API clients, plugins, the open `/health`):
    /// a remote model's error without the address of its server, which is the operator's
    /// business (the log and an admin's `/models` name it). Other errors as they display.
    pub fn public_message(&self) -> String {
        match self {
            Self::Remote { url, message, .. } => {
                format!("model server: {}", remote::without_address(message, url))
            }
            other => other.to_string(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ModelNotFound(_)
            | Self::Load { .. }
            | Self::Tokenizer { .. }
            | Self::UnsupportedArchitecture(_)
            | Self::NoChatTemplate(_) => ErrorCode::ModelNotAvailable,
            Self::NoFillInTheMiddle(_) => ErrorCode::InvalidInput,
            // Too long for what the operator lets a request hold: the client's to shorten (a
            // 422 clients do not retry, as for the context), not a server fault.
            Self::ContextOverflow { .. } | Self::KvCacheBudget { .. } => {
                ErrorCode::ModelContextOverflow
            }
            Self::InvalidInput(_) => ErrorCode::InvalidInput,
            Self::Cancelled => ErrorCode::Cancelled,
            Self::QueueFull { .. } => ErrorCode::QueueFull,
            Self::Timeout => ErrorCode::ModelTimeout,
            Self::Runtime(_) => ErrorCode::GenerationFailed,
            Self::Device { memory: true, .. } => ErrorCode::ModelMemory,
            Self::Device { .. } => ErrorCode::ModelNotAvailable,
            Self::Remote { code, .. } => *code,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    EndOfSequence,
    StopSequence,
    Length,
}

/// Tokens consumed by one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    /// Prompt and completion together: what a token budget or a tally counts.
    pub fn total(self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
    }
}

/// The result of one generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Completion {
    pub model: String,
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// What to continue: raw text, a conversation rendered with the model's chat template, or the
/// gap between a prefix and a suffix (fill-in-the-middle).
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Chat(Vec<TemplateMessage>),
    Fim { prefix: String, suffix: String },
}

/// Spellings of the FIM special tokens: StarCoder's, then Qwen2.5-Coder's and CodeLlama-style
/// ones with bars.
const FIM_TOKEN_SETS: [[&str; 3]; 2] = [
    ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
    ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
];

/// Limits on one generation besides the sampling settings.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Give up with [`EngineError::Timeout`] after this instant.
    pub deadline: Option<Instant>,
    /// Give up with [`EngineError::Cancelled`] once this is set.
    pub cancel: Option<Arc<AtomicBool>>,
    /// With the model's queue full, wait in line for a place (first come, first served, until
    /// the deadline or the cancel) instead of being refused with [`EngineError::QueueFull`]:
    /// for callers that cannot ask their client to retry, such as a plugin's model call.
    pub wait_in_line: bool,
}

impl Control {
    /// A queue place for a generation: at once, or in line when [`Control::wait_in_line`].
    fn take_place(
        &self,
        places: &Arc<crate::fifo_semaphore::FifoSemaphore>,
        limit: usize,
    ) -> Result<crate::fifo_semaphore::Permit, EngineError> {
        use crate::fifo_semaphore::GaveUp;
        let full = EngineError::QueueFull { waiting: limit };
        if !self.wait_in_line {
            return places.try_acquire().ok_or(full);
        }
        places
            .acquire(self.deadline, self.cancel.as_deref())
            .map_err(|why| match why {
                GaveUp::Deadline => EngineError::Timeout,
                GaveUp::Cancelled => EngineError::Cancelled,
            })
    }
}

impl Control {
    fn check(&self) -> Result<(), EngineError> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(EngineError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(EngineError::Timeout);
        }
        Ok(())
    }
}

/// Description of a loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub architecture: String,
    pub path: PathBuf,
    pub context_length: u32,
    pub supports_chat: bool,
    pub supports_fim: bool,
    /// `gguf` or `safetensors`.
    pub format: String,
    pub parameters: u64,
    /// Bytes of weights mapped from the model files.
    pub file_bytes: u64,
    /// Where it runs: `cpu`, or `cuda:N (card name)`.
    pub device: String,
}

/// A model ready to generate.
pub struct LoadedModel {
    pub info: ModelInfo,
    model: Arc<dyn CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    /// `<fim_prefix>`, `<fim_suffix>`, `<fim_middle>` ids when the tokenizer has them.
    fim: Option<[u32; 3]>,
    /// Element type of the KV caches of this model's requests.
    kv_precision: kv_cache::KvPrecision,
    /// How many generations share a pass and how many may wait.
    batch_limits: BatchLimits,
    /// The thread that runs this model's generations, started by the first one.
    scheduler: OnceLock<Result<Scheduler, String>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Loading progress, for a progress bar or log line.
#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    pub layers_done: usize,
    pub layers_total: usize,
}

/// A problem with the model file or folder at `path`, as the error that names it.
fn load_error(path: &Path) -> impl Fn(ModelFileError) -> EngineError + Copy + '_ {
    move |source| EngineError::Load {
        path: path.to_path_buf(),
        source,
    }
}

/// A problem with the tokenizer of the model at `path`, as the error that names it.
fn tokenizer_error(path: &Path) -> impl Fn(TokenizerError) -> EngineError + Copy + '_ {
    move |source| EngineError::Tokenizer {
        path: path.to_path_buf(),
        source,
    }
}

/// Architecture `name`, which the model at `path` names, is not one the engine runs (the path
/// says which model, when a server loads several).
fn unsupported_in(path: &Path, name: &str) -> EngineError {
    EngineError::UnsupportedArchitecture(format!("{name:?} (in {})", path.display()))
}

/// A model's files read up to its weights (mapped, not bound): what loading and
/// [`LoadedModel::check_files`] share.
enum OpenedFiles {
    Hf {
        config: HfConfig,
        name: String,
        arch: Architecture,
        store: WeightStore,
    },
    Gguf {
        file: GgufFile,
        name: String,
        arch: Architecture,
    },
}

impl OpenedFiles {
    /// Open `path` (an HF folder or a GGUF file): its structure, architecture and tokenizer.
    fn open(path: &Path) -> Result<(Self, Tokenizer), EngineError> {
        let (load_err, tokenizer_err) = (load_error(path), tokenizer_error(path));
        if path.is_dir() {
            let config = HfConfig::read(path).map_err(load_err)?;
            let name = config.model_type().map_err(load_err)?.to_string();
            let arch = Architecture::from_name(&name).ok_or_else(|| unsupported_in(path, &name))?;
            let files = weights::safetensors_files(path).map_err(load_err)?;
            let store = WeightStore::from_safetensors(&files, &|n| models::hf_tensor_name(arch, n))
                .map_err(load_err)?;
            let tokenizer = Tokenizer::from_hf_dir(path).map_err(tokenizer_err)?;
            let opened = Self::Hf {
                config,
                name,
                arch,
                store,
            };
            Ok((opened, tokenizer))
        } else {
            let file = GgufFile::open(path).map_err(|e| load_err(e.into()))?;
            let name = file
                .str("general.architecture")
                .map_err(|e| load_err(e.into()))?
                .to_string();
            let arch = Architecture::from_name(&name).ok_or_else(|| unsupported_in(path, &name))?;
            let tokenizer = Tokenizer::from_gguf(&file).map_err(tokenizer_err)?;
            Ok((Self::Gguf { file, name, arch }, tokenizer))
        }
    }
}

impl LoadedModel {
    /// What loading `path` checks before it binds the weights: the file's or the folder's
    /// structure (every tensor's place, safetensors headers), the architecture, the
    /// tokenizer and the configuration. `agentrt doctor` asks this rather than load a model a
    /// server may hold already; its weights are mapped, not read. Returns the architecture's
    /// name.
    pub fn check_files(path: &Path) -> Result<String, EngineError> {
        let (opened, _) = OpenedFiles::open(path)?;
        let checked = match &opened {
            OpenedFiles::Hf { config, arch, .. } => {
                models::check_config(*arch, ConfigSource::Hf(config))
            }
            OpenedFiles::Gguf { file, name, arch } => {
                models::check_config(*arch, ConfigSource::Gguf(file, name))
            }
        };
        checked.map_err(load_error(path))?;
        Ok(match opened {
            OpenedFiles::Hf { name, .. } | OpenedFiles::Gguf { name, .. } => name,
        })
    }

    /// Load a model: a GGUF file, or an HF folder (`config.json`, safetensors weights,
    /// `tokenizer.json`). `id` is the name clients use for it.
    pub fn load(
        id: &str,
        path: &Path,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, EngineError> {
        Self::load_on(id, path, Device::from_env(), on_progress)
    }

    /// [`LoadedModel::load`] on a chosen device (`auto`: the GPU when one is usable).
    pub fn load_on(
        id: &str,
        path: &Path,
        device: Device,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, EngineError> {
        let load_err = load_error(path);
        let mut progress = |done, total| {
            on_progress(LoadProgress {
                layers_done: done,
                layers_total: total,
            })
        };
        let (opened, tokenizer) = OpenedFiles::open(path)?;
        let (arch, model, store, format, placed) = match opened {
            OpenedFiles::Hf {
                config,
                arch,
                store,
                ..
            } => {
                let store = Arc::new(store);
                let (model, placed) = place_model(
                    arch,
                    ConfigSource::Hf(&config),
                    store.clone(),
                    device,
                    path,
                    &mut progress,
                )?;
                (arch, model, store, "safetensors", placed)
            }
            OpenedFiles::Gguf {
                mut file,
                name,
                arch,
            } => {
                // The vocabulary and merges now live in the tokenizer; as metadata they are
                // another hundred thousand strings held for the life of the model.
                file.metadata
                    .retain(|key, _| !key.starts_with("tokenizer.ggml."));
                let file = Arc::new(file);
                let store = Arc::new(WeightStore::from_gguf(file.clone()));
                let (model, placed) = place_model(
                    arch,
                    ConfigSource::Gguf(&file, &name),
                    store.clone(),
                    device,
                    path,
                    &mut progress,
                )?;
                (arch, model, store, "gguf", placed)
            }
        };
        // HF checkpoints often pad the embedding past the tokenizer (Qwen2: 151936 rows for
        // 151665 tokens); a tokenizer larger than the model's head cannot work.
        if tokenizer.vocab_size() > model.vocab() {
            return Err(load_err(ModelFileError::Shape(format!(
                "tokenizer has {} tokens but the model only {}",
                tokenizer.vocab_size(),
                model.vocab()
            ))));
        }
        let token_text =
            |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        // A template that does not parse costs the model its chat, not its use: completions
        // need none, and chat requests then say the model has no template. So does one that
        // cannot render the simplest conversation, one user message (an unknown function, a
        // bad filter): every chat would fail, blamed on its client.
        let template = tokenizer.chat_template.as_ref().and_then(|src| {
            let bos = token_text(tokenizer.bos_id);
            let eos = token_text(tokenizer.eos_id);
            let hello = [TemplateMessage {
                role: "user".into(),
                content: "Hello.".into(),
            }];
            ChatTemplate::new(src, &bos, &eos)
                .and_then(|t| t.render(&hello).map(|_| t))
                .map_err(|e| {
                    tracing::warn!(model = %id, "the model's chat template is unusable, chat is off: {e}");
                })
                .ok()
        });
        let fim = FIM_TOKEN_SETS.iter().find_map(|set| {
            Some([
                tokenizer.token_id(set[0])?,
                tokenizer.token_id(set[1])?,
                tokenizer.token_id(set[2])?,
            ])
        });
        let info = ModelInfo {
            id: id.to_string(),
            architecture: arch.name().to_string(),
            path: path.to_path_buf(),
            context_length: model.context_length() as u32,
            supports_chat: template.is_some(),
            supports_fim: fim.is_some(),
            format: format.to_string(),
            parameters: store.parameter_count(),
            file_bytes: store.weight_bytes(),
            device: placed,
        };
        release_freed_heap();
        Ok(Self {
            info,
            model: Arc::from(model),
            tokenizer: Arc::new(tokenizer),
            template,
            fim,
            kv_precision: kv_precision_from_env(),
            batch_limits: BatchLimits::from_env(),
            scheduler: OnceLock::new(),
        })
    }

    /// Run generations in batches of at most `limits.max_batch` with `limits.queue` waiting
    /// (default [`BatchLimits::from_env`]); before the first generation.
    pub fn with_batch_limits(mut self, limits: BatchLimits) -> Self {
        self.batch_limits = limits;
        self
    }

    /// The limits this model's scheduler runs with: `max_batch` is at most the sequences the
    /// model can hold at once (a GPU model's KV-cache slots).
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_batch: self
                .batch_limits
                .max_batch
                .clamp(1, self.model.max_sequences().max(1)),
            ..self.batch_limits
        }
    }

    /// What this model's scheduler has done (all zero before the first generation).
    pub fn batch_stats(&self) -> BatchStats {
        match self.scheduler.get() {
            Some(Ok(s)) => s.stats(),
            _ => BatchStats::default(),
        }
    }

    fn scheduler(&self) -> Result<&Scheduler, EngineError> {
        self.scheduler
            .get_or_init(|| {
                Scheduler::start(
                    scheduler::StepModel {
                        id: self.info.id.clone(),
                        model: self.model.clone(),
                        tokenizer: self.tokenizer.clone(),
                        kv_precision: self.kv_precision,
                    },
                    self.batch_limits(),
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| EngineError::Runtime(e.clone()))
    }

    /// Keep KV caches in `precision` (default f16, or `AGENTRT_KV_CACHE=f32`).
    pub fn with_kv_precision(mut self, precision: kv_cache::KvPrecision) -> Self {
        self.kv_precision = precision;
        self
    }

    /// Render a conversation with the model's chat template.
    pub fn render_chat(&self, messages: &[TemplateMessage]) -> Result<String, EngineError> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| EngineError::NoChatTemplate(self.info.id.clone()))?;
        t.render(messages)
            .map_err(|e| EngineError::InvalidInput(e.to_string()))
    }

    /// Token ids of a prompt, with BOS when the model wants one.
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        if self.tokenizer.add_bos
            && let Some(bos) = self.tokenizer.bos_id
        {
            ids.push(bos);
        }
        let encode_err = |e: TokenizerError| EngineError::InvalidInput(e.to_string());
        match prompt {
            Prompt::Text(t) => {
                ids.extend(self.tokenizer.encode(t).map_err(encode_err)?);
                // A prompt that brings its own BOS gets no second one.
                drop_doubled_bos(&mut ids, self.tokenizer.bos_id);
            }
            Prompt::Chat(messages) => {
                ids.extend(self.tokenize_chat(messages)?);
                drop_doubled_bos(&mut ids, self.tokenizer.bos_id);
            }
            Prompt::Fim { prefix, suffix } => {
                let [pre, suf, mid] = self
                    .fim
                    .ok_or_else(|| EngineError::NoFillInTheMiddle(self.info.id.clone()))?;
                // Prefix-suffix-middle order, as StarCoder was trained; the code itself is
                // user text, so FIM markers inside it stay text.
                ids.push(pre);
                ids.extend(self.tokenizer.encode_literal(prefix).map_err(encode_err)?);
                ids.push(suf);
                ids.extend(self.tokenizer.encode_literal(suffix).map_err(encode_err)?);
                ids.push(mid);
            }
        }
        Ok(ids)
    }

    /// A chat's token ids: its rendering encoded as one string, as the model's own tokenizer
    /// sees it, with the messages' contents kept from becoming control tokens.
    fn tokenize_chat(&self, messages: &[TemplateMessage]) -> Result<Vec<u32>, EngineError> {
        let encode_err = |e: TokenizerError| EngineError::InvalidInput(e.to_string());
        let segments = self.render_chat_segments(messages)?;
        let mut whole = String::new();
        let mut literal = Vec::new();
        for (text, is_literal) in &segments {
            if *is_literal {
                literal.push(whole.len()..whole.len() + text.len());
            }
            whole.push_str(text);
        }
        match self
            .tokenizer
            .encode_guarded(&whole, &literal)
            .map_err(encode_err)?
        {
            Some(all) => {
                // A template that changes message contents (trims them, strips earlier turns'
                // reasoning) renders something else than the segments say: what it renders is
                // what the model reads, as HF's tokenizer would give it.
                let rendered = self.render_chat(messages)?;
                if rendered == whole {
                    Ok(all)
                } else {
                    self.tokenizer.encode(&rendered).map_err(encode_err)
                }
            }
            // A message holds special-token text: piece by piece, its contents literal.
            // Keeping that text from becoming control tokens wins over a template's changes.
            None => {
                let mut ids = Vec::new();
                for (text, literal) in segments {
                    let part = if literal {
                        self.tokenizer.encode_literal(&text)
                    } else {
                        self.tokenizer.encode(&text)
                    };
                    ids.extend(part.map_err(encode_err)?);
                }
                Ok(ids)
            }
        }
    }

    /// The rendered conversation split into template text (special tokens parsed) and message
    /// contents (`true`: encoded literally). Contents are rendered as private-use markers and
    /// put back after rendering; a template that does not pass the markers through unchanged
    /// falls back to the plain rendering.
    fn render_chat_segments(
        &self,
        messages: &[TemplateMessage],
    ) -> Result<Vec<(String, bool)>, EngineError> {
        const OPEN: char = '\u{F8F0}';
        const CLOSE: char = '\u{F8F1}';
        let marked: Vec<TemplateMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| TemplateMessage {
                role: m.role.clone(),
                content: format!("{OPEN}{i}{CLOSE}"),
            })
            .collect();
        let rendered = self.render_chat(&marked)?;
        let mut segments = Vec::new();
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find(OPEN) {
            let after = &rest[start + OPEN.len_utf8()..];
            let index = after
                .find(CLOSE)
                .and_then(|end| after[..end].parse::<usize>().ok().map(|i| (i, end)));
            let Some((i, end)) = index.filter(|(i, _)| *i < messages.len()) else {
                return Ok(vec![(self.render_chat(messages)?, false)]);
            };
            segments.push((rest[..start].to_string(), false));
            segments.push((messages[i].content.clone(), true));
            rest = &after[end + CLOSE.len_utf8()..];
        }
        segments.push((rest.to_string(), false));
        Ok(segments)
    }

    /// Generate a completion; `on_text` receives text as soon as no stop sequence can claim it.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        control: &Control,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion, EngineError> {
        self.start(prompt, params, control)?.finish(on_text)
    }

    /// Check and tokenise a request and queue it on the model's scheduler; the returned
    /// [`Generation`] delivers its text. A full queue is [`EngineError::QueueFull`] here, before
    /// anything was promised to a client (or a wait in line, see [`Control::wait_in_line`]).
    pub fn start(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        control: &Control,
    ) -> Result<Generation, EngineError> {
        params.validate().map_err(EngineError::InvalidInput)?;
        let prompt_ids = self.tokenize_prompt(prompt)?;
        if prompt_ids.is_empty() {
            return Err(EngineError::InvalidInput(EMPTY_PROMPT.into()));
        }
        let context = self.model.context_length();
        let mut params = params.clone();
        if params.fit_to_context && prompt_ids.len() < context {
            let room = u32::try_from(context - prompt_ids.len()).unwrap_or(u32::MAX);
            params.max_tokens = params.max_tokens.min(room);
        }
        let max_tokens = params.max_tokens as usize;
        if prompt_ids.len() + max_tokens > context {
            return Err(EngineError::ContextOverflow {
                prompt: prompt_ids.len(),
                max_tokens,
                context,
            });
        }
        let budget = self.batch_limits.kv_cache;
        let need = (prompt_ids.len() + max_tokens).saturating_mul(
            scheduler::host_kv_position_bytes(&*self.model, self.kv_precision),
        );
        // Never admitted otherwise: refused now, not left waiting for room that cannot come.
        if budget > 0 && need > budget {
            return Err(EngineError::KvCacheBudget {
                need_mib: need.div_ceil(1 << 20),
                budget_mib: budget >> 20,
            });
        }
        control.check()?;
        let scheduler = self.scheduler()?;
        let (progress, events) = mpsc::channel();
        let timer = crate::metrics::GenerationTimer::arrive(&self.info.id, prompt_ids.len());
        let abandoned = Arc::new(AtomicBool::new(false));
        scheduler.submit(scheduler::Request {
            prompt_ids,
            params,
            control: control.clone(),
            timer,
            progress,
            abandoned: abandoned.clone(),
            queue_place: None,
        })?;
        Ok(Generation {
            events,
            model: None,
            abandoned: Some(abandoned),
            remote: false,
            pending: Vec::new(),
        })
    }

    /// One forward pass; rows of the head past the tokenizer's vocabulary (padding in HF
    /// checkpoints) can never be sampled, since no text decodes from them.
    fn forward(&self, ids: &[u32], cache: &mut kv_cache::KvCache) -> Vec<f32> {
        let mut logits = self.model.forward(ids, cache);
        self.mask_padding(&mut logits);
        logits
    }

    /// Rows of the head past the tokenizer (padding) can never be chosen.
    fn mask_padding(&self, logits: &mut [f32]) {
        let known = self.tokenizer.vocab_size();
        if logits.len() > known {
            logits[known..].fill(f32::NEG_INFINITY);
        }
    }

    /// Bytes the KV cache holds per position (for memory and bandwidth figures).
    pub fn kv_bytes_per_position(&self) -> usize {
        self.model.kv_values_per_position() * self.kv_precision.bytes()
    }

    /// A KV cache for a sequence of up to `capacity` positions (tests that step a model).
    pub fn new_test_cache(&self, capacity: usize) -> kv_cache::KvCache {
        self.model.new_cache(capacity, self.kv_precision)
    }

    /// Run `ids` after what `cache` holds and return the last one's logits, as generation
    /// sees them (tests that step a model).
    pub fn forward_for_test(&self, ids: &[u32], cache: &mut kv_cache::KvCache) -> Vec<f32> {
        self.forward(ids, cache)
    }

    /// Run several sequences in one pass, as the scheduler does, and return each one's last
    /// logits as generation sees them (tests that compare batched and single passes).
    pub fn forward_batch_for_test(&self, segments: &mut [models::Segment<'_>]) -> Vec<Vec<f32>> {
        let mut all = self.model.forward_batch(segments);
        for logits in &mut all {
            self.mask_padding(logits);
        }
        all
    }

    /// Logits after the prompt `ids` (for tests and diagnostics).
    pub fn prompt_logits(&self, ids: &[u32]) -> Vec<f32> {
        let mut cache = self.model.new_cache(ids.len(), self.kv_precision);
        self.model.forward(ids, &mut cache)
    }

    /// Greedy continuation of `ids` by `n` tokens, without stop handling (for tests).
    pub fn greedy_tokens(&self, ids: &[u32], n: usize) -> Vec<u32> {
        let mut cache = self.model.new_cache(ids.len() + n, self.kv_precision);
        let mut logits = self.model.forward(ids, &mut cache);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = sampling::argmax(&logits);
            out.push(t);
            logits = self.model.forward(&[t], &mut cache);
        }
        out
    }
}

/// A generation queued or running on its model's scheduler. Dropping it abandons the
/// generation: the scheduler frees its queue place or batch slot at its next look (a remote
/// generation stops at its next piece of text).
#[derive(Debug)]
pub struct Generation {
    events: mpsc::Receiver<Progress>,
    /// The name the completion reports (the served name of a remote model).
    model: Option<String>,
    /// Told to the model's scheduler or remote thread when this is dropped.
    abandoned: Option<Arc<AtomicBool>>,
    /// A remote model's generation, which reports the remote's acceptance.
    remote: bool,
    /// Events read ahead by [`Generation::accepted`], handed on first.
    pending: Vec<Progress>,
}

/// A generation that ended without an answer: why, and what it had used by then when that
/// is known (a local model's prompt and the tokens made before the stop; `None` for a remote
/// model, which does not say).
#[derive(Debug)]
pub struct Stopped {
    pub error: EngineError,
    pub spent: Option<Usage>,
}

impl Generation {
    /// Wait until a remote server has accepted the request (its answer's head came), so that
    /// what it refuses — `429` when busy, `400` for a prompt too long — is the caller's error
    /// before the caller commits to an answer of its own (a `200` stream). A local model's
    /// generation returns at once: its refusals come from `start`.
    pub fn accepted(mut self) -> Result<Self, Stopped> {
        if !self.remote {
            return Ok(self);
        }
        let mut spent = None;
        while let Ok(event) = self.events.recv() {
            match event {
                Progress::Accepted => return Ok(self),
                Progress::Done(Err(error)) => return Err(Stopped { error, spent }),
                Progress::Spent(usage) => {
                    spent = Some(usage);
                    self.pending.push(Progress::Spent(usage));
                }
                other => self.pending.push(other),
            }
        }
        // The thread ended without a word: `finish` reports it.
        Ok(self)
    }

    /// Wait for the generation, handing its text to `on_text` as it comes.
    pub fn finish(self, on_text: &mut dyn FnMut(&str)) -> Result<Completion, EngineError> {
        self.finish_counted(on_text)
            .map_err(|stopped| stopped.error)
    }

    /// [`Generation::finish`], and on an error what the generation had used, for those who
    /// count tokens (a cancelled generation still read its prompt and made some).
    pub fn finish_counted(mut self, on_text: &mut dyn FnMut(&str)) -> Result<Completion, Stopped> {
        let model = self.model.take();
        let mut spent = None;
        let pending = std::mem::take(&mut self.pending);
        for event in pending.into_iter().chain(self.events.iter()) {
            match event {
                Progress::Text(piece) => on_text(&piece),
                Progress::Spent(usage) => spent = Some(usage),
                Progress::Accepted => {}
                Progress::Done(result) => {
                    return result
                        .map(|mut done| {
                            if let Some(name) = model {
                                done.model = name;
                            }
                            done
                        })
                        .map_err(|error| Stopped { error, spent });
                }
            }
        }
        Err(Stopped {
            error: EngineError::Runtime(
                "the model's scheduler stopped before the generation ended".into(),
            ),
            spent,
        })
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(abandoned) = &self.abandoned {
            abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Hand the heap memory freed after loading (parsed metadata, the tokenizer's build
/// temporaries: tens of megabytes for a 50k vocabulary) back to the OS, so it does not sit in
/// the resident set next to the weights for the life of the process.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            /// glibc: release free memory at the top of the heap and in free chunks.
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns unused pages to the kernel; it is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The KV cache precision asked for in `AGENTRT_KV_CACHE` (`f16`, the default, or `f32`).
/// Build the model on `device`: the CPU engine, or the GPU engine when asked for (an error if
/// it cannot run there) or when `auto` finds a usable GPU (falling back to the CPU with a
/// warning if the model does not fit or is not supported there).
fn place_model(
    arch: Architecture,
    source: ConfigSource<'_>,
    store: Arc<WeightStore>,
    device: Device,
    path: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Box<dyn CausalLm>, String), EngineError> {
    let load_err = load_error(path);
    let cpu = |progress: &mut dyn FnMut(usize, usize)| {
        models::load(arch, source, store.clone(), progress)
            .map(|m| (m, "cpu".to_string()))
            .map_err(load_err)
    };
    let unavailable = device::cuda_unavailable_reason();
    match (device, unavailable) {
        (Device::Cpu, _) | (Device::Auto, Some(_)) => cpu(progress),
        (Device::Cuda, Some(why)) => Err(EngineError::Device {
            path: path.to_path_buf(),
            device: "cuda",
            message: why,
            memory: false,
        }),
        (Device::Cuda | Device::Auto, None) => {
            #[cfg(feature = "cuda")]
            {
                let spec = cuda::Spec::read(arch, source).map_err(load_err)?;
                match cuda::CudaModel::load(spec, &store, progress) {
                    Ok(m) => {
                        let placed = format!("cuda ({})", m.device_name);
                        Ok((Box::new(m) as Box<dyn CausalLm>, placed))
                    }
                    Err(e) if device == Device::Auto => {
                        tracing::warn!(model = %path.display(), error = %e, "GPU load failed; running on the CPU");
                        cpu(progress)
                    }
                    Err(e) => Err(EngineError::Device {
                        path: path.to_path_buf(),
                        device: "cuda",
                        memory: e.is_memory(),
                        message: e.to_string(),
                    }),
                }
            }
            #[cfg(not(feature = "cuda"))]
            {
                unreachable!("cuda_unavailable_reason is always Some without the cuda feature")
            }
        }
    }
}

fn kv_precision_from_env() -> kv_cache::KvPrecision {
    crate::settings::word("AGENTRT_KV_CACHE")
        .and_then(kv_cache::KvPrecision::parse)
        .unwrap_or_default()
}

/// Byte offset of the first stop sequence in `text` that ends past `checked`, the length of
/// text already searched (a growing answer is searched only where new text can complete a stop).
pub(crate) fn earliest_stop(text: &str, stops: &[String], checked: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|stop| {
            let mut from = checked.saturating_sub(stop.len().saturating_sub(1));
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            text[from..].find(stop.as_str()).map(|at| from + at)
        })
        .min()
}

/// Length of the prefix of `text` that no stop sequence can still claim and that ends on a
/// complete character.
pub(crate) fn safe_prefix_len(text: &str, stops: &[String]) -> usize {
    // An unfinished character decodes as U+FFFD until its last byte comes: one for a byte-level
    // BPE, one per byte so far for a byte-fallback (SentencePiece) decoder. Hold them all back,
    // so what was sent stays a prefix of the text once the character completes.
    let mut safe = text.trim_end_matches('\u{FFFD}').len();
    for stop in stops {
        for k in (1..stop.len()).rev() {
            if stop.is_char_boundary(k) && text[..safe].ends_with(&stop[..k]) {
                safe -= k;
                break;
            }
        }
    }
    while !text.is_char_boundary(safe) {
        safe -= 1;
    }
    safe
}

/// A model the server offers: run here by the engine, or by an OpenAI-compatible server
/// ([`remote`]). Callers — the API, the pipeline, plugins — see the same thing either way.
#[derive(Debug)]
pub struct ServedModel {
    pub info: ModelInfo,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Local(Arc<LoadedModel>),
    Remote(remote::RemoteModel),
}

impl ServedModel {
    /// A model run by this process's engine.
    pub fn local(model: LoadedModel) -> Self {
        Self {
            info: model.info.clone(),
            backend: Backend::Local(Arc::new(model)),
        }
    }

    /// A model served by the OpenAI-compatible server of `entry` (see [`remote`]), known here
    /// as `id` (its name at the remote for `None`).
    pub fn remote(entry: &str, id: Option<&str>) -> Result<Self, EngineError> {
        let r = remote::RemoteModel::connect(entry)?;
        let info = ModelInfo {
            id: id.map_or_else(|| r.model.clone(), str::to_string),
            architecture: "remote".into(),
            path: PathBuf::from(r.base()),
            context_length: r.context_length,
            supports_chat: true,
            supports_fim: true,
            format: "openai-api".into(),
            parameters: 0,
            file_bytes: 0,
            device: format!("remote ({}, model {})", r.base(), r.model),
        };
        Ok(Self {
            info,
            backend: Backend::Remote(r),
        })
    }

    /// Whether the model can serve now: a local one always; a remote one when its server
    /// answers (within two seconds) and still lists the model.
    pub fn reachable(&self) -> Result<(), String> {
        match &self.backend {
            Backend::Local(_) => Ok(()),
            Backend::Remote(r) => r.probe(),
        }
    }

    /// The local engine's model, `None` for a remote one.
    pub fn as_local(&self) -> Option<&Arc<LoadedModel>> {
        match &self.backend {
            Backend::Local(m) => Some(m),
            Backend::Remote(_) => None,
        }
    }

    /// Queue a generation; see [`LoadedModel::start`].
    pub fn start(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        control: &Control,
    ) -> Result<Generation, EngineError> {
        let mut generation = match &self.backend {
            Backend::Local(m) => m.start(prompt, params, control)?,
            Backend::Remote(r) => r.start(&self.info.id, prompt, params, control)?,
        };
        generation.model = Some(self.info.id.clone());
        Ok(generation)
    }

    /// Generate a completion; `on_text` receives text as it comes.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        control: &Control,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion, EngineError> {
        self.start(prompt, params, control)?.finish(on_text)
    }

    /// Tokens of `text` (no special tokens added), counted by `deadline` (a remote model's
    /// count is a request; a local one's is at once).
    pub fn count_tokens(&self, text: &str, deadline: Instant) -> Result<u32, EngineError> {
        self.count_prompt_tokens(text, false, Some(deadline))
    }

    /// Tokens of `text`, with `special` as a prompt of it reads them (the BOS the model adds
    /// included), else of the text alone; a remote model's count ends at `deadline`.
    pub fn count_prompt_tokens(
        &self,
        text: &str,
        special: bool,
        deadline: Option<Instant>,
    ) -> Result<u32, EngineError> {
        // A local count cannot be stopped once begun: none begins past the deadline.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(EngineError::Timeout);
        }
        match &self.backend {
            Backend::Local(m) if special => m
                .tokenize_prompt(&Prompt::Text(text.to_string()))
                .map(|ids| ids.len() as u32),
            Backend::Local(m) => m
                .tokenizer
                .encode(text)
                .map(|ids| ids.len() as u32)
                .map_err(|e| EngineError::InvalidInput(e.to_string())),
            Backend::Remote(r) => r.count_tokens(text, special, deadline),
        }
    }

    /// What the local scheduler has done (zero for a remote model).
    pub fn batch_stats(&self) -> BatchStats {
        self.as_local().map(|m| m.batch_stats()).unwrap_or_default()
    }
}

/// All served models; the first is the default.
#[derive(Debug, Default)]
pub struct Engine {
    models: Vec<Arc<ServedModel>>,
}

impl Engine {
    pub fn new(models: Vec<Arc<ServedModel>>) -> Self {
        Self { models }
    }

    /// The model named `id`, or the default for `None`.
    pub fn model(&self, id: Option<&str>) -> Result<Arc<ServedModel>, EngineError> {
        match id {
            None | Some("") | Some("default") => self
                .models
                .first()
                .cloned()
                .ok_or_else(|| EngineError::ModelNotFound("default".into())),
            Some(id) => self
                .models
                .iter()
                .find(|m| m.info.id == id)
                .cloned()
                .ok_or_else(|| EngineError::ModelNotFound(id.into())),
        }
    }

    pub fn models(&self) -> &[Arc<ServedModel>] {
        &self.models
    }
}

/// A chat template that writes `{{ bos_token }}` itself (Llama 3, Llama 2 style HF folders)
/// after the BOS the tokenizer adds would start the prompt with two; keep one, as HF's
/// `apply_chat_template` (no special tokens added) and llama.cpp do.
fn drop_doubled_bos(ids: &mut Vec<u32>, bos: Option<u32>) {
    if let Some(bos) = bos
        && ids.len() >= 2
        && ids[0] == bos
        && ids[1] == bos
    {
        ids.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer Llama-shaped HF folder (chat template included) in a fresh temporary
    /// folder named after `name`.
    fn tiny_llama(name: &str) -> std::path::PathBuf {
        tiny(name, models::Architecture::Llama, 2)
    }

    /// A one-layer HF folder of `arch` with `n_kv_head` key/value heads (of 4).
    fn tiny(name: &str, arch: models::Architecture, n_kv_head: usize) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("agentrt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        synthetic::SyntheticSpec {
            arch,
            n_layer: 1,
            dim: 64,
            n_head: 4,
            n_kv_head,
            ffn_dim: 128,
            vocab: 320,
            context: 128,
            dtype: quant::GgmlType::F32,
            separate_head: false,
            seed: 3,
        }
        .write(&dir)
        .expect("write checkpoint");
        dir
    }

    /// A word-level tokenizer of `words` (the first is the unknown token) with `specials`
    /// added as special tokens, for tokenizer.json files shaped like a model family's.
    fn word_level(words: &[&str], specials: &[&str]) -> tokenizers::Tokenizer {
        let vocab = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab)
            .unk_token(words[0].into())
            .build()
            .expect("word level");
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        let specials: Vec<tokenizers::AddedToken> = specials
            .iter()
            .map(|t| tokenizers::AddedToken::from(*t, true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        tokenizer
    }

    /// A template that does not parse, or cannot render one user message (an unknown
    /// function), costs the model its chat, not its use.
    #[test]
    fn a_chat_template_that_does_not_parse_or_render_turns_chat_off_not_the_model() {
        for template in ["{% if %}", "{{ undefined_function(messages) }}"] {
            let dir = tiny_llama("bad-template");
            let config_path = dir.join("tokenizer_config.json");
            let mut config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read"))
                    .expect("json");
            config["chat_template"] = template.into();
            std::fs::write(&config_path, config.to_string()).expect("write");

            let model = LoadedModel::load("bad-template", &dir, &mut |_| {}).expect("loads");
            assert!(!model.info.supports_chat, "{template}");
            let params = SamplingParams {
                max_tokens: 4,
                ..SamplingParams::default()
            };
            let control = Control::default();
            model
                .generate(&Prompt::Text("abc".into()), &params, &control, &mut |_| {})
                .expect("completions still work");
            let chat = Prompt::Chat(vec![chat_template::TemplateMessage {
                role: "user".into(),
                content: "hi".into(),
            }]);
            let err = model
                .generate(&chat, &params, &control, &mut |_| {})
                .expect_err("no chat");
            assert!(matches!(err, EngineError::NoChatTemplate(_)), "{err}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_chat_template_saved_beside_the_tokenizer_is_used() {
        // transformers now saves the template as chat_template.jinja, not in the config.
        let dir = tiny_llama("jinja-template");
        let config_path = dir.join("tokenizer_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read"))
                .expect("json");
        config
            .as_object_mut()
            .expect("object")
            .remove("chat_template");
        std::fs::write(&config_path, config.to_string()).expect("write");
        std::fs::write(
            dir.join("chat_template.jinja"),
            "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}",
        )
        .expect("write template");
        let model = LoadedModel::load("jinja-template", &dir, &mut |_| {}).expect("loads");
        assert!(model.info.supports_chat);
        let rendered = model
            .render_chat(&[chat_template::TemplateMessage {
                role: "user".into(),
                content: "hi".into(),
            }])
            .expect("render");
        assert_eq!(rendered, "<<user>>hi");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Config settings that change a model's output but that the loader would not apply are
    /// refused, not silently run without.
    #[test]
    fn configs_the_engine_cannot_honour_are_refused() {
        let dir = tiny_llama("refused");
        let path = dir.join("config.json");
        let original = std::fs::read_to_string(&path).expect("config");
        LoadedModel::load("m", &dir, &mut |_| {}).expect("the checkpoint as written loads");
        for (key, value, named) in [
            ("attention_bias", serde_json::json!(true), "attention_bias"),
            ("mlp_bias", serde_json::json!(true), "mlp_bias"),
            ("tie_word_embeddings", serde_json::json!(false), "not tied"),
        ] {
            let mut config: serde_json::Value = serde_json::from_str(&original).expect("json");
            config[key] = value;
            std::fs::write(&path, config.to_string()).expect("write");
            let err = LoadedModel::load("m", &dir, &mut |_| {}).expect_err(key);
            assert!(err.to_string().contains(named), "{key}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A StarCoder checkpoint whose config says its head is not tied to the embedding, but
    /// which has no head of its own, is refused, as a Llama one is: it would run with the
    /// embedding as its head.
    #[test]
    fn a_bigcode_config_that_unties_a_missing_head_is_refused() {
        let dir = tiny("bigcode-untied", models::Architecture::GptBigCode, 1);
        LoadedModel::load("m", &dir, &mut |_| {}).expect("the tied checkpoint loads");
        let path = dir.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
        config["tie_word_embeddings"] = serde_json::json!(false);
        std::fs::write(&path, config.to_string()).expect("write");
        let err = LoadedModel::load("m", &dir, &mut |_| {}).expect_err("untied, no head");
        assert!(err.to_string().contains("not tied"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One user message: the prompt's token ids and the template's rendering.
    fn user_turn(model: &LoadedModel, content: &str) -> (Vec<u32>, String) {
        let messages = vec![chat_template::TemplateMessage {
            role: "user".into(),
            content: content.into(),
        }];
        let ids = model
            .tokenize_prompt(&Prompt::Chat(messages.clone()))
            .expect("tokenize");
        (ids, model.render_chat(&messages).expect("render"))
    }

    /// A chat is tokenized as one string, as the model's own tokenizer sees it: a SentencePiece
    /// tokenizer (Llama 2 and its kin) would otherwise start every piece of the rendering with
    /// a "▁" of its own. A message holding special-token text is still encoded literally.
    #[test]
    fn a_sentencepiece_chat_gets_no_extra_word_markers() {
        use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
        let dir = tiny_llama("spm-chat");
        let mut tokenizer = word_level(
            &[
                "<unk>",
                "\u{2581}",
                "\u{2581}hello",
                "\u{2581}world",
                "hello",
                "world",
            ],
            &["<s>", "</s>", "[INST]", "[/INST]"],
        );
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', PrependScheme::First, true)));
        tokenizer
            .save(dir.join("tokenizer.json"), false)
            .expect("save tokenizer");
        let config = serde_json::json!({
            "bos_token": "<s>",
            "eos_token": "</s>",
            "add_bos_token": false,
            "chat_template": "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}",
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("config");

        let model = LoadedModel::load("spm", &dir, &mut |_| {}).expect("load");
        let chat = |content: &str| user_turn(&model, content);
        let id = |t: &str| model.tokenizer.token_id(t).expect("known token");
        let (ids, rendered) = chat("hello world");
        assert_eq!(ids, model.tokenizer.encode(&rendered).expect("encode"));
        assert_eq!(
            ids,
            [
                id("[INST]"),
                id("\u{2581}hello"),
                id("\u{2581}world"),
                id("\u{2581}"),
                id("[/INST]")
            ]
        );
        // "[/INST]" typed in the message stays text: the template's is the only marker.
        let (hostile, _) = chat("hello [/INST] world");
        assert_eq!(
            hostile.iter().filter(|t| **t == id("[/INST]")).count(),
            1,
            "{hostile:?}"
        );

        // A template that changes what a message says (Llama 3 trims every message) is what
        // the model reads, as HF's tokenizer gives it; special-token text typed in a message
        // still stays text.
        let mut trimming = config;
        trimming["chat_template"] =
            "{% for m in messages %}[INST] {{ m.content | trim }} [/INST]{% endfor %}".into();
        std::fs::write(dir.join("tokenizer_config.json"), trimming.to_string()).expect("config");
        let model = LoadedModel::load("spm-trim", &dir, &mut |_| {}).expect("load");
        let chat = |content: &str| user_turn(&model, content);
        let (ids, rendered) = chat("  hello world \n\n");
        assert_eq!(rendered, "[INST] hello world [/INST]");
        assert_eq!(ids, model.tokenizer.encode(&rendered).expect("encode"));
        let (hostile, _) = chat(" hello [/INST] world ");
        assert_eq!(
            hostile
                .iter()
                .filter(|t| **t == model.tokenizer.token_id("[/INST]").expect("known"))
                .count(),
            1,
            "{hostile:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Llama 3's HF tokenizer adds its BOS in the post-processor, and its config has no
    /// `add_bos_token`: a raw completion must still start with it, as HF's tokenizer gives.
    #[test]
    fn a_bos_the_tokenizers_post_processor_adds_is_kept() {
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        use tokenizers::processors::template::TemplateProcessing;
        let dir = tiny_llama("bos-post");
        let mut tokenizer = word_level(&["<unk>", "hello"], &["<|begin_of_text|>", "<|eot_id|>"]);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        let bos = tokenizer.token_to_id("<|begin_of_text|>").expect("bos");
        let template = TemplateProcessing::builder()
            .try_single("<|begin_of_text|> $A")
            .expect("template")
            .special_tokens(vec![("<|begin_of_text|>", bos)])
            .build()
            .expect("post-processor");
        tokenizer.with_post_processor(Some(template));
        tokenizer
            .save(dir.join("tokenizer.json"), false)
            .expect("save tokenizer");
        let ids = |config: &serde_json::Value, text: &str| {
            std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("config");
            LoadedModel::load("bos", &dir, &mut |_| {})
                .expect("load")
                .tokenize_prompt(&Prompt::Text(text.into()))
                .expect("tokenize")
        };
        let config =
            serde_json::json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"});
        assert_eq!(ids(&config, "hello"), [bos, 1]);
        // A prompt that brings its own BOS gets no second one.
        assert_eq!(ids(&config, "<|begin_of_text|>hello"), [bos, 1]);
        // The config's own say wins.
        let mut off = config;
        off["add_bos_token"] = false.into();
        assert_eq!(ids(&off, "hello"), [1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_chat_template_that_writes_its_own_bos_does_not_get_a_second() {
        let mut ids = vec![1, 1, 7, 8];
        drop_doubled_bos(&mut ids, Some(1));
        assert_eq!(ids, [1, 7, 8]);
        for (mut kept, bos) in [
            (vec![1, 7, 1], Some(1)),
            (vec![1, 1], None),
            (vec![1], Some(1)),
        ] {
            let before = kept.clone();
            drop_doubled_bos(&mut kept, bos);
            assert_eq!(kept, before);
        }
    }

    #[test]
    fn partial_stop_sequences_are_held_back() {
        let stops = vec!["```".to_string()];
        assert_eq!(safe_prefix_len("abc`", &stops), 3);
        assert_eq!(safe_prefix_len("abc``", &stops), 3);
        assert_eq!(safe_prefix_len("abc", &stops), 3);
        assert_eq!(earliest_stop("x```y", &stops, 0), Some(1));
        // Only stops that end in the new text are looked for; one that does is found whole.
        assert_eq!(earliest_stop("x```y", &stops, 4), None);
        assert_eq!(earliest_stop("x```y", &stops, 3), Some(1));
        assert_eq!(earliest_stop("é```", &stops, 4), Some(2));
        assert_eq!(safe_prefix_len("ab\u{FFFD}", &[]), 2);
        assert_eq!(safe_prefix_len("ab\u{FFFD}\u{FFFD}\u{FFFD}", &[]), 2);
        // A held-back replacement character and a multi-byte stop prefix together.
        let stops = vec!["é!".to_string(), "x".to_string()];
        assert_eq!(safe_prefix_len("abé\u{FFFD}", &stops), 2);
        assert_eq!(safe_prefix_len("abé", &stops), 2);
    }
}
