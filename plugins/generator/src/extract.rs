//! Finding the Python code in a model's answer.
//!
//! Chat models usually answer with Markdown: prose around a ```` ```python ```` fenced block.
//! Small models also forget the language tag, forget to close the fence (the answer was cut at
//! `max-tokens`), or skip the fence altogether. [`python_code`] handles all of these and returns
//! nothing rather than prose when there is no code.

/// A fenced code block.
#[derive(Debug, Clone, PartialEq)]
pub struct FencedBlock {
    /// The info string after the opening fence, lower case (`python`, `py`, or empty).
    pub language: String,
    /// The lines between the fences.
    pub body: String,
}

/// An open fence: its marker, the block's language, the fence's indentation and the lines so far.
type OpenFence<'a> = (&'static str, String, usize, Vec<&'a str>);

/// Every ```` ``` ```` or `~~~` fenced block in `text`, in order. A block left open at the end
/// of the text (a truncated answer) runs to the end. A fence indented (inside a Markdown list
/// item) has its indentation removed from the block's lines, as Markdown does: Python at top
/// level must start at column 0.
pub fn fenced_blocks(text: &str) -> Vec<FencedBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<OpenFence> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                for fence in ["```", "~~~"] {
                    if let Some(info) = trimmed.strip_prefix(fence) {
                        let info = info.trim_start_matches(fence.as_bytes()[0] as char);
                        let language = info.split_whitespace().next().unwrap_or("").to_lowercase();
                        let indent = line[..line.len() - trimmed.len()].chars().count();
                        open = Some((fence, language, indent, Vec::new()));
                        break;
                    }
                }
            }
            Some((fence, language, indent, body)) if trimmed.starts_with(fence) => {
                blocks.push(FencedBlock {
                    language,
                    body: dedent_block(&body, indent),
                });
            }
            Some((fence, language, indent, mut body)) => {
                body.push(line);
                open = Some((fence, language, indent, body));
            }
        }
    }
    if let Some((_, language, indent, body)) = open {
        blocks.push(FencedBlock {
            language,
            body: dedent_block(&body, indent),
        });
    }
    blocks
}

/// A block's lines joined, each without the fence's `indent` — or less, as much as every
/// non-blank line has: a model that indents its fence but writes the code at column 0 keeps
/// the code's own indentation.
fn dedent_block(lines: &[&str], indent: usize) -> String {
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.chars().take_while(|c| c.is_whitespace()).count())
        .min()
        .unwrap_or(0);
    let strip = indent.min(common);
    lines
        .iter()
        .map(|l| dedent(l, strip))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `line` without up to `indent` leading whitespace characters (fewer when it has fewer).
fn dedent(line: &str, indent: usize) -> &str {
    let strip: usize = line
        .chars()
        .take(indent)
        .take_while(|c| c.is_whitespace())
        .map(char::len_utf8)
        .sum();
    &line[strip..]
}

/// Whether a block's info string means Python (an untagged block counts).
fn is_python(language: &str) -> bool {
    matches!(language, "" | "python" | "python3" | "py")
}

/// The Python code in `answer`, or `None` when it holds none.
///
/// Takes the Python (or untagged) fenced blocks joined together; without fences, the text from
/// the first line that starts Python code (`def`, `class`, `import`, `from`, `@`). Prose left
/// around the code is dropped later, when the code is split into statements.
pub fn python_code(answer: &str) -> Option<String> {
    let blocks: Vec<String> = fenced_blocks(answer)
        .into_iter()
        .filter(|block| is_python(&block.language) && !block.body.trim().is_empty())
        .map(|block| block.body)
        .collect();
    let code = if blocks.is_empty() {
        unfenced_code(answer)?
    } else {
        blocks.join("\n\n")
    };
    let code = code.trim_matches('\n').to_owned();
    (!code.trim().is_empty()).then_some(code)
}

/// Code in an answer without fences: from the first line that starts Python code.
fn unfenced_code(answer: &str) -> Option<String> {
    let lines: Vec<&str> = answer.lines().collect();
    let start = lines.iter().position(|line| starts_code(line))?;
    Some(lines[start..].join("\n"))
}

/// Whether `line` opens Python code at top level.
fn starts_code(line: &str) -> bool {
    ["def ", "async def ", "class ", "import ", "from ", "@"]
        .iter()
        .any(|prefix| line.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tagged_block_between_prose() {
        let answer = "Here is the function:\n```python\ndef f():\n    return 1\n```\nIt returns 1.";
        assert_eq!(
            python_code(answer).as_deref(),
            Some("def f():\n    return 1")
        );
    }

    #[test]
    fn accepts_untagged_and_py_blocks_but_not_other_languages() {
        let answer =
            "```bash\npip install x\n```\n```\nimport os\n```\n```py\ndef g():\n    pass\n```";
        assert_eq!(
            python_code(answer).as_deref(),
            Some("import os\n\ndef g():\n    pass")
        );
    }

    #[test]
    fn unclosed_fence_runs_to_the_end() {
        let answer = "```python\ndef f(x):\n    return x * 2";
        assert_eq!(
            python_code(answer).as_deref(),
            Some("def f(x):\n    return x * 2")
        );
    }

    #[test]
    fn indented_and_tilde_fences_work() {
        let answer = "  ```Python\n  def f():\n      pass\n  ```\n~~~\nimport re\n~~~";
        let blocks = fenced_blocks(answer);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].language, "python");
        assert_eq!(blocks[1].body, "import re");
    }

    #[test]
    fn an_indented_fence_loses_its_indentation() {
        let answer =
            "1. The function:\n   ```python\n   def add(a, b):\n       return a + b\n   ```\n";
        assert_eq!(
            python_code(answer).as_deref(),
            Some("def add(a, b):\n    return a + b")
        );
        // A line indented less than its fence keeps what it has.
        assert_eq!(fenced_blocks("  ```\n x = 1\n```")[0].body, "x = 1");
        // Code written at column 0 under an indented fence keeps its own indentation.
        let flush = "    ```python\ndef add(a, b):\n    return a + b\n    ```\n";
        assert_eq!(
            python_code(flush).as_deref(),
            Some("def add(a, b):\n    return a + b")
        );
    }

    #[test]
    fn raw_text_without_fences_starts_at_the_first_definition() {
        let answer = "Sure! Here you go.\ndef add(a, b):\n    return a + b\n";
        assert_eq!(
            python_code(answer).as_deref(),
            Some("def add(a, b):\n    return a + b")
        );
    }

    #[test]
    fn prose_only_gives_nothing() {
        assert_eq!(python_code("I cannot help with that."), None);
        assert_eq!(python_code("```python\n\n```"), None);
        assert_eq!(python_code(""), None);
    }
}
