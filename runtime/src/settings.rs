//! The operator's `AGENTRT_*` settings that must have a form — a number of seconds, a count,
//! one of a few words — in one table. Each is read through it, and every command checks them
//! all when it starts ([`check`]), so a value that cannot be used (`AGENTRT_MAX_BATCH=0`,
//! `AGENTRT_REQUEST_TIMEOUT=10m`) is an error naming the variable, not a default taken
//! without a word. An empty value counts as unset, as compose files and unit files often
//! leave one.
//!
//! Paths, URLs, keys and the GPU's tuning knobs (`AGENTRT_CUDA_*`, see docs/GPU.md) are read
//! where they are used.

use std::time::Duration;

/// What a setting's value must be.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// A number of seconds (`2.5`): positive, or also zero where `zero` is allowed.
    Seconds { zero: bool },
    /// A whole number from `least` to `most`.
    Count { least: usize, most: usize },
    /// A number of days, 0 or more (0: for ever).
    Days,
    /// One of these words (any case).
    OneOf(&'static [&'static str]),
}

/// No upper bound for a [`Form::Count`].
const ANY: usize = usize::MAX;

const SETTINGS: &[(&str, Form)] = &[
    ("AGENTRT_REQUEST_TIMEOUT", Form::Seconds { zero: false }),
    ("AGENTRT_BODY_TIMEOUT", Form::Seconds { zero: false }),
    ("AGENTRT_HEADER_TIMEOUT", Form::Seconds { zero: false }),
    ("AGENTRT_STREAM_STALL_SECS", Form::Seconds { zero: false }),
    ("AGENTRT_REMOTE_STALL_SECS", Form::Seconds { zero: false }),
    ("AGENTRT_DRAIN_SECONDS", Form::Seconds { zero: true }),
    (
        "AGENTRT_MAX_BATCH",
        Form::Count {
            least: 1,
            most: ANY,
        },
    ),
    (
        "AGENTRT_GENERATION_QUEUE",
        Form::Count {
            least: 1,
            most: ANY,
        },
    ),
    (
        "AGENTRT_PREFILL_CHUNK",
        Form::Count {
            least: 1,
            most: ANY,
        },
    ),
    (
        "AGENTRT_PREFIX_CACHE_MB",
        Form::Count {
            least: 0,
            most: ANY,
        },
    ),
    (
        "AGENTRT_KV_CACHE_MB",
        Form::Count {
            least: 0,
            most: ANY,
        },
    ),
    (
        "AGENTRT_SYNC_REQUESTS",
        Form::Count {
            least: 1,
            most: ANY,
        },
    ),
    (
        "AGENTRT_RUN_WORKERS",
        Form::Count {
            least: 1,
            most: 1024,
        },
    ),
    (
        "AGENTRT_RUN_QUEUE",
        Form::Count {
            least: 1,
            most: ANY,
        },
    ),
    (
        "AGENTRT_RUN_QUEUE_PER_KEY",
        Form::Count {
            least: 1,
            most: ANY,
        },
    ),
    // Threads and workers past these are a typo, not a machine: each is a thread spawned at start.
    (
        "AGENTRT_THREADS",
        Form::Count {
            least: 1,
            most: 1024,
        },
    ),
    (
        "AGENTRT_PLUGIN_POLL_MS",
        Form::Count {
            least: 1,
            most: ANY,
        },
    ),
    ("AGENTRT_RUN_RETENTION_DAYS", Form::Days),
    ("AGENTRT_KV_CACHE", Form::OneOf(&["f16", "f32"])),
    ("AGENTRT_LOG_FORMAT", Form::OneOf(&["json", "text"])),
    ("AGENTRT_EXIT_WITH_STDIN", Form::OneOf(&["0", "1"])),
    ("AGENTRT_SIMD", Form::OneOf(&["avx2"])),
];

/// The `AGENTRT_*` variables read where they are used (paths, addresses, keys, the GPU's), which
/// with [`SETTINGS`] are every one agentrt reads; a test holds this list to the source.
const READ_ELSEWHERE: &[&str] = &[
    "AGENTRT_API_KEY",
    "AGENTRT_API_KEYS",
    "AGENTRT_API_KEYS_FILE",
    "AGENTRT_CONFIG",
    "AGENTRT_CUDA_CONTEXT",
    "AGENTRT_CUDA_CUBLAS",
    "AGENTRT_CUDA_DEFINES",
    "AGENTRT_CUDA_DEVICE",
    "AGENTRT_CUDA_FUSED",
    "AGENTRT_CUDA_FUSED_BLOCKS",
    "AGENTRT_CUDA_MEMORY_MIB",
    "AGENTRT_CUDA_PDL",
    "AGENTRT_DEVICE",
    "AGENTRT_HOME",
    "AGENTRT_INSTANCE",
    "AGENTRT_LISTEN",
    "AGENTRT_LOG",
    "AGENTRT_MODEL",
    "AGENTRT_PLUGINS",
    "AGENTRT_PYTHON_WASM",
    "AGENTRT_RATE_LIMIT",
    "AGENTRT_REMOTE_API_KEY",
    "AGENTRT_REQUIRE_POSTGRES",
    "AGENTRT_REQUIRE_SIMD",
    "AGENTRT_STORE",
    "AGENTRT_TEST_POSTGRES_URL",
];

/// The variables set in the environment that agentrt does not read but that are one slip
/// from one it does (`AGENTRT_MAXBATCH`), each with the one it is close to: such a setting is
/// otherwise ignored without a word. Names far from every known one are left alone: the
/// project's scripts and benchmarks have variables of their own.
pub fn misspelt() -> Vec<(String, &'static str)> {
    misspelt_among(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()))
}

fn misspelt_among(names: impl Iterator<Item = String>) -> Vec<(String, &'static str)> {
    let known = || {
        SETTINGS
            .iter()
            .map(|(n, _)| *n)
            .chain(READ_ELSEWHERE.iter().copied())
    };
    names
        .filter(|name| name.starts_with("AGENTRT_") && !known().any(|k| k == name))
        .filter_map(|name| {
            let close = known().find(|k| {
                let squashed = |s: &str| s.replace('_', "").to_ascii_uppercase();
                squashed(k) == squashed(&name) || edit_distance(k, &name) <= 2
            })?;
            Some((name, close))
        })
        .collect()
}

/// The Levenshtein distance between `a` and `b` (bytes: the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn form_of(name: &str) -> Form {
    SETTINGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, form)| *form)
        .unwrap_or_else(|| panic!("{name} is not in the settings table"))
}

/// The value of `name`, trimmed; `None` when unset or empty.
fn raw(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A parsed value of any form.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Seconds(Duration),
    Count(usize),
    Days(f64),
    Word(&'static str),
}

fn parse(form: Form, text: &str) -> Result<Value, String> {
    match form {
        Form::Seconds { zero } => crate::server::parse_seconds(text, zero)
            .filter(|d| zero || !d.is_zero())
            .map(Value::Seconds)
            .ok_or_else(|| {
                let least = if zero { "0 or more" } else { "more than 0" };
                format!("a number of seconds, {least} (e.g. 30 or 2.5)")
            }),
        Form::Count { least, most } => text
            .parse::<usize>()
            .ok()
            .filter(|n| (least..=most).contains(n))
            .map(Value::Count)
            .ok_or_else(|| match most {
                ANY => format!("a whole number of at least {least}"),
                _ => format!("a whole number from {least} to {most}"),
            }),
        Form::Days => text
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(Value::Days)
            .ok_or_else(|| "a number of days, 0 or more (0: keep for ever)".to_string()),
        Form::OneOf(words) => words
            .iter()
            .find(|w| w.eq_ignore_ascii_case(text))
            .map(|w| Value::Word(w))
            .ok_or_else(|| format!("one of {}", words.join(", "))),
    }
}

/// `name`'s value when it is set and usable (an unusable one is [`check`]'s error).
fn value(name: &str) -> Option<Value> {
    parse(form_of(name), &raw(name)?).ok()
}

/// The duration setting `name`.
pub fn seconds(name: &str) -> Option<Duration> {
    match value(name)? {
        Value::Seconds(d) => Some(d),
        _ => None,
    }
}

/// The count setting `name`.
pub fn count(name: &str) -> Option<usize> {
    match value(name)? {
        Value::Count(n) => Some(n),
        _ => None,
    }
}

/// The days setting `name`.
pub fn days(name: &str) -> Option<f64> {
    match value(name)? {
        Value::Days(d) => Some(d),
        _ => None,
    }
}

/// The word setting `name`, as the table spells it.
pub fn word(name: &str) -> Option<&'static str> {
    match value(name)? {
        Value::Word(w) => Some(w),
        _ => None,
    }
}

/// Every setting that is set to a value it cannot have, with what it must be; `Ok` when
/// none is.
pub fn check() -> Result<(), String> {
    check_with(raw)
}

fn check_with(get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let problems: Vec<String> = SETTINGS
        .iter()
        .filter_map(|(name, form)| {
            let text = get(name)?;
            parse(*form, &text)
                .err()
                .map(|expected| format!("{name}={text:?}: expected {expected}"))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the environment sets what cannot be used: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_cannot_be_used_are_named_with_what_they_must_be() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let bad = check_with(env(&[
            ("AGENTRT_MAX_BATCH", "0"),
            ("AGENTRT_REQUEST_TIMEOUT", "10m"),
            ("AGENTRT_DRAIN_SECONDS", "-1"),
            ("AGENTRT_KV_CACHE", "f8"),
            ("AGENTRT_RUN_RETENTION_DAYS", "NaN"),
            ("AGENTRT_THREADS", "4"),
        ]))
        .expect_err("refused");
        for expected in [
            "AGENTRT_MAX_BATCH=\"0\": expected a whole number of at least 1",
            "AGENTRT_REQUEST_TIMEOUT=\"10m\": expected a number of seconds, more than 0",
            "AGENTRT_DRAIN_SECONDS=\"-1\": expected a number of seconds, 0 or more",
            "AGENTRT_KV_CACHE=\"f8\": expected one of f16, f32",
            "AGENTRT_RUN_RETENTION_DAYS=\"NaN\"",
        ] {
            assert!(bad.contains(expected), "{expected} not in: {bad}");
        }
        assert!(!bad.contains("AGENTRT_THREADS"), "{bad}");
        let good = check_with(env(&[
            ("AGENTRT_DRAIN_SECONDS", "0"),
            ("AGENTRT_PREFIX_CACHE_MB", "0"),
            ("AGENTRT_LOG_FORMAT", "JSON"),
            ("AGENTRT_REQUEST_TIMEOUT", "2.5"),
            ("AGENTRT_RUN_RETENTION_DAYS", "0"),
        ]));
        assert_eq!(good, Ok(()));
    }

    #[test]
    fn a_variable_one_slip_from_a_known_one_is_named_with_it() {
        let set = [
            "AGENTRT_MAXBATCH",
            "AGENTRT_MAX_BATCH",
            "AGENTRT_REQUST_TIMEOUT",
            "agentrt_store",
            "AGENTRT_BENCH_MODELS",
            "AGENTRT_GPU_STEPS",
            "AGENTRT_REQUIRE_GPU",
            "AGENTRT_TEST_THREADS",
            "PATH",
        ];
        assert_eq!(
            misspelt_among(set.iter().map(|s| s.to_string())),
            [
                ("AGENTRT_MAXBATCH".to_string(), "AGENTRT_MAX_BATCH"),
                (
                    "AGENTRT_REQUST_TIMEOUT".to_string(),
                    "AGENTRT_REQUEST_TIMEOUT"
                ),
            ]
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// Every `AGENTRT_*` name in the runtime's source is one the warning above knows: a
    /// variable added without it would be called a slip of another.
    #[test]
    fn every_variable_the_source_reads_is_known() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("src"), root.join("../kernels/src")];
        let mut unknown = std::collections::BTreeSet::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(
                    std::fs::read_dir(&path)
                        .expect("dir")
                        .map(|e| e.expect("entry").path()),
                );
                continue;
            }
            // This file's names are the lists themselves, and its tests' slips.
            if path.ends_with("settings.rs") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (at, _) in text.match_indices("AGENTRT_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let known = SETTINGS.iter().any(|(n, _)| *n == name)
                    || READ_ELSEWHERE.contains(&name.as_str());
                // `AGENTRT_*` and `AGENTRT_CUDA_*` in prose name families, not variables.
                if !known && !name.ends_with('_') {
                    unknown.insert(name);
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "add to READ_ELSEWHERE or SETTINGS: {unknown:?}"
        );
    }

    #[test]
    fn each_form_parses_what_it_promises() {
        let secs = Form::Seconds { zero: false };
        assert_eq!(
            parse(secs, "2.5"),
            Ok(Value::Seconds(Duration::from_millis(2500)))
        );
        assert!(parse(secs, "0").is_err() && parse(secs, "1e-12").is_err());
        assert_eq!(
            parse(secs, "1e30"),
            Ok(Value::Seconds(crate::server::LONGEST_WAIT))
        );
        assert_eq!(
            parse(Form::Seconds { zero: true }, "0"),
            Ok(Value::Seconds(Duration::ZERO))
        );
        assert_eq!(
            parse(
                Form::Count {
                    least: 0,
                    most: ANY
                },
                "0"
            ),
            Ok(Value::Count(0))
        );
        assert!(
            parse(
                Form::Count {
                    least: 1,
                    most: 1024
                },
                "1025"
            )
            .is_err()
        );
        assert!(
            parse(
                Form::Count {
                    least: 1,
                    most: ANY
                },
                "1.5"
            )
            .is_err()
        );
        assert_eq!(
            parse(Form::OneOf(&["json", "text"]), "Text"),
            Ok(Value::Word("text"))
        );
    }
}
