//! Test plugin: a well-behaved third-party quality check. It reports one `info` finding,
//! `todo-comment`, per line of code containing `TODO`, at the line and column of the word.
//! The end-to-end tests drop it into a plugin folder to show that swapping checks works.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Severity};

/// The rule this check reports.
pub const RULE: &str = "todo-comment";

/// The plugin type exported to the host.
pub struct EchoCheck;

impl QualityCheck for EchoCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("echo-check", Vec::<String>::new(), [RULE])
    }

    fn check(artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        Ok(todo_findings(&artifact.code))
    }
}

/// One finding per line containing `TODO`; line and column are 1-based, the column counted in
/// characters.
pub fn todo_findings(code: &str) -> Vec<Finding> {
    code.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let at = line.find("TODO")?;
            let column = line[..at].chars().count() + 1;
            Some(
                Finding::new(
                    RULE,
                    Severity::Info,
                    format!("TODO left in code: {}", line.trim()),
                )
                .at(to_u32(index + 1), to_u32(column))
                .with_suggestion("resolve it, or track it outside the code"),
            )
        })
        .collect()
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

agentrt_plugin_sdk::export_plugin!(EchoCheck: quality-check);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_finding_per_todo_line() {
        let code = "def f():\n    # TODO: handle None\n    return 1  # TODO again\nx = 'é TODO'\n";
        let findings = todo_findings(code);
        let positions: Vec<(u32, u32)> = findings.iter().map(|f| (f.line, f.column)).collect();
        assert_eq!(positions, vec![(2, 7), (3, 17), (4, 8)]);
        assert!(
            findings
                .iter()
                .all(|f| f.severity == Severity::Info && f.rule_id == RULE)
        );
    }

    #[test]
    fn clean_code_has_no_findings() {
        assert!(todo_findings("def f():\n    return 1\n").is_empty());
    }
}
