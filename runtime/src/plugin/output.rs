//! Limits on what a plugin hands back to the host.
//!
//! Results are lifted out of the guest's memory, which the memory cap already bounds; these
//! limits keep one plugin from inflating responses, logs and statistics far beyond that (every
//! result is copied into reports and JSON), and reject values that break the WIT's promises.
//! Texts meant for people (rule ids, messages, suggestions, summaries, names) have their
//! control characters blanked: they reach terminals (`agentrt check` prints findings as
//! compilers do) and logs, where an escape sequence or a carriage return from a third-party
//! check would rewrite the screen or hide a finding. Messages, suggestions and summaries keep
//! their line breaks and tabs; one-line texts lose them too.

use super::bindings::{CheckInfo, CodeArtifact, Finding, PipelineError, Recovery, Review};

/// Most findings one check or review may report.
pub const MAX_FINDINGS: usize = 1000;
/// Largest code, tests or review summary, in bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Largest finding message, suggestion or rule id, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest error code kept from a plugin.
pub const MAX_CODE_BYTES: usize = 64;
/// Largest feedback an error handler may send the generator back with (it goes into a prompt).
pub const MAX_FEEDBACK_BYTES: usize = 16 * 1024;

fn too_long(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!(
            "{what} is {len} bytes, more than the {max} allowed"
        ));
    }
    Ok(())
}

fn too_many(what: &str, count: usize, max: usize) -> Result<(), String> {
    if count > max {
        return Err(format!("{count} {what}, more than the {max} allowed"));
    }
    Ok(())
}

/// Blank `s`'s control characters (a space each), line breaks and tabs too unless
/// `keep_lines`: what a plugin hands over for terminals and logs. Unicode's line and paragraph
/// separators count as line breaks (some viewers break lines there), and its bidirectional
/// overrides and isolates as controls (they reorder how the rest of a line reads).
pub(super) fn blank_controls(s: &mut String, keep_lines: bool) {
    let blanked = |c: char| {
        let kept = keep_lines && (c == '\n' || c == '\t');
        let unsafe_format = matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        (c.is_control() || unsafe_format) && !kept
    };
    if s.chars().any(blanked) {
        *s = s
            .chars()
            .map(|c| if blanked(c) { ' ' } else { c })
            .collect();
    }
}

/// A generator's code and tests are kept as written (source may hold a form feed); only its
/// language, a one-word name, is blanked.
pub fn check_artifact(a: &mut CodeArtifact) -> Result<(), String> {
    too_long("code", a.code.len(), MAX_TEXT_BYTES)?;
    too_long("tests", a.tests.len(), MAX_TEXT_BYTES)?;
    too_long("language", a.language.len(), MAX_CODE_BYTES)?;
    blank_controls(&mut a.language, false);
    Ok(())
}

pub fn check_findings(findings: &mut [Finding]) -> Result<(), String> {
    too_many("findings", findings.len(), MAX_FINDINGS)?;
    for f in findings {
        too_long("a rule id", f.rule_id.len(), MAX_CODE_BYTES)?;
        too_long("a finding message", f.message.len(), MAX_MESSAGE_BYTES)?;
        too_long(
            "a suggestion",
            f.suggestion.as_ref().map_or(0, String::len),
            MAX_MESSAGE_BYTES,
        )?;
        blank_controls(&mut f.rule_id, false);
        blank_controls(&mut f.message, true);
        if let Some(suggestion) = &mut f.suggestion {
            blank_controls(suggestion, true);
        }
    }
    Ok(())
}

/// Most languages a quality check may name in its `describe`.
pub const MAX_CHECK_LANGUAGES: usize = 64;

pub fn check_info(info: &mut CheckInfo) -> Result<(), String> {
    too_long("its name", info.name.len(), MAX_MESSAGE_BYTES)?;
    too_many("languages", info.languages.len(), MAX_CHECK_LANGUAGES)?;
    too_many("rules", info.rules.len(), MAX_FINDINGS)?;
    for language in &info.languages {
        too_long("a language", language.len(), MAX_CODE_BYTES)?;
    }
    for rule in &info.rules {
        too_long("a rule id", rule.len(), MAX_CODE_BYTES)?;
    }
    blank_controls(&mut info.name, false);
    for text in info.languages.iter_mut().chain(info.rules.iter_mut()) {
        blank_controls(text, false);
    }
    Ok(())
}

pub fn check_review(r: &mut Review) -> Result<(), String> {
    if !(0.0..=10.0).contains(&r.score) {
        return Err(format!("score {} is outside 0..=10", r.score));
    }
    too_long("the summary", r.summary.len(), MAX_TEXT_BYTES)?;
    blank_controls(&mut r.summary, true);
    check_findings(&mut r.findings)
}

pub(crate) fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The code a plugin's error gets when the one it gave is unusable: empty, or one only the
/// host may give.
pub const PLUGIN_ERROR_CODE: &str = "PLUGIN_ERROR";

/// The codes of the host's refusals of a model call, which tell a client about its request or
/// the server: model access denied (`403`), a token budget spent (`429` with `Retry-After`),
/// the request cancelled (`408`, and a run counted cancelled), no such model or it is down
/// (`503`: a client or a load balancer takes the server for unavailable), the prompt too long
/// for the context, the plugin's deadline passed during the call (`504`; the SDK's code for
/// it). A plugin may pass one on only when the host gave it that refusal in the same call
/// ([`relayable`]).
pub const RELAYED_ONLY: [&str; 6] = [
    "PLUGIN_006",
    "PLUGIN_007",
    "COMM_004",
    "MODEL_001",
    "MODEL_004",
    "PLUGIN_004",
];

/// The code of `refusal`, given by the host to a plugin, that the plugin may then return as
/// its own error (see [`RELAYED_ONLY`]).
pub fn relayable(refusal: &super::bindings::llm::Error) -> Option<&'static str> {
    use super::bindings::llm::Error;
    match refusal {
        Error::AccessDenied(_) => Some("PLUGIN_006"),
        Error::QuotaExceeded(_) => Some("PLUGIN_007"),
        Error::Cancelled => Some("COMM_004"),
        Error::ModelNotSupported(_) => Some("MODEL_001"),
        Error::ContextOverflow(_) => Some("MODEL_004"),
        Error::Timeout => Some("PLUGIN_004"),
        Error::InvalidInput(_) | Error::RuntimeError(_) => None,
    }
}

/// A plugin's own error, clipped to sane sizes (the code ends up as a statistics key).
///
/// A plugin may relay the host's model, generation, review, plugin, timeout and cancellation
/// codes, and name codes of its own, but not claim one of the codes that tell a client
/// something about the server or its credentials: `AUTH_*` would answer `401` (the client
/// drops its key), `QUEUE_001` a `429` with `Retry-After` (it backs off), `STORE_001`,
/// `RUN_*`, `INTERNAL`... an outage of the host; nor one of [`RELAYED_ONLY`] unless the host
/// gave it that refusal in this call (`relayed`). Such a code becomes [`PLUGIN_ERROR_CODE`]
/// (a `502`), and the message keeps what the plugin said.
pub fn clip_error(mut e: PipelineError, relayed: &[&str]) -> PipelineError {
    e.code.retain(|c| c.is_ascii_alphanumeric() || c == '_');
    clip(&mut e.code, MAX_CODE_BYTES);
    let unearned = RELAYED_ONLY.contains(&e.code.as_str()) && !relayed.contains(&e.code.as_str());
    if e.code.is_empty() {
        e.code = PLUGIN_ERROR_CODE.into();
    } else if unearned
        || crate::error_code::ErrorCode::parse(&e.code).is_some_and(|c| !plugin_may_give(c))
    {
        e.message = format!("{}: {}", e.code, e.message);
        e.code = PLUGIN_ERROR_CODE.into();
    }
    clip(&mut e.message, MAX_MESSAGE_BYTES);
    blank_controls(&mut e.message, true);
    e
}

/// Whether a plugin may return `code` as its own error (see [`clip_error`]).
fn plugin_may_give(code: crate::error_code::ErrorCode) -> bool {
    use crate::error_code::ErrorCode;
    // The host's own verdicts, on plugins and on requests: a plugin that is running was found
    // and loaded, did not trap, is within its memory cap and has fuel left, and what it
    // returns is judged by the host; the model's timeouts and allocation failures and the
    // request's deadline are the host's to see. Any of these from a plugin would send the
    // operator looking in the wrong place (and COMM_003 and MODEL_002 answer 504). It may pass
    // on the `llm` interface's refusals it was given ([`RELAYED_ONLY`]).
    if matches!(
        code,
        ErrorCode::PluginNotFound
            | ErrorCode::PluginLoad
            | ErrorCode::PluginTrap
            | ErrorCode::PluginMemory
            | ErrorCode::PluginOutput
            | ErrorCode::PluginFuel
            | ErrorCode::ModelTimeout
            | ErrorCode::ModelMemory
            | ErrorCode::RequestTimeout
    ) {
        return false;
    }
    matches!(
        code.kind(),
        "model_error"
            | "generation_error"
            | "review_error"
            | "plugin_error"
            | "timeout_error"
            | "cancelled"
            | "validation_error"
    )
}

/// An error handler's decision with its texts clipped: the feedback goes into the generator's
/// prompt, the reasons into reports, events and logs.
pub fn clip_recovery(recovery: Recovery) -> Recovery {
    match recovery {
        Recovery::Retry(mut plan) => {
            if let Some(feedback) = &mut plan.feedback {
                clip(feedback, MAX_FEEDBACK_BYTES);
                blank_controls(feedback, true);
            }
            Recovery::Retry(plan)
        }
        Recovery::Fallback(mut why) => {
            clip(&mut why, MAX_MESSAGE_BYTES);
            blank_controls(&mut why, true);
            Recovery::Fallback(why)
        }
        Recovery::Abort(mut why) => {
            clip(&mut why, MAX_MESSAGE_BYTES);
            blank_controls(&mut why, true);
            Recovery::Abort(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::{RetryPlan, Severity, Stage, Verdict};

    #[test]
    fn a_check_describes_itself_within_bounds_and_covers_what_it_names() {
        let info = |languages: Vec<&str>, rules: usize| CheckInfo {
            name: "c".into(),
            languages: languages.into_iter().map(String::from).collect(),
            rules: (0..rules).map(|i| format!("c/{i}")).collect(),
        };
        assert!(check_info(&mut info(vec!["python"], MAX_FINDINGS)).is_ok());
        assert!(check_info(&mut info(vec![], MAX_FINDINGS + 1)).is_err());
        assert!(check_info(&mut info(vec!["x"; MAX_CHECK_LANGUAGES + 1], 0)).is_err());
        assert!(check_info(&mut info(vec![&"y".repeat(MAX_CODE_BYTES + 1)], 0)).is_err());
        let mut sly = info(vec!["py\u{1b}[2K"], 0);
        sly.name = "c\r\nforged".into();
        check_info(&mut sly).expect("blanked, not refused");
        assert_eq!(
            (sly.name.as_str(), sly.languages[0].as_str()),
            ("c  forged", "py [2K")
        );

        let python = crate::plugin::CheckScope::of(info(vec![" Python ", "python"], 1));
        assert_eq!(python.languages, ["python"]);
        assert!(python.covers("python") && python.covers("PYTHON"));
        assert!(!python.covers("javascript"));
        // Aliases on either side are the language they stand for.
        assert!(python.covers("py") && python.covers(" Python3"));
        let js = crate::plugin::CheckScope::of(info(vec!["JS", "node"], 0));
        assert_eq!(js.languages, ["javascript"]);
        assert!(js.covers("javascript") && js.covers("Node.js") && !js.covers("py"));
        // Code of no stated language is for every check; a check naming none takes any code.
        assert!(python.covers(""));
        assert!(crate::plugin::CheckScope::of(info(vec![], 0)).covers("javascript"));
        // Code to check is Python unless said otherwise, even said as blanks; another
        // language needs a check that understands it.
        let language = |given| crate::plugin::language_for_checks(given, &[]);
        assert_eq!(language(None).as_deref(), Ok("python"));
        assert_eq!(language(Some(" ")).as_deref(), Ok("python"));
        assert_eq!(language(Some("Python")).as_deref(), Ok("python"));
        assert_eq!(language(Some("py")).as_deref(), Ok("python"));
        let refused = language(Some("rust")).expect_err("no check for rust");
        assert!(refused.contains("\"rust\"") && refused.contains("understand: python"));
    }

    #[test]
    fn rejects_oversized_and_out_of_range_results() {
        let f = Finding {
            rule_id: "r".into(),
            severity: Severity::Info,
            message: "m".into(),
            line: 1,
            column: 1,
            suggestion: None,
        };
        assert!(check_findings(&mut vec![f.clone(); MAX_FINDINGS]).is_ok());
        assert!(check_findings(&mut vec![f.clone(); MAX_FINDINGS + 1]).is_err());
        let review = |score| Review {
            verdict: Verdict::Approve,
            score,
            summary: String::new(),
            findings: vec![],
        };
        assert!(check_review(&mut review(10.0)).is_ok());
        assert!(check_review(&mut review(f32::NAN)).is_err());
        assert!(check_review(&mut review(11.0)).is_err());
        let mut big = CodeArtifact {
            language: "python".into(),
            code: "x".repeat(MAX_TEXT_BYTES + 1),
            tests: String::new(),
        };
        assert!(check_artifact(&mut big).is_err());
    }

    #[test]
    fn texts_for_people_lose_the_control_characters_that_drive_terminals() {
        let mut findings = vec![Finding {
            rule_id: "evil\u{1b}[2K\rx\nfake.py:9:9: error".into(),
            severity: Severity::Info,
            message: "hidden\u{1b}[1A\u{7}\r\nsecond line\tkept".into(),
            line: 1,
            column: 1,
            suggestion: Some("x = 1\u{1b}]0;TITLE\u{7}\n".into()),
        }];
        check_findings(&mut findings).expect("blanked, not refused");
        let f = &findings[0];
        assert_eq!(f.rule_id, "evil [2K x fake.py:9:9: error");
        assert_eq!(f.message, "hidden [1A  \nsecond line\tkept");
        assert_eq!(f.suggestion.as_deref(), Some("x = 1 ]0;TITLE \n"));
        let mut review = Review {
            verdict: Verdict::Approve,
            score: 5.0,
            summary: "ok\u{1b}[31m\nnext".into(),
            findings,
        };
        check_review(&mut review).expect("review");
        assert_eq!(review.summary, "ok [31m\nnext");
        // Unicode's line separators and reordering marks go too; other non-ASCII text stays.
        let mut text = "a\u{2028}b\u{2029}c\u{202E}d\u{2067}e é ✓".to_string();
        blank_controls(&mut text, true);
        assert_eq!(text, "a b c d e é ✓");
        // Code is kept as written.
        let mut code = CodeArtifact {
            language: "python\n".into(),
            code: "x = 1\u{c}\r\n".into(),
            tests: String::new(),
        };
        check_artifact(&mut code).expect("artifact");
        assert_eq!(
            (code.language.as_str(), code.code.as_str()),
            ("python ", "x = 1\u{c}\r\n")
        );
    }

    #[test]
    fn an_error_handlers_texts_are_clipped() {
        let Recovery::Retry(plan) = clip_recovery(Recovery::Retry(RetryPlan {
            delay_ms: 0,
            feedback: Some("é".repeat(MAX_FEEDBACK_BYTES)),
        })) else {
            unreachable!()
        };
        let feedback = plan.feedback.expect("feedback");
        assert!(feedback.len() <= MAX_FEEDBACK_BYTES && feedback.starts_with('é'));
        let Recovery::Abort(why) = clip_recovery(Recovery::Abort("x".repeat(1 << 20))) else {
            unreachable!()
        };
        assert_eq!(why.len(), MAX_MESSAGE_BYTES);
    }

    #[test]
    fn plugin_error_codes_are_cleaned() {
        let e = clip_error(
            PipelineError {
                code: "GEN_003\n<script>".repeat(20),
                message: "é".repeat(5000),
                stage: Stage::Generate,
                attempt: 1,
            },
            &[],
        );
        assert!(
            e.code.len() <= MAX_CODE_BYTES
                && e.code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
        );
        assert!(e.message.len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn a_plugin_cannot_claim_the_hosts_own_codes() {
        let returned_after = |code: &str, relayed: &[&str]| {
            clip_error(
                PipelineError {
                    code: code.into(),
                    message: "forged".into(),
                    stage: Stage::Review,
                    attempt: 1,
                },
                relayed,
            )
        };
        let returned = |code: &str| returned_after(code, &[]);
        for host_only in [
            "AUTH_001",
            "AUTH_002",
            "AUTH_003",
            "QUEUE_001",
            "STORE_001",
            "RUN_002",
            "INTERNAL",
            "PLUGIN_001",
            "PLUGIN_002",
            "PLUGIN_003",
            "PLUGIN_005",
            "PLUGIN_008",
            "PLUGIN_009",
            "MODEL_002",
            "MODEL_003",
            "COMM_003",
        ] {
            let e = returned(host_only);
            assert_eq!(e.code, PLUGIN_ERROR_CODE, "{host_only}");
            assert_eq!(e.message, format!("{host_only}: forged"));
        }
        // The stages' codes, a client's input judged invalid, and codes of their own stay as
        // they are.
        for relayed in ["GEN_003", "REV_001", "REV_003", "VAL_002", "MY_001"] {
            let e = returned(relayed);
            assert_eq!((e.code.as_str(), e.message.as_str()), (relayed, "forged"));
        }
        // A refusal of a model call (403, 429, cancelled, no model, too long, out of time) only
        // when the host refused this call so.
        for code in RELAYED_ONLY {
            let e = returned(code);
            assert_eq!(e.code, PLUGIN_ERROR_CODE, "{code}");
            let e = returned_after(code, &["PLUGIN_007", code]);
            assert_eq!(e.code, code);
        }
        assert_eq!(
            returned_after("PLUGIN_006", &["PLUGIN_007"]).code,
            PLUGIN_ERROR_CODE
        );
    }
}
