//! Language names as the runtime compares them: one lower-case name per language, whatever
//! alias a request, a generator's answer or a quality check's `describe()` used (`py`,
//! `Python3`, `js`, `c++`), and the language a source file's extension says it is in.
//!
//! Without this, a generator that labels its code `py` would have it skipped by every check
//! that understands `python`, and its tests never run.

/// The language the runtime runs tests in, and the default for every request.
pub const PYTHON: &str = "python";

/// The name `name` is known by: an alias becomes its language's name, anything else is kept,
/// trimmed and lower-cased (a language this table does not know still matches itself).
pub fn canonical(name: &str) -> String {
    let lower = name.trim().to_lowercase();
    let known = match lower.as_str() {
        "py" | "pyi" | "py3" | "python3" | "cpython" => PYTHON,
        "js" | "jsx" | "mjs" | "cjs" | "node" | "nodejs" | "node.js" | "ecmascript" => "javascript",
        "ts" | "tsx" => "typescript",
        "rs" => "rust",
        "golang" => "go",
        "c++" | "cxx" | "cc" | "hpp" => "cpp",
        "c#" | "cs" => "csharp",
        "rb" => "ruby",
        "sh" | "bash" => "shell",
        _ => return lower,
    };
    known.to_owned()
}

/// The language a source file's extension says it is in, for the common ones.
pub fn of_file(file: &std::path::Path) -> Option<&'static str> {
    let extension = file.extension()?.to_str()?.to_ascii_lowercase();
    Some(match extension.as_str() {
        "py" | "pyi" => PYTHON,
        "js" | "mjs" | "cjs" | "jsx" => "javascript",
        "ts" | "tsx" => "typescript",
        "rs" => "rust",
        "go" => "go",
        "java" => "java",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" => "cpp",
        "cs" => "csharp",
        "rb" => "ruby",
        "sh" | "bash" => "shell",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn aliases_become_one_name_and_unknown_names_match_themselves() {
        for alias in ["py", "Python", " python3 ", "PY3", "cpython"] {
            assert_eq!(canonical(alias), "python", "{alias}");
        }
        assert_eq!(canonical("JS"), "javascript");
        assert_eq!(canonical("Node.js"), "javascript");
        assert_eq!(canonical("C++"), "cpp");
        assert_eq!(canonical("bash"), "shell");
        assert_eq!(canonical("  Haskell "), "haskell");
        assert_eq!(canonical(""), "");
    }

    #[test]
    fn every_extension_names_a_canonical_language() {
        for file in [
            "a.py", "b.PYI", "c.tsx", "d.hpp", "e.cs", "f.sh", "g.mjs", "h.go",
        ] {
            let language = of_file(Path::new(file)).expect(file);
            assert_eq!(canonical(language), language, "{file}");
            // The extension itself, given as a language, is that language too.
            let extension = file.rsplit('.').next().expect("extension");
            assert_eq!(canonical(extension), language, "{file}");
        }
        assert_eq!(of_file(Path::new("notes.txt")), None);
        assert_eq!(of_file(Path::new("Makefile")), None);
    }
}
