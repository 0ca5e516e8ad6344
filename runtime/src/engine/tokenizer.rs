//! Tokenizers on top of the `tokenizers` crate: an HF folder's `tokenizer.json` as it is, or
//! one rebuilt from GGUF metadata.
//!
//! GGUF files carry the vocabulary, the BPE merges, the token types and a `tokenizer.ggml.pre`
//! name for the pre-tokenizer; the regexes behind those names live in llama.cpp's source, not in
//! the file. We map the names we support to the same split rules HF's `tokenizer.json` uses for
//! those models, so ids agree with the model's original tokenizer. SentencePiece vocabularies
//! (Llama 2, TinyLlama, Mistral) carry scores instead of merges; the merges follow from them
//! (see [`sentencepiece_bpe`]).

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::gguf::{GgufError, GgufFile, MetaValue};

/// GGUF token type of control tokens such as `<|im_start|>`.
const TOKEN_TYPE_CONTROL: u64 = 3;
/// GGUF token type of tokens a user added to the vocabulary.
const TOKEN_TYPE_USER_DEFINED: u64 = 4;
/// GGUF token type of the unknown token (`<unk>`).
const TOKEN_TYPE_UNKNOWN: u64 = 2;
/// GGUF token type of SentencePiece's byte pieces (`<0x0A>`).
const TOKEN_TYPE_BYTE: u64 = 6;
/// The largest GGUF vocabulary accepted: sixteen times the largest in use (Gemma's 262144),
/// and far inside `u32` ids.
const MAX_GGUF_TOKENS: usize = 1 << 22;

/// Split rule of Llama 3 (`llama-bpe`) and similar tokenizers.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Split rule of Qwen2.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),
    #[error(
        "tokenizer model {0:?} is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
    )]
    UnsupportedModel(String),
    #[error("tokenizer: {0}")]
    Library(String),
}

fn lib_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Library(e.to_string())
}

/// Where a streamed decode stands (see [`Tokenizer::decode_next`]): `ids[..read]` are in the
/// text; `ids[prefix..read]`, the last piece's tokens, are decoded again with the next ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct DecodeState {
    prefix: usize,
    read: usize,
}

/// A BPE tokenizer (byte-level, or SentencePiece's) with the model's special tokens.
///
/// Two immutable `tokenizers::Tokenizer`s, one parsing special tokens and one not, each used
/// without a lock. One copy behind a mutex (toggling how it reads special tokens) saved a few
/// megabytes, but made every client's streamed decode wait behind any encode: a plugin that
/// counted the tokens of megabytes of text stalled all generation for the length of its call.
pub struct Tokenizer {
    /// Special-token text (`<|im_start|>`) becomes its token; also what decodes.
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Tokens that end a generation: EOS, end-of-turn and end-of-text markers.
    pub stop_ids: HashSet<u32>,
    pub add_bos: bool,
    /// The chat template shipped with the tokenizer (GGUF `tokenizer.chat_template`, HF
    /// `tokenizer_config.json`), if any.
    pub chat_template: Option<String>,
    /// Tokens including added ones.
    size: usize,
    /// Ids of the added tokens, special (`<|im_start|>`) or not (Qwen's `<|fim_middle|>`):
    /// text a user wrote must become none of them.
    added_ids: HashSet<u32>,
    /// A copy that encodes text a user wrote: special-token text stays ordinary text, and its
    /// added tokens are all special, since the tokenizers crate leaves non-special added tokens
    /// live even in literal encoding.
    literal: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.size)
            .finish()
    }
}

/// Whether `tokenizer`'s post-processor puts `bos` in front of a text, as HF's `tokenizer(text)`
/// does (a probe: a short text encoded with the special tokens is `bos` and the text alone).
fn post_processor_adds(tokenizer: &tokenizers::Tokenizer, bos: u32) -> bool {
    let ids = |special: bool| {
        tokenizer
            .encode("a", special)
            .map(|e| e.get_ids().to_vec())
            .ok()
    };
    match (ids(true), ids(false)) {
        (Some(with), Some(without)) => {
            with.first() == Some(&bos) && with[1..] == without[..] && without.first() != Some(&bos)
        }
        _ => false,
    }
}

/// Ids of `tokenizer`'s added tokens, special or not.
fn added_ids(tokenizer: &tokenizers::Tokenizer) -> HashSet<u32> {
    tokenizer.get_added_tokens_decoder().into_keys().collect()
}

/// A copy of `tokenizer` that encodes every added token's text as ordinary text: its
/// non-special added tokens are made special, and special tokens are not parsed.
fn literal_copy(tokenizer: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
    let mut copy = tokenizer.clone();
    let plain: Vec<tokenizers::AddedToken> = tokenizer
        .get_added_tokens_decoder()
        .into_values()
        .filter(|t| !t.special)
        .map(|mut t| {
            t.special = true;
            t
        })
        .collect();
    if !plain.is_empty() {
        // Same contents, so the same ids; only their flag changes.
        copy.add_special_tokens(&plain);
    }
    copy.set_encode_special_tokens(true);
    copy
}

/// The pre-tokenizer HF uses for the model family named by `tokenizer.ggml.pre`.
fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |re: &str| {
        Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(lib_err)
    };
    Ok(match pre {
        // StarCoder-style: every digit alone, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()
        }
        // Llama 3's rule, also under other families' names, as llama.cpp maps them.
        p if is_llama3_family(p) || matches!(p, "smaug-bpe" | "exaone") => {
            Sequence::new(vec![split(LLAMA3_SPLIT)?.into(), byte_level(false).into()]).into()
        }
        // Qwen2's rule, also DeepSeek-R1's distillations of Qwen.
        "qwen2" | "deepseek-r1-qwen" => {
            Sequence::new(vec![split(QWEN2_SPLIT)?.into(), byte_level(false).into()]).into()
        }
        "gpt-2" | "gpt2" | "default" => byte_level(true).into(),
        // Another family's own rule, not known here: GPT-2's is the nearest, but the model may
        // see token ids it was not trained on, so say so rather than guess in silence.
        other => {
            tracing::warn!(
                pre_tokenizer = other,
                "unknown tokenizer.ggml.pre: text is split GPT-2's way, which may not be how this model was trained (its output can suffer)"
            );
            byte_level(true).into()
        }
    })
}

/// Pre-tokenizer names of Llama 3's tokenizer family: whole-word vocabulary hits skip the
/// merges, and a prompt starts with BOS unless the file says otherwise (as llama.cpp reads them).
fn is_llama3_family(pre: &str) -> bool {
    matches!(
        pre,
        "llama3"
            | "llama-v3"
            | "llama-bpe"
            | "falcon3"
            | "falcon-h1"
            | "pixtral"
            | "midm-2.0"
            | "lfm2"
    )
}

/// Special tokens that end a generation whatever the model's EOS: end of text, of a turn, of
/// a message, and the padding and file/repository separators of code models' fill-in-the-middle
/// formats (Qwen2.5-Coder, StarCoder), which start unrelated text when a middle is done (the set
/// llama.cpp ends generation on).
fn is_end_marker(token: &str) -> bool {
    matches!(
        token,
        "<|endoftext|>"
            | "<|end_of_text|>"
            | "<|im_end|>"
            | "<|eot_id|>"
            | "<|eom_id|>"
            | "<|end|>"
            | "<|fim_pad|>"
            | "<|repo_name|>"
            | "<|file_sep|>"
            | "<fim_pad>"
            | "<reponame>"
            | "<file_sep>"
    )
}

/// A JSON file that may be absent (then `null`).
fn read_optional_json(path: &Path) -> Result<serde_json::Value, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| lib_err(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::Value::Null),
        Err(e) => Err(lib_err(format!("{}: {e}", path.display()))),
    }
}

/// The BPE of a GGUF byte-level tokenizer (GPT-2's family): its merges as listed, text split by
/// the `pre` family's rule first.
fn byte_level_bpe(
    file: &GgufFile,
    tokens: &[String],
    pre: &str,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let merges = file
        .array("tokenizer.ggml.merges")?
        .iter()
        .map(|v| match v {
            MetaValue::Str(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| lib_err(format!("malformed merge {s:?}"))),
            _ => Err(lib_err("tokenizer.ggml.merges holds a non-string")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Llama 3's tokenizer takes a word that is in the vocabulary whole, merges or not.
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), merges)
        .ignore_merges(is_llama3_family(pre))
        .build()
        .map_err(lib_err)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer_for(pre)?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

fn vocab_of(tokens: &[String]) -> tokenizers::models::bpe::Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// The tokenizer of a GGUF SentencePiece vocabulary (`tokenizer.ggml.model` "llama": Llama 2,
/// TinyLlama, CodeLlama, Mistral): pieces with scores, spaces written "▁", characters outside
/// the vocabulary spelt in `<0xXX>` byte pieces.
///
/// SentencePiece's BPE joins, again and again, the neighbouring pair whose joined piece is in
/// the vocabulary with the highest score. That is a BPE whose merges are every split of every
/// piece into two pieces of the vocabulary, ranked by the joined piece's score — the rules HF's
/// own conversion of these tokenizers writes into `tokenizer.json`, so the `tokenizers` crate
/// runs it; ids are checked against SentencePiece's own in the tests.
fn sentencepiece_bpe(
    file: &GgufFile,
    tokens: &[String],
    types: &[u64],
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let scores: Vec<f32> = match file.get("tokenizer.ggml.scores") {
        Some(MetaValue::Array(a)) if a.len() == tokens.len() => a
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| lib_err("tokenizer.ggml.scores holds a non-number"))?,
        _ => {
            return Err(lib_err(
                "a SentencePiece vocabulary needs tokenizer.ggml.scores, one per token",
            ));
        }
    };
    let vocab = vocab_of(tokens);
    // Byte pieces and control tokens are not joined from anything.
    let joinable = |i: usize| !matches!(types.get(i), Some(&TOKEN_TYPE_CONTROL | &TOKEN_TYPE_BYTE));
    let mut merges: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate().filter(|(i, _)| joinable(*i)) {
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((scores[i], l, r, left, right));
            }
        }
    }
    // Highest score first; one piece's splits by their halves' ids (the sort is stable).
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let merges = merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect();
    let unknown = tokens
        .iter()
        .zip(types)
        .find(|(_, ty)| **ty == TOKEN_TYPE_UNKNOWN)
        .map(|(t, _)| t.clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unknown) = unknown {
        builder = builder.unk_token(unknown);
    }
    let mut inner = tokenizers::Tokenizer::new(builder.build().map_err(lib_err)?);
    // SentencePiece's dummy prefix: the text starts with a space, as every word after the
    // first does, and a decode drops it again.
    let space_prefix = !matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Some(MetaValue::Bool(false))
    );
    let spaces = Replace::new(" ", "▁").map_err(lib_err)?;
    let normalizer: NormalizerWrapper = if space_prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), spaces.into()]).into()
    } else {
        spaces.into()
    };
    inner.with_normalizer(Some(normalizer));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(lib_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

impl Tokenizer {
    /// Build the tokenizer described by a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.str("tokenizer.ggml.model")?;
        if model != "gpt2" && model != "llama" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let tokens: Vec<String> = file
            .array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| match v {
                MetaValue::Str(s) => Ok(s.clone()),
                _ => Err(GgufError::WrongType {
                    key: "tokenizer.ggml.tokens".into(),
                    expected: "array of strings",
                }),
            })
            .collect::<Result<_, _>>()?;
        // An empty vocabulary builds a tokenizer that turns every text into nothing.
        if tokens.is_empty() || tokens.len() > MAX_GGUF_TOKENS {
            return Err(lib_err(format!(
                "tokenizer.ggml.tokens holds {} tokens (expected 1 to {MAX_GGUF_TOKENS})",
                tokens.len()
            )));
        }
        let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let pre = file.str("tokenizer.ggml.pre").unwrap_or("gpt2");
        let mut inner = if model == "llama" {
            sentencepiece_bpe(file, &tokens, &types)?
        } else {
            byte_level_bpe(file, &tokens, pre)?
        };

        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_special_tokens(&special);

        // An id past `u32` is out of the vocabulary, not to be wrapped into it.
        let id_key = |k: &str| {
            file.u64(k)
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|id| (*id as usize) < tokens.len())
        };
        let bos_id = id_key("tokenizer.ggml.bos_token_id");
        let eos_id = id_key("tokenizer.ggml.eos_token_id");
        let mut stop_ids: HashSet<u32> = [
            eos_id,
            id_key("tokenizer.ggml.eot_token_id"),
            id_key("tokenizer.ggml.eom_token_id"),
            id_key("tokenizer.ggml.fim_pad_token_id"),
            id_key("tokenizer.ggml.fim_rep_token_id"),
            id_key("tokenizer.ggml.fim_sep_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == TOKEN_TYPE_CONTROL && is_end_marker(t) {
                stop_ids.insert(i as u32);
            }
        }
        // Files often leave the flag out: SentencePiece (Llama 1 and 2, Mistral) and Llama 3
        // vocabularies start every prompt with BOS, as llama.cpp assumes for them.
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            Some(MetaValue::Bool(flag)) => *flag,
            _ => model == "llama" || is_llama3_family(pre),
        };
        Ok(Self {
            added_ids: added_ids(&inner),
            literal: literal_copy(&inner),
            inner,
            bos_id,
            eos_id,
            stop_ids,
            add_bos,
            chat_template: file.str("tokenizer.chat_template").ok().map(str::to_string),
            size: tokens.len(),
        })
    }

    /// Load an HF folder's tokenizer: `tokenizer.json` through the `tokenizers` crate, special
    /// tokens and the chat template from `tokenizer_config.json`, end-of-sequence ids also from
    /// `generation_config.json` (both optional).
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| lib_err(format!("{}: {e}", path.display())))?;
        // `truncation` and `padding` in tokenizer.json are training-time settings: applied to
        // a prompt they would cut it or pad it with junk ids in silence (and a stride not
        // below the max length panics inside the crate). Prompt length is the engine's to check.
        inner.with_truncation(None).map_err(lib_err)?;
        inner.with_padding(None);
        let config = read_optional_json(&dir.join("tokenizer_config.json"))?;
        let generation = read_optional_json(&dir.join("generation_config.json"))?;
        // Ids need not be dense (a vocabulary with holes, added tokens numbered past it): the
        // rows the model's head must have are the largest id plus one, not the count of
        // distinct strings that `get_vocab_size(true)` gives.
        let size = inner
            .get_vocab(true)
            .into_values()
            .chain(inner.get_added_tokens_decoder().into_keys())
            .max()
            .map_or(0, |max| max as usize + 1);
        // `bos_token` is a string or an AddedToken object with its text in `content`.
        let token_named = |key: &str| {
            let v = config.get(key)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let ids_of = |v: Option<&serde_json::Value>| -> Vec<u32> {
            match v {
                // An id past `u32` is no token's, not one to wrap onto another.
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| u32::try_from(x.as_u64()?).ok())
                    .collect(),
                Some(x) => x
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            }
        };
        let bos_id = token_named("bos_token")
            .or_else(|| ids_of(generation.get("bos_token_id")).first().copied());
        let generation_eos = ids_of(generation.get("eos_token_id"));
        let eos_id = token_named("eos_token").or_else(|| generation_eos.first().copied());
        let mut stop_ids: HashSet<u32> = eos_id.into_iter().chain(generation_eos).collect();
        for (id, added) in inner.get_added_tokens_decoder() {
            if added.special && is_end_marker(&added.content) {
                stop_ids.insert(id);
            }
        }
        stop_ids.retain(|id| (*id as usize) < size);
        // `add_bos_token` when the config says; otherwise whatever the tokenizer's own
        // post-processor does (Llama 3 keeps its BOS there, in a template, and no flag).
        let add_bos = match config.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(flag) => flag,
            None => bos_id.is_some_and(|bos| post_processor_adds(&inner, bos)),
        };
        // `chat_template.jinja` beside the tokenizer (where transformers saves the template
        // now, leaving it out of the config) wins, as in transformers; else the config's: a
        // single template, or a list of named ones of which "default" is the chat one.
        let jinja = dir.join("chat_template.jinja");
        let from_file = match std::fs::read_to_string(&jinja) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(lib_err(format!("{}: {e}", jinja.display()))),
        };
        let chat_template = from_file.or_else(|| match config.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string),
            _ => None,
        });
        Ok(Self {
            added_ids: added_ids(&inner),
            literal: literal_copy(&inner),
            inner,
            bos_id,
            eos_id,
            stop_ids,
            add_bos,
            chat_template,
            size,
        })
    }

    /// The id of a token given its exact text (special tokens such as `<fim_prefix>`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// Token ids of `text`; special-token text such as `<|im_start|>` becomes its single id.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, false)
    }

    /// Token ids of text a user wrote: `<|im_start|>` typed in a message stays ordinary text, so
    /// nobody can open a system turn from inside a chat message.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, true)
    }

    /// Token ids of `text` encoded as one string with special tokens parsed, unless a special
    /// token would come from inside one of `literal` (byte ranges of text a user wrote):
    /// then `None`, and the caller encodes those parts literally on their own. One string is
    /// how the model's own tokenizer sees a rendered chat: encoding it piece by piece can differ
    /// at the seams (a SentencePiece tokenizer starts every piece with its "▁").
    pub fn encode_guarded(
        &self,
        text: &str,
        literal: &[std::ops::Range<usize>],
    ) -> Result<Option<Vec<u32>>, TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(lib_err)?;
        let smuggled =
            encoding
                .get_ids()
                .iter()
                .zip(encoding.get_offsets())
                .any(|(id, &(start, end))| {
                    self.added_ids.contains(id)
                        && literal.iter().any(|r| start < r.end && r.start < end)
                });
        Ok((!smuggled).then(|| encoding.get_ids().to_vec()))
    }

    fn encode_with(&self, text: &str, literal: bool) -> Result<Vec<u32>, TokenizerError> {
        let tokenizer = match literal {
            true => &self.literal,
            false => &self.inner,
        };
        let encoding = tokenizer.encode(text, false).map_err(lib_err)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(lib_err)
    }

    /// The text `ids[state.read..]` add to a streamed decode of `ids`, the tokens generated so
    /// far: empty while they end inside a character (unless `last`, when an unfinished one
    /// shows as U+FFFD, as in a whole decode).
    ///
    /// Decoding the whole answer after every token costs O(n) a token (half a millisecond at
    /// 4000 tokens, more than a small model's step). Instead the tokens since the last piece
    /// are decoded together with the ones of that piece: a decoder sees the context it needs
    /// (SentencePiece drops the "▁" of the first token only), and the new text is what the
    /// longer decode adds to the shorter one.
    pub fn decode_next(
        &self,
        ids: &[u32],
        state: &mut DecodeState,
        last: bool,
    ) -> Result<String, TokenizerError> {
        let new = {
            let tokenizer = &self.inner;
            let before = tokenizer
                .decode(&ids[state.prefix..state.read], true)
                .map_err(lib_err)?;
            let after = tokenizer
                .decode(&ids[state.prefix..], true)
                .map_err(lib_err)?;
            match after.strip_prefix(before.as_str()) {
                Some(new) => new.to_string(),
                // The decoder rewrote text already handed on (byte fallback turns every byte of a
                // run holding a broken character into U+FFFD, the valid ones before it too):
                // what was sent stays, and the new tokens are decoded on their own.
                None => tokenizer
                    .decode(&ids[state.read..], true)
                    .map_err(lib_err)?,
            }
        };
        // Tokens that add nothing yet (special tokens left out, the first bytes of a
        // character) stay in the window, so the next piece is decoded in their context.
        if new.is_empty() || (!last && new.ends_with('\u{FFFD}')) {
            return Ok(String::new());
        }
        state.prefix = state.read;
        state.read = ids.len();
        Ok(new)
    }

    /// The stored text of one token (for diagnostics and templates).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gguf::test_files::{Meta, gguf_file};
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let mut split = PreTokenizedString::from(text);
        pre_tokenizer_for(pre)
            .expect("pre-tokenizer")
            .pre_tokenize(&mut split)
            .expect("pre-tokenize");
        split
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    #[test]
    fn families_named_otherwise_split_text_as_their_base_does() {
        // Qwen splits every digit and keeps "$b" one piece; GPT-2's rule does neither.
        let text = "a $b 2024\n\tx";
        assert_eq!(pieces("deepseek-r1-qwen", text), pieces("qwen2", text));
        assert_ne!(pieces("qwen2", text), pieces("gpt2", text));
        assert_eq!(pieces("falcon3", text), pieces("llama-bpe", text));
        // Every name that takes Llama 3's BOS and whole-word rules splits its way too.
        for name in [
            "llama3",
            "llama-v3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ] {
            assert!(is_llama3_family(name), "{name}");
            assert_eq!(pieces(name, text), pieces("llama-bpe", text), "{name}");
        }
        // Unknown names still load, split GPT-2's way (with a warning).
        assert_eq!(pieces("no-such-family", text), pieces("gpt2", text));
    }

    /// Loads an HF folder holding only `tokenizer.json` with these contents.
    fn hf_tokenizer(name: &str, json: serde_json::Value) -> Result<Tokenizer, TokenizerError> {
        let dir = std::env::temp_dir().join(format!("agentrt-tok-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).expect("write");
        let res = Tokenizer::from_hf_dir(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        res
    }

    /// A word-level tokenizer.json: words split on whitespace, looked up in `vocab`.
    fn word_level(vocab: serde_json::Value, added: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "version": "1.0",
            "added_tokens": added,
            "pre_tokenizer": { "type": "WhitespaceSplit" },
            "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "a" }
        })
    }

    #[test]
    fn truncation_and_padding_in_tokenizer_json_are_not_applied_to_prompts() {
        // Stride 0 would cut the prompt to 2 ids and pad it to 16; stride 5 (not below the
        // max length) panics inside the tokenizers crate.
        for stride in [0, 5] {
            let mut json = word_level(
                serde_json::json!({ "a": 0, "b": 1, "c": 2 }),
                serde_json::json!([]),
            );
            json["truncation"] = serde_json::json!({
                "direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": stride
            });
            json["padding"] = serde_json::json!({
                "strategy": { "Fixed": 16 }, "direction": "Right", "pad_to_multiple_of": null,
                "pad_id": 0, "pad_type_id": 0, "pad_token": "a"
            });
            let t = hf_tokenizer(&format!("trunc{stride}"), json).expect("load");
            assert_eq!(t.encode("a b c a b c").expect("encode"), [0, 1, 2, 0, 1, 2]);
            assert_eq!(t.encode_literal("c b").expect("encode"), [2, 1]);
        }
    }

    #[test]
    fn an_hf_vocabulary_with_holes_is_sized_by_its_largest_id() {
        // Three strings, ids up to 5: six rows, and the end marker at 5 stays a stop id.
        let end = serde_json::json!([{
            "id": 5, "content": "<|im_end|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }]);
        let json = word_level(serde_json::json!({ "a": 0, "b": 1, "<|im_end|>": 5 }), end);
        let t = hf_tokenizer("holes", json).expect("load");
        assert_eq!(t.vocab_size(), 6);
        assert!(t.stop_ids.contains(&5), "{:?}", t.stop_ids);
    }

    /// `ids` fed to [`Tokenizer::decode_next`] one token at a time, the last flagged: the
    /// pieces, each checked to end on a complete character but the last.
    fn streamed_pieces(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut state = DecodeState::default();
        let mut pieces = Vec::new();
        for n in 1..=ids.len() {
            let piece = t
                .decode_next(&ids[..n], &mut state, n == ids.len())
                .expect("decode");
            if n < ids.len() {
                assert!(!piece.ends_with('\u{FFFD}'), "{ids:?} at {n}: {piece:?}");
            }
            pieces.push(piece);
        }
        pieces
    }

    /// Token lists drawn from `vocab` ids by a fixed xorshift sequence.
    fn random_id_lists(vocab: u32, lists: usize, len: usize) -> Vec<Vec<u32>> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..lists)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % u64::from(vocab)) as u32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_streamed_byte_level_decode_adds_up_to_the_whole_decode() {
        let dir =
            std::env::temp_dir().join(format!("agentrt-tok-stream-bl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        super::super::synthetic::build_tokenizer(400)
            .expect("tokenizer")
            .save(dir.join("tokenizer.json"), false)
            .expect("save");
        let t = Tokenizer::from_hf_dir(&dir).expect("load");
        let _ = std::fs::remove_dir_all(&dir);
        let euro = t.encode("a€b").expect("encode");
        // Random ids are mostly broken UTF-8 and include the special tokens a decode leaves
        // out, mid-character too.
        let mut cases = random_id_lists(400, 200, 24);
        cases.push(euro.clone());
        for ids in cases {
            let whole = t.decode(&ids).expect("decode");
            assert_eq!(streamed_pieces(&t, &ids).concat(), whole, "{ids:?}");
        }
        // "€" is three byte tokens: nothing is handed on until its last byte.
        assert!(euro.len() >= 5, "{euro:?}");
        let pieces = streamed_pieces(&t, &euro);
        assert_eq!(pieces[1..euro.len() - 2].concat(), "", "{pieces:?}");
        assert_eq!(pieces[euro.len() - 2], "€");
    }

    #[test]
    fn a_streamed_sentencepiece_decode_keeps_the_spaces_between_pieces() {
        // Llama-2's decoder chain: "▁" to space, byte fallback, fuse, strip one leading space.
        let mut vocab = serde_json::Map::new();
        for (i, token) in ["<unk>", "<s>", "</s>", "▁Hello", "▁world", "!", "▁"]
            .iter()
            .enumerate()
        {
            vocab.insert(token.to_string(), i.into());
        }
        for byte in 0..=255u32 {
            vocab.insert(format!("<0x{byte:02X}>"), (7 + byte).into());
        }
        let special = |id: u32, content: &str| {
            serde_json::json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        };
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": { "type": "Sequence", "normalizers": [
                { "type": "Prepend", "prepend": "▁" },
                { "type": "Replace", "pattern": { "String": " " }, "content": "▁" }
            ]},
            "decoder": { "type": "Sequence", "decoders": [
                { "type": "Replace", "pattern": { "String": "▁" }, "content": " " },
                { "type": "ByteFallback" },
                { "type": "Fuse" },
                { "type": "Strip", "content": " ", "start": 1, "stop": 0 }
            ]},
            "model": { "type": "BPE", "vocab": vocab, "merges": [], "unk_token": "<unk>",
                       "byte_fallback": true, "fuse_unk": true }
        });
        let t = hf_tokenizer("stream-sp", json).expect("load");
        let euro = [7 + 0xE2, 7 + 0x82, 7 + 0xAC];
        let hello_world = [3, 4];
        assert_eq!(streamed_pieces(&t, &hello_world), ["Hello", " world"]);
        // A left-out special token between words, and at the start.
        assert_eq!(streamed_pieces(&t, &[3, 1, 4]).concat(), "Hello world");
        assert_eq!(streamed_pieces(&t, &[1, 4, 5]), ["", "world", "!"]);
        // Random lists of words, special tokens and whole characters spelt in bytes. (Broken
        // characters are left out: a whole decode turns every byte of a run of byte tokens that
        // holds one into U+FFFD, valid ones before it too, where the stream has sent those and
        // keeps them, adding the rest once; see below.)
        let bytes =
            |c: char| -> Vec<u32> { c.to_string().bytes().map(|b| 7 + u32::from(b)).collect() };
        let units: Vec<Vec<u32>> = [vec![1], vec![2], vec![3], vec![4], vec![5], vec![6]]
            .into_iter()
            .chain(['K', 'é', '€', '😀'].map(bytes))
            .collect();
        let mut cases: Vec<Vec<u32>> = random_id_lists(units.len() as u32, 200, 12)
            .into_iter()
            .map(|picks| {
                picks
                    .iter()
                    .flat_map(|&i| units[i as usize].clone())
                    .collect()
            })
            .collect();
        cases.push([&[3][..], &euro, &[4]].concat());
        for ids in cases {
            let whole = t.decode(&ids).expect("decode");
            assert_eq!(streamed_pieces(&t, &ids).concat(), whole, "{ids:?}");
        }
        // A run of byte tokens that breaks after a character was sent: the character stays,
        // nothing is repeated, and the broken bytes follow as U+FFFD.
        let e_acute = [7 + 0xC3, 7 + 0xA9];
        assert_eq!(
            streamed_pieces(&t, &[&e_acute[..], &[7 + 0xE2]].concat()).concat(),
            "é\u{FFFD}"
        );
        assert_eq!(
            streamed_pieces(&t, &[&[3][..], &e_acute, &[7 + 0x80, 4]].concat()).concat(),
            "Helloé\u{FFFD} world"
        );
        // An unfinished character is shown as the whole decode shows it once the answer ends.
        assert_eq!(
            streamed_pieces(&t, &[3, 7 + 0xE2, 7 + 0x82]).concat(),
            "Hello\u{FFFD}\u{FFFD}"
        );
    }

    #[test]
    fn fill_in_the_middle_separators_end_a_generation() {
        let special = |id: u32, content: &str, special: bool| {
            serde_json::json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special
            })
        };
        let added = serde_json::json!([
            special(3, "<|file_sep|>", true),
            special(4, "<|fim_pad|>", true),
            special(5, "<file_sep>", true),
            special(6, "<|repo_name|>", false),
            special(7, "<|fim_middle|>", true),
        ]);
        let vocab = serde_json::json!({
            "a": 0, "b": 1, "c": 2, "<|file_sep|>": 3, "<|fim_pad|>": 4, "<file_sep>": 5,
            "<|repo_name|>": 6, "<|fim_middle|>": 7
        });
        let t = hf_tokenizer("fim-stops", word_level(vocab, added)).expect("load");
        for id in [3, 4, 5] {
            assert!(t.stop_ids.contains(&id), "{id}: {:?}", t.stop_ids);
        }
        // Not marked special (plain text to this model), or the marker a middle starts after.
        for id in [6, 7] {
            assert!(!t.stop_ids.contains(&id), "{id}: {:?}", t.stop_ids);
        }
    }

    #[test]
    fn a_gguf_vocabulary_must_not_be_empty() {
        let file = gguf_file(
            "empty",
            &[
                ("tokenizer.ggml.model", Meta::Str("gpt2")),
                ("tokenizer.ggml.tokens", Meta::Strs(&[])),
                ("tokenizer.ggml.merges", Meta::Strs(&[])),
            ],
        );
        let err = Tokenizer::from_gguf(&file).expect_err("must fail");
        assert!(err.to_string().contains("0 tokens"), "{err}");
    }

    #[test]
    fn a_gguf_sentencepiece_vocabulary_gives_sentencepieces_own_ids() {
        // A byte-fallback BPE trained by SentencePiece as Llama 2's was configured, and the ids
        // SentencePiece gives (tests/fixtures/tokenizer/make_spm_reference.py).
        let reference: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/tokenizer/spm_reference.json"
        ))
        .expect("fixture");
        let strings = |key: &str| -> Vec<String> {
            serde_json::from_value(reference[key].clone()).expect(key)
        };
        let tokens = strings("tokens");
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let scores: Vec<f32> = serde_json::from_value(reference["scores"].clone()).expect("scores");
        let types: Vec<u32> =
            serde_json::from_value(reference["token_type"].clone()).expect("types");
        let id = |key: &str| reference[key].as_u64().expect(key);
        let file = gguf_file(
            "spm",
            &[
                ("tokenizer.ggml.model", Meta::Str("llama")),
                ("tokenizer.ggml.tokens", Meta::Strs(&tokens)),
                ("tokenizer.ggml.scores", Meta::F32s(&scores)),
                ("tokenizer.ggml.token_type", Meta::U32s(&types)),
                ("tokenizer.ggml.bos_token_id", Meta::U64(id("bos_token_id"))),
                ("tokenizer.ggml.eos_token_id", Meta::U64(id("eos_token_id"))),
                ("tokenizer.ggml.add_bos_token", Meta::Bool(true)),
            ],
        );
        let t = Tokenizer::from_gguf(&file).expect("load");
        assert!(t.add_bos);
        assert_eq!(t.bos_id, Some(id("bos_token_id") as u32));
        assert!(t.stop_ids.contains(&(id("eos_token_id") as u32)));
        let cases = reference["cases"].as_array().expect("cases");
        assert!(cases.len() >= 10);
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
            assert_eq!(t.encode(text).expect("encode"), want, "{text:?}");
            assert_eq!(
                t.decode(&want).expect("decode"),
                case["decoded"].as_str().expect("decoded"),
                "{text:?}"
            );
        }
        // The control tokens stay single ids, as in a Llama 2 chat prompt.
        let bos = id("bos_token_id") as u32;
        assert_eq!(t.encode("<s>").expect("encode"), [bos]);
    }

    #[test]
    fn llama3_family_files_take_bos_and_whole_words_unless_they_say_otherwise() {
        let file = |pre: &str, flag: Option<bool>| {
            let mut meta = vec![
                ("tokenizer.ggml.model", Meta::Str("gpt2")),
                ("tokenizer.ggml.pre", Meta::Str(pre)),
                ("tokenizer.ggml.tokens", Meta::Strs(&["a", "b", "ab"])),
                ("tokenizer.ggml.merges", Meta::Strs(&[])),
                ("tokenizer.ggml.bos_token_id", Meta::U64(0)),
            ];
            if let Some(flag) = flag {
                meta.push(("tokenizer.ggml.add_bos_token", Meta::Bool(flag)));
            }
            Tokenizer::from_gguf(&gguf_file(&format!("{pre}-{flag:?}"), &meta)).expect("load")
        };
        let llama3 = file("llama-bpe", None);
        assert!(llama3.add_bos);
        // "ab" is in the vocabulary though no merge makes it.
        assert_eq!(llama3.encode("ab").expect("encode"), [2]);
        assert!(!file("llama-bpe", Some(false)).add_bos);
        let gpt2 = file("gpt2", None);
        assert!(!gpt2.add_bos);
        assert_eq!(gpt2.encode("ab").expect("encode"), [0, 1]);
        assert!(file("gpt2", Some(true)).add_bos);
    }

    #[test]
    fn sentencepiece_files_take_bos_unless_they_say_otherwise() {
        let file = |flag: Option<bool>| {
            let mut meta = vec![
                ("tokenizer.ggml.model", Meta::Str("llama")),
                (
                    "tokenizer.ggml.tokens",
                    Meta::Strs(&["<unk>", "<s>", "</s>", "a"]),
                ),
                ("tokenizer.ggml.scores", Meta::F32s(&[0.0, 0.0, 0.0, -1.0])),
                ("tokenizer.ggml.token_type", Meta::U32s(&[2, 3, 3, 1])),
                ("tokenizer.ggml.bos_token_id", Meta::U64(1)),
                ("tokenizer.ggml.eos_token_id", Meta::U64(2)),
            ];
            if let Some(flag) = flag {
                meta.push(("tokenizer.ggml.add_bos_token", Meta::Bool(flag)));
            }
            Tokenizer::from_gguf(&gguf_file(&format!("spm-bos-{flag:?}"), &meta)).expect("load")
        };
        assert!(file(None).add_bos, "a SentencePiece file without the flag");
        assert!(!file(Some(false)).add_bos);
        assert!(file(Some(true)).add_bos);
    }

    #[test]
    fn a_gguf_token_id_past_u32_is_not_wrapped_into_the_vocabulary() {
        // 2^32 + 1 would wrap to 1, a real token.
        let file = gguf_file(
            "wrap",
            &[
                ("tokenizer.ggml.model", Meta::Str("gpt2")),
                ("tokenizer.ggml.tokens", Meta::Strs(&["a", "b"])),
                ("tokenizer.ggml.merges", Meta::Strs(&[])),
                ("tokenizer.ggml.bos_token_id", Meta::U64((1 << 32) + 1)),
                ("tokenizer.ggml.eos_token_id", Meta::U64(1)),
            ],
        );
        let t = Tokenizer::from_gguf(&file).expect("load");
        assert_eq!(t.bos_id, None);
        assert_eq!(t.eos_id, Some(1));
        assert_eq!(t.vocab_size(), 2);
    }
}
