//! Chat templates: the Jinja template a model ships with, rendered by minijinja.
//!
//! Templates written for HF `transformers` call Python string methods (`.strip()`,
//! `.startswith()`…) and `raise_exception`; minijinja-contrib's pycompat layer and a small
//! `raise_exception` function make those templates render unchanged.
//!
//! The template comes with the model file, so it is code run on every chat request: rendering
//! is metered (minijinja fuel), the rendered text is capped, and the builtins whose argument
//! sets an allocation size (`indent`, `tojson`'s indent, `batch`, `slice`, format widths) are
//! replaced by versions that refuse absurd sizes instead of aborting the process on a failed
//! allocation. That stops templates that are broken by accident; it does not make a hostile
//! one safe (a string doubled in a loop grows outside the output cap, and filters iterate
//! outside the fuel meter), so a model file is trusted as the operator who installs it is.

use minijinja::value::{Kwargs, Rest, StringInput, ValueKind};
use minijinja::{Environment, ErrorKind, State, Value, context};
use serde::Serialize;
use std::io;

/// Instructions one render may execute. A real template spends a few hundred per message, so
/// this covers conversations of thousands of turns, while nested `range()` loops stop after a
/// fraction of a second instead of holding a request (and its thread) for hours.
const RENDER_FUEL: u64 = 10_000_000;

/// The most text one render may produce. A prompt is tokenized afterwards and must fit the
/// context window; this is far beyond any model's context and bounds the memory a template
/// can make the server hold through its output. It is well above the request body limit
/// (1 MiB), so a conversation too long for the model is refused by the context check
/// (`MODEL_004`, which clients trim history on), not here.
const MAX_RENDER_BYTES: usize = 4 << 20;

/// The widest indent `indent` and `tojson` accept. Real templates indent by 2 or 4; the
/// builtins allocate the indent string before anything else, so `indent(10**14)` would abort.
const MAX_INDENT: usize = 64;

/// The largest count `batch`/`slice` accept, the same bound minijinja puts on `range()`; the
/// builtins reserve `count` slots up front.
const MAX_BATCH: usize = 100_000;

/// The largest number a `format` string may carry (a field width or precision); the
/// formatter pads to the width it is given, so `'%999999999999d'` would abort.
const MAX_FORMAT_NUMBER: u64 = 65_536;

/// One message, in the shape HF chat templates expect.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn too_large(what: &str) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, format!("{what} is too large"))
}

/// No keyword arguments, for calling a builtin whose own were already consumed here.
fn no_kwargs() -> Kwargs {
    std::iter::empty::<(&str, Value)>().collect()
}

/// `indent`, refusing widths past [`MAX_INDENT`] and results past the output cap (the
/// builtin writes `width` spaces per line of the input).
fn bounded_indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let width = match width {
        Some(width) => width,
        None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
    };
    let first = match first {
        Some(first) => Some(first),
        None => kwargs.get::<Option<bool>>("first")?,
    };
    let blank = match blank {
        Some(blank) => Some(blank),
        None => kwargs.get::<Option<bool>>("blank")?,
    };
    kwargs.assert_all_used()?;
    if width > MAX_INDENT {
        return Err(too_large("indent width"));
    }
    let lines = value.as_str().split('\n').count();
    let projected = width
        .checked_mul(lines)
        .and_then(|pad| pad.checked_add(value.as_str().len()));
    if !matches!(projected, Some(n) if n <= MAX_RENDER_BYTES) {
        return Err(too_large("indented text"));
    }
    minijinja::filters::indent(value, Some(width), first, blank, no_kwargs())
}

/// `tojson` as transformers defines it for chat templates: Python's `json.dumps` with
/// `ensure_ascii=False` — separators `", "` and `": "`, insertion order, no HTML escaping (Jinja's
/// own filter escapes `<`, `>`, `&` and `'`, which changes the tool schemas a prompt shows) —
/// taking `indent`, `separators`, `sort_keys` and `ensure_ascii` as keywords (a positional
/// argument is `ensure_ascii`, as in transformers' signature). Indents past [`MAX_INDENT`] and
/// output past the render cap are refused.
fn python_tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let ensure_ascii = match ensure_ascii {
        Some(flag) => flag.is_true(),
        None => kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    let indent = kwargs.get::<Option<Value>>("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => {
            // Python repeats a string of `indent` spaces (nothing for 0 or less).
            let width = i64::try_from(v)?;
            let width = usize::try_from(width.max(0)).unwrap_or(usize::MAX);
            if width > MAX_INDENT {
                return Err(too_large("tojson indent"));
            }
            Some(" ".repeat(width))
        }
    };
    let (item, key) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) => match <[String; 2]>::try_from(pair) {
            Ok([item, key]) => (item, key),
            Err(_) => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson separators must be two strings",
                ));
            }
        },
        // Python drops the space after commas when lines end there.
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let writer = JsonWriter {
        indent,
        item,
        key,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii,
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    writer.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// A float as Python's `repr` (and so `json.dumps`) writes it: the shortest digits that read
/// back the same, positionally from 1e-4 up to 1e16 (with ".0" when whole), else in exponent
/// form with a signed exponent of at least two digits (`1e-05`, `1.5e+16`); the special values
/// by name.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if f == 0.0 || (-4..16).contains(&exponent) {
        let fixed = format!("{f}");
        return if fixed.contains('.') {
            fixed
        } else {
            fixed + ".0"
        };
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
}

/// Writes a value as Python's `json.dumps` does with the settings of [`python_tojson`].
struct JsonWriter {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonWriter {
    fn write(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), minijinja::Error> {
        if out.len() > MAX_RENDER_BYTES {
            return Err(too_large("tojson output"));
        }
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            // Integers of any size as they are; floats as Python's `repr` writes them.
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => out.push_str(&python_float(f64::try_from(value.clone())?)),
            ValueKind::String | ValueKind::Bytes => {
                self.write_string(value.as_str().unwrap_or_default(), out)
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let items = keys
                    .into_iter()
                    .map(|k| {
                        let v = value.get_item(&k)?;
                        Ok((k, v))
                    })
                    .collect::<Result<Vec<_>, minijinja::Error>>()?;
                self.write_container(('{', '}'), items.len(), depth, out, |i, out| {
                    let (k, v) = &items[i];
                    match k.as_str() {
                        Some(text) => self.write_string(text, out),
                        // Python turns other keys into strings.
                        None => self.write_string(&k.to_string(), out),
                    }
                    out.push_str(&self.key);
                    self.write(v, depth + 1, out)
                })?;
            }
            _ => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(('[', ']'), items.len(), depth, out, |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
        }
        Ok(())
    }

    /// `open`, the `len` items `write_item` writes with separators (and, with an indent, one
    /// per line), `close`; empty containers stay `[]`/`{}` as in Python.
    fn write_container(
        &self,
        (open, close): (char, char),
        len: usize,
        depth: usize,
        out: &mut String,
        mut write_item: impl FnMut(usize, &mut String) -> Result<(), minijinja::Error>,
    ) -> Result<(), minijinja::Error> {
        out.push(open);
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item);
            }
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(depth + 1));
            }
            write_item(i, out)?;
        }
        if let (Some(indent), true) = (&self.indent, len > 0) {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    fn write_string(&self, text: &str, out: &mut String) {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

fn bounded_batch(
    state: &State,
    value: Value,
    count: usize,
    fill_with: Option<Value>,
) -> Result<Value, minijinja::Error> {
    if count > MAX_BATCH {
        return Err(too_large("batch count"));
    }
    minijinja::filters::batch(state, value, count, fill_with)
}

fn bounded_slice(
    state: &State,
    value: Value,
    count: usize,
    fill_with: Option<Value>,
) -> Result<Value, minijinja::Error> {
    if count > MAX_BATCH {
        return Err(too_large("slice count"));
    }
    minijinja::filters::slice(state, value, count, fill_with)
}

/// Refuses a format string carrying a number past [`MAX_FORMAT_NUMBER`]. Any digit run
/// counts, literal text included: telling a width from literal text needs the formatter's own
/// parser, and a literal number that large in a chat template's format string is not seen.
fn check_format_string(format: &str) -> Result<(), minijinja::Error> {
    let mut number: u64 = 0;
    for byte in format.bytes().chain(std::iter::once(b' ')) {
        if byte.is_ascii_digit() {
            number = number
                .saturating_mul(10)
                .saturating_add(u64::from(byte - b'0'));
        } else {
            if number > MAX_FORMAT_NUMBER {
                return Err(too_large("format width"));
            }
            number = 0;
        }
    }
    Ok(())
}

/// The `format` filter (printf style), with the width check.
fn bounded_format(
    state: &State,
    format: &Value,
    args: Rest<Value>,
) -> Result<Value, minijinja::Error> {
    if let Some(text) = format.as_str() {
        check_format_string(text)?;
    }
    minijinja::filters::format(state, format, args)
}

/// pycompat's method callback, with the width check on `str.format()`.
fn bounded_methods(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    if method == "format"
        && let Some(text) = value.as_str()
    {
        check_format_string(text)?;
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// The render's output buffer: it fails the write that would take it past
/// [`MAX_RENDER_BYTES`], which aborts the render.
struct CappedOutput {
    buf: Vec<u8>,
    overflowed: bool,
}

impl io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > MAX_RENDER_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("chat template output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compile `source`; `bos`/`eos` are the texts of the model's BOS and EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(bounded_methods);
        env.add_function("raise_exception", raise_exception);
        env.set_fuel(Some(RENDER_FUEL));
        // These replace the builtins of the same name (see the module header).
        env.add_filter("indent", bounded_indent);
        env.add_filter("tojson", python_tojson);
        env.add_filter("batch", bounded_batch);
        env.add_filter("slice", bounded_slice);
        env.add_filter("format", bounded_format);
        // As transformers compiles chat templates: a newline after a block tag and the
        // whitespace before one on its line are not output (templates are written indented,
        // one tag per line, expecting that), and `{% break %}`/`{% continue %}` work.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
        })
    }

    /// Render a conversation, ending with the cue for the assistant's turn.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        let mut out = CappedOutput {
            buf: Vec::new(),
            overflowed: false,
        };
        let rendered = template.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            },
            &mut out,
        );
        if let Err(e) = rendered {
            if out.overflowed {
                return Err(TemplateError(format!(
                    "the rendered prompt exceeds {MAX_RENDER_BYTES} bytes"
                )));
            }
            return Err(TemplateError(e.to_string()));
        }
        // minijinja writes whole `str`s and a refused write is not kept, so this holds.
        String::from_utf8(out.buf).map_err(|e| TemplateError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_a_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").expect("compile");
        let out = t
            .render(&[TemplateMessage {
                role: "user".into(),
                content: "hi".into(),
            }])
            .expect("render");
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(src, "", "").expect("compile");
        let ok = t.render(&[TemplateMessage {
            role: "user".into(),
            content: "  x  ".into(),
        }]);
        assert_eq!(ok.expect("render"), "x");
        let err = t.render(&[TemplateMessage {
            role: "system".into(),
            content: "x".into(),
        }]);
        assert!(
            err.expect_err("must fail")
                .to_string()
                .contains("first must be user")
        );
    }

    fn user(content: &str) -> Vec<TemplateMessage> {
        vec![TemplateMessage {
            role: "user".into(),
            content: content.into(),
        }]
    }

    fn render(src: &str) -> Result<String, TemplateError> {
        ChatTemplate::new(src, "", "")
            .expect("compile")
            .render(&user("hi"))
    }

    #[test]
    fn block_tags_on_their_own_lines_leave_no_blank_lines_as_in_transformers() {
        // TinyLlama-Chat's template: one tag per line, indented. transformers renders it with
        // `trim_blocks` and `lstrip_blocks`.
        let src = "{% for message in messages %}\n    {% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n    {% endif %}\n    {% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, "<s>", "</s>").expect("compile");
        assert_eq!(
            t.render(&user("hi")).expect("render"),
            "<|user|>\nhi</s>\n<|assistant|>\n"
        );
        // Loop controls, which transformers enables, compile and run.
        let src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").expect("compile");
        let two = [user("a"), user("b")].concat();
        assert_eq!(t.render(&two).expect("render"), "a");
    }

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let value = r#"{"b": 1, "a": [1, 2.5, "<x>&'é\n", none, true], "c": {}}"#;
        let with = |args: &str| render(&format!("{{{{ {value} | tojson{args} }}}}"));
        // Insertion order, Python's separators, no HTML escaping, non-ASCII as it is.
        assert_eq!(
            with("").expect("render"),
            r#"{"b": 1, "a": [1, 2.5, "<x>&'é\n", null, true], "c": {}}"#
        );
        assert_eq!(
            with("(indent=2)").expect("render"),
            "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2.5,\n    \"<x>&'é\\n\",\n    null,\n    true\n  ],\n  \"c\": {}\n}"
        );
        assert_eq!(
            with("(sort_keys=true, ensure_ascii=true, separators=[',', ':'])").expect("render"),
            r#"{"a":[1,2.5,"<x>&'\u00e9\n",null,true],"b":1,"c":{}}"#
        );
        // transformers' first positional argument is `ensure_ascii`.
        assert_eq!(
            render("{{ 'é' | tojson(true) }}").expect("render"),
            r#""\u00e9""#
        );
        // Floats and integers as Python writes them.
        let numbers = "{{ [1.0, -0.0, 0.0001, 0.00001, 1.5e-7, 1e15, 1e16, 123456789012345678.0, \
                       12345678901234567890, 'nan' | float, 'inf' | float] | tojson }}";
        assert_eq!(
            render(numbers).expect("render"),
            "[1.0, -0.0, 0.0001, 1e-05, 1.5e-07, 1000000000000000.0, 1e+16, \
             1.2345678901234568e+17, 12345678901234567890, NaN, Infinity]"
        );
        let err = with("(separators=[','])").expect_err("must fail");
        assert!(err.to_string().contains("two strings"), "{err}");
    }

    #[test]
    fn a_huge_indent_width_is_refused_not_allocated() {
        // The builtin would allocate 10^14 spaces before looking at its input.
        let err = render("{{ '' | indent(100000000000000) }}").expect_err("must fail");
        assert!(err.to_string().contains("too large"), "{err}");
        let err = render("{{ 'a' | indent(width=100000000000000) }}").expect_err("must fail");
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn ordinary_indents_render_as_the_builtin_does() {
        assert_eq!(
            render("{{ 'a\nb' | indent(2) }}").expect("render"),
            "a\n  b"
        );
        assert_eq!(
            render("{{ 'a\nb' | indent(width=2, first=true) }}").expect("render"),
            "  a\n  b"
        );
        assert_eq!(render("{{ 'a\nb' | indent }}").expect("render"), "a\n    b");
    }

    #[test]
    fn a_huge_tojson_indent_is_refused() {
        let err = render("{{ messages | tojson(indent=100000000000000) }}").expect_err("must fail");
        assert!(err.to_string().contains("too large"), "{err}");
        // Small widths still work.
        assert_eq!(
            render("{{ [1] | tojson(indent=2) }}").expect("render"),
            "[\n  1\n]"
        );
        assert_eq!(
            render("{{ [1] | tojson(indent=true) }}").expect("render"),
            "[\n 1\n]"
        );
        assert_eq!(render("{{ [1] | tojson }}").expect("render"), "[1]");
    }

    #[test]
    fn huge_batch_slice_and_format_widths_are_refused() {
        for src in [
            "{{ messages | batch(100000000000000) | list }}",
            "{{ messages | slice(100000000000000) | list }}",
            "{{ '%999999999999d' | format(1) }}",
            "{{ '%.999999999999f' | format(1.5) }}",
            "{{ '{:999999999999}'.format(1) }}",
        ] {
            let err = render(src).expect_err(src);
            assert!(err.to_string().contains("too large"), "{src}: {err}");
        }
        assert_eq!(render("{{ '%03d' | format(7) }}").expect("render"), "007");
        assert_eq!(render("{{ '{:>3}'.format(7) }}").expect("render"), "  7");
        assert_eq!(
            render("{{ [1, 2, 3] | batch(2) | list }}").expect("render"),
            "[[1, 2], [3]]"
        );
    }

    #[test]
    fn nested_loops_run_out_of_fuel_instead_of_hanging() {
        // 10^10 iterations without a fuel limit: hours of one request's thread.
        let src =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let err = render(src).expect_err("must fail");
        assert!(err.to_string().contains("fuel"), "{err}");
    }

    #[test]
    fn output_past_the_cap_is_refused() {
        // 8 MiB of output from a short loop.
        let src = "{% for i in range(80000) %}{{ 'x' * 105 }}{% endfor %}";
        let err = render(src).expect_err("must fail");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn a_long_conversation_still_renders() {
        let t = ChatTemplate::new(CHATML, "", "").expect("compile");
        let messages: Vec<TemplateMessage> = (0..5000)
            .map(|i| TemplateMessage {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: format!("message {i}"),
            })
            .collect();
        let out = t.render(&messages).expect("render");
        assert!(out.ends_with("<|im_start|>assistant\n"));
        assert!(out.contains("message 4999"));
    }
}
