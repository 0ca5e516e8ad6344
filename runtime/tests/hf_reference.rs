//! GPT-BigCode, Qwen2 and Llama from HF folders (safetensors in F32, F16 and BF16,
//! `tokenizer.json`), on small random-weight checkpoints written by the engine's synthetic
//! writer, against candle's `bigcode`, `qwen2` and `llama` models on the same files: logits
//! within a stated tolerance and the same greedy continuation for 32 tokens.
//!
//! candle computes in f32 with f16/bf16 weights widened at load; we multiply the stored
//! half-precision values directly, so the products are the same up to summation order.

use std::path::{Path, PathBuf};

use agentrt::engine::models::Architecture;
use agentrt::engine::quant::GgmlType;
use agentrt::engine::synthetic::SyntheticSpec;
use agentrt::engine::{LoadedModel, Prompt, sampling::argmax};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bigcode, llama, qwen2};

/// Largest tolerated |ours - candle| relative to the spread of candle's logits.
const TOLERANCE: f32 = 1e-3;
const GREEDY_TOKENS: usize = 32;
const PROMPT: [u32; 7] = [5, 77, 300, 12, 390, 41, 7];

fn spec(arch: Architecture, dtype: GgmlType) -> SyntheticSpec {
    SyntheticSpec {
        arch,
        n_layer: 2,
        dim: 64,
        n_head: 4,
        n_kv_head: if arch == Architecture::GptBigCode {
            1
        } else {
            2
        },
        ffn_dim: 160,
        vocab: 400,
        context: 128,
        dtype,
        separate_head: false,
        seed: 7,
    }
}

fn write(spec: &SyntheticSpec, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentrt-hf-{name}-{}", std::process::id()));
    spec.write(&dir).expect("write checkpoint");
    dir
}

fn var_builder(dir: &Path) -> VarBuilder<'static> {
    // SAFETY: the file was written by this test and is not modified while mapped.
    unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .expect("candle var builder")
}

fn input(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("input")
}

fn to_vec(t: Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("logits")
}

/// Compare ours with a candle forward function `step(ids, position) -> logits`.
fn compare(ours: &LoadedModel, mut step: impl FnMut(&[u32], usize) -> Vec<f32>, label: &str) {
    let want = step(&PROMPT, 0);
    let got = ours.prompt_logits(&PROMPT);
    assert_eq!(want.len(), got.len(), "{label}: vocabulary");
    let spread = want.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - want.iter().cloned().fold(f32::INFINITY, f32::min);
    let err = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{label}: logit spread {spread:.4}, max |ours - candle| {err:.2e}");
    assert!(spread > 0.0, "{label}: degenerate logits");
    assert!(err / spread < TOLERANCE, "{label}: {err} of {spread}");

    let mut theirs = Vec::with_capacity(GREEDY_TOKENS);
    let mut next = argmax(&want);
    for i in 0..GREEDY_TOKENS {
        theirs.push(next);
        next = argmax(&step(&[next], PROMPT.len() + i));
    }
    assert_eq!(
        ours.greedy_tokens(&PROMPT, GREEDY_TOKENS),
        theirs,
        "{label}: greedy"
    );
}

fn check_bigcode(dtype: GgmlType, label: &str) {
    let spec = spec(Architecture::GptBigCode, dtype);
    let dir = write(&spec, label);
    let ours = LoadedModel::load(label, &dir, &mut |_| {}).expect("our load");
    assert_eq!(ours.info.architecture, "gpt_bigcode");
    assert_eq!(ours.info.context_length, 128);
    assert!(ours.info.supports_fim);
    let config = bigcode::Config {
        vocab_size: spec.vocab,
        max_position_embeddings: spec.context,
        num_hidden_layers: spec.n_layer,
        hidden_size: spec.dim,
        layer_norm_epsilon: 1e-5,
        n_inner: Some(spec.ffn_dim),
        num_attention_heads: spec.n_head,
        multi_query: true,
        use_cache: true,
    };
    let mut candle = bigcode::GPTBigCode::load(var_builder(&dir), config).expect("candle load");
    compare(
        &ours,
        |ids, pos| to_vec(candle.forward(&input(ids), pos).expect("candle forward")),
        label,
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn check_qwen2(dtype: GgmlType, label: &str) {
    let spec = spec(Architecture::Qwen2, dtype);
    let dir = write(&spec, label);
    let ours = LoadedModel::load(label, &dir, &mut |_| {}).expect("our load");
    assert_eq!(ours.info.architecture, "qwen2");
    assert!(ours.info.supports_chat);
    let config: qwen2::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("candle config");
    let mut candle = qwen2::ModelForCausalLM::new(&config, var_builder(&dir)).expect("candle load");
    compare(
        &ours,
        |ids, pos| to_vec(candle.forward(&input(ids), pos).expect("candle forward")),
        label,
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn check_llama(dtype: GgmlType, label: &str) {
    let spec = spec(Architecture::Llama, dtype);
    let dir = write(&spec, label);
    let ours = LoadedModel::load(label, &dir, &mut |_| {}).expect("our load");
    assert_eq!(ours.info.architecture, "llama");
    let config: llama::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("candle config");
    let config = config.into_config(false);
    let candle = llama::Llama::load(var_builder(&dir), &config).expect("candle load");
    let mut cache = llama::Cache::new(true, DType::F32, &config, &Device::Cpu).expect("cache");
    compare(
        &ours,
        |ids, pos| {
            to_vec(
                candle
                    .forward(&input(ids), pos, &mut cache)
                    .expect("forward"),
            )
        },
        label,
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn llama_f32_matches_candle() {
    check_llama(GgmlType::F32, "llama-f32");
}

#[test]
fn llama_bf16_matches_candle() {
    check_llama(GgmlType::BF16, "llama-bf16");
}

#[test]
fn gpt_bigcode_f32_matches_candle() {
    check_bigcode(GgmlType::F32, "bigcode-f32");
}

#[test]
fn gpt_bigcode_f16_matches_candle() {
    check_bigcode(GgmlType::F16, "bigcode-f16");
}

#[test]
fn gpt_bigcode_bf16_matches_candle() {
    check_bigcode(GgmlType::BF16, "bigcode-bf16");
}

#[test]
fn qwen2_f32_matches_candle() {
    check_qwen2(GgmlType::F32, "qwen2-f32");
}

#[test]
fn qwen2_f16_matches_candle() {
    check_qwen2(GgmlType::F16, "qwen2-f16");
}

#[test]
fn qwen2_bf16_matches_candle() {
    check_qwen2(GgmlType::BF16, "qwen2-bf16");
}

/// A FIM prompt's ids, its suffix holding `<fim_middle>` typed as code (text, not a control
/// token).
fn fim_with_a_typed_marker(model: &LoadedModel) -> Vec<u32> {
    model
        .tokenize_prompt(&Prompt::Fim {
            prefix: "def f(x):\n    ".into(),
            suffix: "\n    return y <fim_middle>".into(),
        })
        .expect("tokenize")
}

#[test]
fn fill_in_the_middle_prompts_are_prefix_suffix_middle() {
    let dir = write(&spec(Architecture::GptBigCode, GgmlType::F32), "fim");
    let model = LoadedModel::load("fim", &dir, &mut |_| {}).expect("load");
    let id = |t: &str| model.tokenizer.token_id(t).expect("token");
    let ids = fim_with_a_typed_marker(&model);
    let positions: Vec<usize> = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]
        .iter()
        .map(|t| ids.iter().position(|i| *i == id(t)).expect("marker"))
        .collect();
    assert_eq!(positions[0], 0);
    assert!(positions[0] < positions[1] && positions[1] < positions[2]);
    assert_eq!(positions[2], ids.len() - 1);
    assert_eq!(
        ids.iter().filter(|i| **i == id("<fim_middle>")).count(),
        1,
        "a marker in user text must stay text"
    );
    // The end-of-text token ends a FIM generation.
    assert!(model.tokenizer.stop_ids.contains(&id("<|endoftext|>")));
    let _ = std::fs::remove_dir_all(dir);
}

/// Added tokens not marked special (Qwen2.5-Coder's `<|fim_*|>`, `<tool_call>`) typed in user
/// text stay text too: the tokenizers crate would make them control tokens even in literal
/// encoding.
#[test]
fn markers_that_are_added_but_not_special_stay_text_in_user_code() {
    let dir = write(&spec(Architecture::GptBigCode, GgmlType::F32), "fim-plain");
    let path = dir.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    for token in json["added_tokens"].as_array_mut().expect("added tokens") {
        if token["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("<fim_"))
        {
            token["special"] = false.into();
        }
    }
    std::fs::write(&path, json.to_string()).expect("write");
    let model = LoadedModel::load("fim-plain", &dir, &mut |_| {}).expect("load");
    let id = |t: &str| model.tokenizer.token_id(t).expect("token");
    let ids = fim_with_a_typed_marker(&model);
    assert_eq!(
        ids.iter().filter(|i| **i == id("<fim_middle>")).count(),
        1,
        "a marker in user text must stay text: {ids:?}"
    );
    assert_eq!(ids.last(), Some(&id("<fim_middle>")));
    // Encoded as anything else is, where the model's own text holds it.
    assert!(model.tokenizer.encode("<fim_middle>").expect("encode") == [id("<fim_middle>")]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn models_without_fim_tokens_refuse_fim_prompts() {
    let path = agentrt::paths::default_model();
    if !path.is_file() {
        eprintln!(
            "skipped: {} is missing (run scripts/setup.sh)",
            path.display()
        );
        return;
    }
    let model = LoadedModel::load("smollm2", &path, &mut |_| {}).expect("load");
    let err = model
        .tokenize_prompt(&Prompt::Fim {
            prefix: "a".into(),
            suffix: "b".into(),
        })
        .expect_err("no FIM tokens");
    assert_eq!(err.code().as_str(), "VAL_002", "{err}");
}

#[test]
fn broken_hf_folders_are_model_errors() {
    let dir = write(&spec(Architecture::Qwen2, GgmlType::F16), "broken");
    let load = |d: &Path| LoadedModel::load("broken", d, &mut |_| {}).map(|_| ());
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    // Truncated weights, a corrupt header, a missing config, an unknown architecture.
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = load(&dir).expect_err("truncated");
    assert_eq!(err.code().as_str(), "MODEL_001", "{err}");
    let mut corrupt = bytes.clone();
    corrupt[0] = 0xFF;
    corrupt[7] = 0x7F;
    std::fs::write(&weights, &corrupt).expect("corrupt");
    assert_eq!(
        load(&dir).expect_err("corrupt").code().as_str(),
        "MODEL_001"
    );
    std::fs::write(&weights, &bytes).expect("restore");
    load(&dir).expect("restored folder loads");
    let config = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let scaled = config.replacen(
        '{',
        r#"{"rope_scaling": {"rope_type": "llama3", "factor": 8.0},"#,
        1,
    );
    std::fs::write(dir.join("config.json"), scaled).expect("scaled rope");
    let err = load(&dir).expect_err("rope scaling");
    assert!(err.to_string().contains("rope_scaling"), "{err}");
    std::fs::write(dir.join("config.json"), config.replace("qwen2", "mamba")).expect("arch");
    let err = load(&dir).expect_err("unknown architecture");
    assert!(err.to_string().contains("mamba"), "{err}");
    std::fs::remove_file(dir.join("config.json")).expect("remove");
    assert_eq!(
        load(&dir).expect_err("no config").code().as_str(),
        "MODEL_001"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Text arrives in pieces as tokens are produced; a stop sequence that spans tokens is matched
/// across them, never shown in part, and ends the generation.
#[test]
fn streaming_delivers_pieces_and_holds_back_stop_sequences() {
    use agentrt::engine::{Control, FinishReason, SamplingParams};
    let dir = write(&spec(Architecture::GptBigCode, GgmlType::F32), "stream");
    let model = LoadedModel::load("stream", &dir, &mut |_| {}).expect("load");
    let prompt = Prompt::Text("def add(a, b):".into());
    let params = SamplingParams {
        max_tokens: 40,
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    };
    let mut pieces: Vec<String> = Vec::new();
    let full = model
        .generate(&prompt, &params, &Control::default(), &mut |t| {
            pieces.push(t.to_string())
        })
        .expect("generate");
    assert!(
        pieces.len() > 5,
        "text should stream token by token: {pieces:?}"
    );
    assert_eq!(pieces.concat(), full.text);

    // A stop sequence taken from the middle of that (deterministic) text, spanning tokens.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() >= 12, "need some text: {:?}", full.text);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 4].iter().collect();
    let cut = full.text.find(&stop).expect("stop occurs");
    let mut streamed = String::new();
    let stopped = model
        .generate(
            &prompt,
            &SamplingParams {
                stop: vec![stop.clone()],
                ..params.clone()
            },
            &Control::default(),
            &mut |t| streamed.push_str(t),
        )
        .expect("generate with stop");
    assert_eq!(stopped.finish_reason, FinishReason::StopSequence);
    assert_eq!(stopped.text, full.text[..cut]);
    assert_eq!(
        streamed, stopped.text,
        "nothing of the stop sequence was streamed"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Mutation fuzzing of the safetensors path (as `engine_formats` does for GGUF): corrupted
/// headers, lengths and truncations are errors or working models, never panics.
#[test]
fn corrupted_safetensors_are_errors_not_panics() {
    let dir = write(&spec(Architecture::Qwen2, GgmlType::F16), "fuzz");
    let weights = dir.join("model.safetensors");
    let original = std::fs::read(&weights).expect("read");
    let header_len = 8 + u64::from_le_bytes(original[..8].try_into().expect("8 bytes")) as usize;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut loaded, mut refused) = (0, 0);
    for round in 0..200 {
        let mut bytes = original.clone();
        match round % 4 {
            0 => {
                let i = next() as usize % header_len;
                bytes[i] ^= 1 << (next() % 8);
            }
            1 => {
                // Digits in the header's offsets and shapes.
                let i = next() as usize % header_len;
                bytes[i] = b"0123456789"[next() as usize % 10];
            }
            2 => bytes.truncate(next() as usize % bytes.len()),
            _ => {
                let v = [u64::MAX, 1 << 40, 0, 7][next() as usize % 4];
                bytes[..8].copy_from_slice(&v.to_le_bytes());
            }
        }
        std::fs::write(&weights, &bytes).expect("write");
        let outcome =
            std::panic::catch_unwind(|| match LoadedModel::load("fuzz", &dir, &mut |_| {}) {
                Ok(model) => {
                    let _ = model.greedy_tokens(&[1, 2], 2);
                    true
                }
                Err(e) => {
                    assert_eq!(e.code().as_str(), "MODEL_001", "{e}");
                    false
                }
            });
        match outcome {
            Ok(true) => loaded += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("round {round}: a corrupted safetensors file caused a panic"),
        }
    }
    println!("{loaded} mutated files still loaded, {refused} refused");
    assert!(
        refused > 50,
        "most corruptions should be caught, only {refused} were"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A checkpoint split into shards with `model.safetensors.index.json`, as the hub stores
/// larger models, loads and computes exactly what the single file does.
#[test]
fn sharded_checkpoints_load_like_single_files() {
    use safetensors::tensor::TensorView;
    let dir = write(&spec(Architecture::Qwen2, GgmlType::BF16), "single");
    let single = LoadedModel::load("single", &dir, &mut |_| {}).expect("single file");
    let want = single.prompt_logits(&PROMPT);

    let sharded = std::env::temp_dir().join(format!("agentrt-hf-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&sharded).expect("mkdir");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), sharded.join(f)).expect("copy");
    }
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut weight_map = serde_json::Map::new();
    let half = names.len() / 2;
    for (shard, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let views: Vec<(String, TensorView<'_>)> = part
            .iter()
            .map(|n| {
                let t = st.tensor(n).expect("tensor");
                let view = TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).expect("view");
                (n.to_string(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &sharded.join(&file)).expect("shard");
        for n in part.iter() {
            weight_map.insert(n.to_string(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .expect("index");
    let model = LoadedModel::load("sharded", &sharded, &mut |_| {}).expect("sharded load");
    assert_eq!(model.prompt_logits(&PROMPT), want);

    // A shard name that leaves the folder is refused.
    let escaping = index
        .to_string()
        .replace("model-00001-of-00002", "../model-00001-of-00002");
    std::fs::write(sharded.join("model.safetensors.index.json"), escaping).expect("index");
    let err = LoadedModel::load("sharded", &sharded, &mut |_| {}).expect_err("escape");
    assert_eq!(err.code().as_str(), "MODEL_001", "{err}");
    let _ = std::fs::remove_dir_all(sharded);
    let _ = std::fs::remove_dir_all(dir);
}
