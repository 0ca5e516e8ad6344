//! The house style guide and the rules that check Python code against it.
//!
//! The guide is a small text file of `key = value` lines (see `house-style.txt`). The rules are
//! line-based — no Python parser in the component — which is enough for the conventions a style
//! guide states: line length, naming, imports, docstrings.

use agentrt_plugin_sdk::{Finding, Severity};

pub const LINE_LENGTH: &str = "house-style/line-length";
pub const NAMING: &str = "house-style/naming";
pub const FORBIDDEN_IMPORT: &str = "house-style/forbidden-import";
pub const DOCSTRING: &str = "house-style/docstring";

/// What the team's guide asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Guide {
    pub max_line_length: usize,
    /// PEP 8 names: snake_case functions, CapWords classes.
    pub pep8_names: bool,
    pub forbidden_imports: Vec<String>,
    pub require_docstrings: bool,
}

impl Default for Guide {
    /// PEP 8's defaults, for when no guide is granted.
    fn default() -> Self {
        Self {
            max_line_length: 79,
            pep8_names: true,
            forbidden_imports: Vec::new(),
            require_docstrings: false,
        }
    }
}

impl Guide {
    /// Parse the guide; an unknown key or a bad value is an error naming its line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut guide = Guide {
            forbidden_imports: Vec::new(),
            ..Guide::default()
        };
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}: {raw:?}", index + 1);
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad("expected key = value"))?;
            let value = value.trim();
            match key.trim() {
                "max-line-length" => {
                    guide.max_line_length = value.parse().map_err(|_| bad("not a number"))?
                }
                "naming" => guide.pep8_names = value == "pep8",
                "forbid-import" => guide.forbidden_imports.push(value.to_string()),
                "require-docstrings" => {
                    guide.require_docstrings = value.parse().map_err(|_| bad("not true/false"))?
                }
                _ => return Err(bad("unknown key")),
            }
        }
        Ok(guide)
    }

    /// Every place `code` departs from the guide.
    pub fn check(&self, code: &str) -> Vec<Finding> {
        let lines: Vec<&str> = code.lines().collect();
        let mut findings = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            let number = index as u32 + 1;
            let length = line.chars().count();
            if length > self.max_line_length {
                findings.push(
                    Finding::new(
                        LINE_LENGTH,
                        Severity::Warning,
                        format!(
                            "line is {length} characters, the guide allows {}",
                            self.max_line_length
                        ),
                    )
                    .at(number, self.max_line_length as u32 + 1),
                );
            }
            let text = line.trim_start();
            let indent = (line.len() - text.len()) as u32 + 1;
            for module in imported_modules(text)
                .into_iter()
                .filter(|module| self.forbidden_imports.iter().any(|f| f == module))
            {
                findings.push(
                    Finding::new(
                        FORBIDDEN_IMPORT,
                        Severity::Error,
                        format!("the guide forbids importing {module}"),
                    )
                    .at(number, indent),
                );
            }
            if let Some(name) = defined(text, "def ") {
                if self.pep8_names && !is_snake_case(name) {
                    findings.push(
                        Finding::new(
                            NAMING,
                            Severity::Warning,
                            format!("function {name} is not snake_case"),
                        )
                        .at(number, indent)
                        .with_suggestion(to_snake_case(name)),
                    );
                }
                if self.require_docstrings
                    && !name.starts_with('_')
                    && !has_docstring(&lines, index)
                {
                    findings.push(
                        Finding::new(
                            DOCSTRING,
                            Severity::Warning,
                            format!("public function {name} has no docstring"),
                        )
                        .at(number, indent),
                    );
                }
            }
            if let Some(name) = defined(text, "class ")
                && self.pep8_names
                && !is_cap_words(name)
            {
                findings.push(
                    Finding::new(
                        NAMING,
                        Severity::Warning,
                        format!("class {name} is not CapWords"),
                    )
                    .at(number, indent),
                );
            }
        }
        findings
    }
}

/// The top-level modules an import line brings in: every one of `import a.b, c as d` (a module
/// listed second is imported just the same), the one of `from x.y import z`.
fn imported_modules(text: &str) -> Vec<&str> {
    let code = text.split('#').next().unwrap_or_default();
    if let Some(rest) = code.strip_prefix("from ") {
        return top_level(rest).into_iter().collect();
    }
    let Some(rest) = code.strip_prefix("import ") else {
        return Vec::new();
    };
    rest.split(',')
        .filter_map(|module| top_level(module.trim_start()))
        .collect()
}

/// The top-level package of a dotted module path (`os` of `os.path as p`).
fn top_level(module: &str) -> Option<&str> {
    module
        .split(|c: char| c == '.' || c.is_whitespace())
        .next()
        .filter(|name| !name.is_empty())
}

/// The name a `def `/`class ` line defines (also `async def`).
fn defined<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let text = text.strip_prefix("async ").unwrap_or(text);
    let rest = text.strip_prefix(keyword)?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(&rest[..end]).filter(|n| !n.is_empty())
}

fn is_snake_case(name: &str) -> bool {
    !name.chars().any(|c| c.is_ascii_uppercase())
}

fn is_cap_words(name: &str) -> bool {
    name.trim_start_matches('_')
        .starts_with(|c: char| c.is_ascii_uppercase())
        && !name.contains('_')
}

fn to_snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether the body of the `def` on line `index` starts with a string literal (the signature
/// may span several lines; it ends at the first line ending in `:`).
fn has_docstring(lines: &[&str], index: usize) -> bool {
    let Some(end) = (index..lines.len()).find(|&i| lines[i].trim_end().ends_with(':')) else {
        return false;
    };
    lines[end + 1..]
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .is_some_and(|l| {
            l.starts_with("\"\"\"")
                || l.starts_with("'''")
                || l.starts_with('"')
                || l.starts_with('\'')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(findings: &[Finding]) -> Vec<(&str, u32)> {
        findings
            .iter()
            .map(|f| (f.rule_id.as_str(), f.line))
            .collect()
    }

    #[test]
    fn the_example_guide_parses() {
        let guide = Guide::parse(include_str!("../house-style.txt")).expect("guide");
        assert_eq!(guide.max_line_length, 88);
        assert_eq!(guide.forbidden_imports, ["pickle", "telnetlib"]);
        assert!(guide.pep8_names && guide.require_docstrings);
        assert!(
            Guide::parse("colour = blue")
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(
            Guide::parse("max-line-length = long")
                .unwrap_err()
                .contains("line 1")
        );
    }

    #[test]
    fn each_rule_reports_its_line() {
        let guide = Guide::parse(
            "max-line-length = 30\nforbid-import = pickle\nrequire-docstrings = true\n",
        )
        .expect("guide");
        let code = "import pickle\n\ndef loadData(path):\n    return pickle.load(open(path, 'rb'))\n\n\
                    def save(x):\n    \"\"\"Save.\"\"\"\n\nclass my_store:\n    pass\n";
        assert_eq!(
            rules(&guide.check(code)),
            [
                (FORBIDDEN_IMPORT, 1),
                (NAMING, 3),
                (DOCSTRING, 3),
                (LINE_LENGTH, 4),
                (NAMING, 9)
            ]
        );
        assert_eq!(
            guide.check(code)[1].suggestion.as_deref(),
            Some("load_data")
        );
    }

    #[test]
    fn every_module_of_a_multi_module_import_is_checked() {
        let guide =
            Guide::parse("forbid-import = pickle\nforbid-import = telnetlib\n").expect("guide");
        let code = "import json, pickle\nimport os.path as p, telnetlib  # remote\n\
                    from json import pickle\nimport json, os\n";
        let findings = guide.check(code);
        assert_eq!(
            rules(&findings),
            [(FORBIDDEN_IMPORT, 1), (FORBIDDEN_IMPORT, 2)]
        );
        assert!(findings[0].message.ends_with("pickle"));
        assert!(findings[1].message.ends_with("telnetlib"));
    }

    #[test]
    fn clean_code_passes() {
        let code = "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n";
        let guide = Guide {
            require_docstrings: true,
            ..Guide::default()
        };
        assert!(guide.check(code).is_empty());
    }
}
