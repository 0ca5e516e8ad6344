//! Reading the model's review: a 1-10 score and one problem per line.
//!
//! Small models rarely follow the requested `SCORE:` / `PROBLEMS:` format exactly: they write
//! `**Score:** 7/10`, `I would rate it 8 out of 10`, numbered lists, or no score at all. The
//! parsers here accept those and return `None` / nothing rather than guessing from noise.

use agentrt_plugin_sdk::Severity;

/// Most problems taken from one answer; small models repeat themselves.
const MAX_PROBLEMS: usize = 5;
/// Longest problem text kept, in characters.
const MAX_PROBLEM_CHARS: usize = 200;

/// What the model said about the code.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Opinion {
    /// Score on a 0-10 scale, when the answer had one.
    pub score: Option<f32>,
    /// Problems it listed, one sentence each.
    pub problems: Vec<String>,
}

/// Read an answer.
pub fn parse(answer: &str) -> Opinion {
    Opinion {
        score: parse_score(answer),
        problems: parse_problems(answer),
    }
}

/// The score in `answer` on a 0-10 scale.
///
/// Looks first for a number after the word `score`, `scored`, `rating`, `rate` or `rated`
/// (`SCORE: 7`, `Rating - 6.5/10`, `rate it 8 out of 10`; a range such as `SCORE (1-10): 9` is
/// skipped; the words inside others, as in "iterates", do not count), then for any `N/10` or
/// `N out of 10`. `N/5` and `N/100` are scaled. A line that starts with the word (after
/// Markdown marks) wins over an earlier mention in prose, such as "returns the highest score in
/// 1 pass", which is not the requested `SCORE:` line.
pub fn parse_score(answer: &str) -> Option<f32> {
    let lower = answer.to_lowercase();
    lower
        .lines()
        .find_map(|line| {
            let line = line.trim_start_matches(|c: char| {
                c.is_whitespace() || matches!(c, '*' | '#' | '-' | '>' | '_')
            });
            keyword_score(line, true)
        })
        .or_else(|| keyword_score(&lower, false))
        .or_else(|| out_of_ten(&lower))
}

/// The number soon after a score keyword in lower-case `text`; with `at_start`, only a keyword
/// that opens `text` counts.
fn keyword_score(text: &str, at_start: bool) -> Option<f32> {
    let letter = |c: Option<char>| c.is_some_and(char::is_alphabetic);
    for keyword in ["score", "scored", "rating", "rate", "rated"] {
        for (at, _) in text.match_indices(keyword) {
            let before = text[..at].chars().next_back();
            let after = &text[at + keyword.len()..];
            if (at_start && at > 0) || letter(before) || letter(after.chars().next()) {
                continue;
            }
            // The number must come soon after the keyword: "score: 7", not a later digit.
            let window: String = after.chars().take(24).collect();
            if let Some(score) = number_after_ranges(&window).and_then(|(n, rest)| scaled(n, rest))
            {
                return Some(score);
            }
        }
    }
    None
}

/// The first `N/10` or `N out of 10` in lower-case `text`.
fn out_of_ten(text: &str) -> Option<f32> {
    let mut rest = text;
    while let Some((number, after)) = first_number(rest) {
        let denominator = after.trim_start();
        if denominator.starts_with("/10") || denominator.starts_with("out of 10") {
            return scaled(number, after);
        }
        rest = after;
    }
    None
}

/// The first number in `text` that is not part of a range like `1-10` (the scale a prompt
/// echoed), and the text after it.
fn number_after_ranges(text: &str) -> Option<(f32, &str)> {
    let mut rest = text;
    loop {
        let (number, after) = first_number(rest)?;
        let upper = after
            .trim_start()
            .strip_prefix(['-', '–'])
            .map(str::trim_start)
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()));
        match upper {
            // Past the range's upper end.
            Some(upper) => rest = first_number(upper)?.1,
            None => return Some((number, after)),
        }
    }
}

/// The first decimal number in `text` and the text after it.
fn first_number(text: &str) -> Option<(f32, &str)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits = &text[start..];
    let mut end = digits
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(digits.len());
    // "7." at the end of a sentence is 7.
    while digits[..end].ends_with('.') {
        end -= 1;
    }
    let number = digits[..end].parse().ok()?;
    Some((number, &digits[end..]))
}

/// `number` on a 0-10 scale, given the text after it (which may hold `/5`, `/100`, `out of 100`).
fn scaled(number: f32, after: &str) -> Option<f32> {
    let after = after.trim_start();
    let denominator = after
        .strip_prefix('/')
        .or_else(|| after.strip_prefix("out of"))
        .map(str::trim_start)
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .and_then(first_number)
        .map(|(denominator, _)| denominator);
    let score = match denominator {
        Some(denominator) if denominator > 0.0 => number / denominator * 10.0,
        Some(_) => return None,
        // "score 85" is out of 100.
        None if number > 10.0 && number <= 100.0 => number / 10.0,
        None => number,
    };
    (0.0..=10.0).contains(&score).then_some(score)
}

/// The problems listed in `answer`: bullet or numbered lines, after a `problems` / `issues`
/// heading when there is one. "None" and score lines are skipped.
pub fn parse_problems(answer: &str) -> Vec<String> {
    let lines: Vec<&str> = answer.lines().collect();
    let heading = lines.iter().position(|line| {
        let lower = line.to_lowercase();
        ["problem", "issue"].iter().any(|word| lower.contains(word)) && item_text(line).is_none()
    });
    let body = match heading {
        Some(at) => {
            let inline = lines[at].split_once(':').map(|(_, rest)| rest.trim());
            let mut body: Vec<&str> = inline.into_iter().filter(|s| !s.is_empty()).collect();
            body.extend(lines[at + 1..].iter().filter_map(|line| item_text(line)));
            body
        }
        None => lines.iter().filter_map(|line| item_text(line)).collect(),
    };
    let mut problems: Vec<String> = Vec::new();
    for item in body {
        // Markdown emphasis adds nothing to a finding's message.
        let item = item.replace("**", "");
        let item = item.trim();
        let lower = item.to_lowercase();
        let is_none = ["none", "no problems", "no issues", "n/a", "nothing"]
            .iter()
            .any(|n| lower.trim_end_matches('.') == *n || lower.starts_with(&format!("{n}.")));
        if item.is_empty() || is_none || lower.starts_with("score") {
            continue;
        }
        let item: String = item.chars().take(MAX_PROBLEM_CHARS).collect();
        if !problems.contains(&item) {
            problems.push(item);
        }
        if problems.len() == MAX_PROBLEMS {
            break;
        }
    }
    problems
}

/// The text of a list item (`- x`, `* x`, `• x`, `1. x`, `1) x`), or `None`.
fn item_text(line: &str) -> Option<&str> {
    let line = line.trim_start();
    for marker in ["- ", "* ", "• "] {
        if let Some(rest) = line.strip_prefix(marker) {
            return Some(rest);
        }
    }
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0 {
        let rest = &line[digits..];
        return rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") "));
    }
    None
}

/// How much a problem the model reported matters: a warning when it sounds like a defect.
pub fn problem_severity(problem: &str) -> Severity {
    let lower = problem.to_lowercase();
    let defect = [
        "bug",
        "error",
        "incorrect",
        "wrong",
        "fail",
        "crash",
        "exception",
        "infinite",
        "security",
        "unsafe",
        "does not",
        "doesn't",
    ];
    if defect.iter().any(|word| lower.contains(word)) {
        Severity::Warning
    } else {
        Severity::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_format() {
        let opinion = parse("SCORE: 7\nPROBLEMS:\n- no docstring\n- fails on empty lists\n");
        assert_eq!(opinion.score, Some(7.0));
        assert_eq!(
            opinion.problems,
            vec!["no docstring", "fails on empty lists"]
        );
    }

    #[test]
    fn scores_in_the_wild() {
        assert_eq!(parse_score("**Score:** 8/10"), Some(8.0));
        assert_eq!(parse_score("Rating - 6.5 out of 10."), Some(6.5));
        assert_eq!(parse_score("I would rate it 9."), Some(9.0));
        assert_eq!(parse_score("Overall this deserves 4/10 at best"), Some(4.0));
        assert_eq!(parse_score("score: 4/5"), Some(8.0));
        assert_eq!(parse_score("Score: 85/100"), Some(8.5));
        assert_eq!(parse_score("score 70"), Some(7.0));
        // The prompt's own scale echoed back, and "rate" inside another word.
        assert_eq!(parse_score("SCORE (1-10): 9"), Some(9.0));
        assert_eq!(parse_score("Score 1–10: 6"), Some(6.0));
        assert_eq!(
            parse_score("It iterates over 2 numbers correctly. 9/10"),
            Some(9.0)
        );
        assert_eq!(parse_score("I rated it 7/10."), Some(7.0));
    }

    #[test]
    fn a_line_starting_with_the_keyword_wins_over_prose() {
        let answer = "The function returns the highest score in 1 pass.\nSCORE: 8";
        assert_eq!(parse_score(answer), Some(8.0));
        assert_eq!(
            parse_score("It rates 2 inputs.\n**Score -** 6/10\n"),
            Some(6.0)
        );
        // Without such a line, the first mention still counts.
        assert_eq!(parse_score("Overall I rate it 7."), Some(7.0));
    }

    #[test]
    fn no_score_is_none() {
        assert_eq!(parse_score("The code looks fine."), None);
        assert_eq!(parse_score("Line 12 has 3 issues"), None);
        assert_eq!(parse_score("score: 900"), None);
        assert_eq!(parse_score(""), None);
    }

    #[test]
    fn problems_without_heading_are_list_items() {
        let problems = parse_problems("The code:\n1. uses a global\n2) misses a check\n* typo\n");
        assert_eq!(problems, vec!["uses a global", "misses a check", "typo"]);
    }

    #[test]
    fn none_and_duplicates_are_skipped() {
        assert!(parse_problems("SCORE: 9\nPROBLEMS:\n- none\n").is_empty());
        assert!(parse_problems("Problems: None.").is_empty());
        let repeated = "Issues:\n- slow\n- slow\n- slow\n";
        assert_eq!(parse_problems(repeated), vec!["slow"]);
    }

    #[test]
    fn markdown_emphasis_is_dropped() {
        let answer = "Some tips:\n1. **Use a loop**: it reads better.\n";
        assert_eq!(parse_problems(answer), vec!["Use a loop: it reads better."]);
    }

    #[test]
    fn inline_problem_after_heading() {
        assert_eq!(
            parse_problems("Problems: division by zero is not handled"),
            vec!["division by zero is not handled"]
        );
    }

    #[test]
    fn at_most_five_problems() {
        let many: String = (0..20).map(|i| format!("- problem {i}\n")).collect();
        assert_eq!(parse_problems(&many).len(), MAX_PROBLEMS);
    }

    #[test]
    fn defects_are_warnings() {
        assert_eq!(
            problem_severity("Fails on negative input"),
            Severity::Warning
        );
        assert_eq!(problem_severity("could use a docstring"), Severity::Info);
    }
}
