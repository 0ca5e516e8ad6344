//! `agentrt eval`: the command around [`crate::eval`] — read and pick the problems, load the
//! pipeline (or only the sandbox, for `--canonical`), resume from the results file, print a
//! line per problem on standard error and the summary at the end.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use super::{CliError, RuntimeOpts, emit, load_engine, load_pipeline};
use crate::error_code::ErrorCode;
use crate::eval::{self, EvalError, ResultsFile, Setting};

/// What `agentrt eval` was asked.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Problems in HumanEval's format, one JSON object per line (task_id, prompt, test,
    /// entry_point, canonical_solution); gzipped files are read as they are; `-`: standard
    /// input. Default: HumanEval's 164, fetched by scripts/setup.sh.
    pub problems: Option<PathBuf>,
    /// Only the first N problems (after --task).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Only this problem (repeatable), by task_id.
    #[arg(long = "task")]
    pub tasks: Vec<String>,
    /// Retries of a run after failures (generation errors or failing generated tests), as
    /// `agentrt run` takes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=2))]
    pub max_retries: u32,
    /// Append each problem's result to this JSON-lines file as it ends; an eval given the same
    /// file again skips the problems it holds (and refuses one written with other settings).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Test the problems' canonical solutions instead of the agents' code: checks the problem
    /// file and the sandbox (no model is loaded); fails (VAL_001) when one does not pass.
    #[arg(long)]
    pub canonical: bool,
}

impl From<EvalError> for CliError {
    fn from(e: EvalError) -> Self {
        CliError::new(e.code, e.message)
    }
}

pub fn run(args: EvalArgs, opts: &RuntimeOpts) -> Result<(), CliError> {
    let path = match &args.problems {
        Some(path) => path.clone(),
        None => {
            let path = crate::paths::humaneval();
            if !path.exists() {
                return Err(CliError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "no problem file named, and HumanEval's is not at {} (scripts/setup.sh \
                         fetches it)",
                        path.display()
                    ),
                ));
            }
            path
        }
    };
    let source = path.display().to_string();
    let bytes = if source == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(&path)
    }
    .map_err(|e| {
        CliError::new(
            ErrorCode::InvalidInput,
            format!("cannot read {source}: {e}"),
        )
    })?;
    let problems = eval::select(
        eval::parse_problems(&bytes, &source)?,
        &args.tasks,
        args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    )?;
    // The results file is opened before the model loads: a wrong path fails at once.
    let mut file = match &args.results {
        Some(results) if results.as_os_str() == "-" => {
            return Err(CliError::new(
                ErrorCode::InvalidInput,
                "--results takes a file to append to and read back, not `-`",
            ));
        }
        Some(results) if same_file(results, &path) => {
            return Err(CliError::new(
                ErrorCode::InvalidInput,
                format!("--results {} is the problem file", results.display()),
            ));
        }
        Some(results) => Some(ResultsFile::open(results)?),
        None => None,
    };

    // Canonical solutions need the sandbox only; the agents need the model and the plugins.
    let (pipeline, setting) = if args.canonical {
        (None, Setting::canonical())
    } else {
        let engine = load_engine(opts)?;
        let model = engine
            .model(None)
            .map_err(|e| CliError::new(e.code(), e.to_string()))?;
        let pipeline = load_pipeline(opts, Some(engine.clone()))?;
        let generator = pipeline.plugins.current().generator.manifest.clone();
        let setting = Setting {
            solutions: "pipeline".into(),
            judge: eval::JUDGE_VERSION,
            max_retries: Some(args.max_retries),
            model: Some(model.info.id.clone()),
            generator: Some(format!("{} {}", generator.name, generator.version)),
            fingerprint: Some(fingerprint(&pipeline, &engine, opts)?),
        };
        (Some(pipeline), setting)
    };
    let sandbox = match pipeline.as_ref().and_then(|p| p.sandbox.clone()) {
        Some(sandbox) => sandbox,
        None => super::default_sandbox(),
    };
    // Without the sandbox every problem would count as failed: that is no measurement. A
    // missing or unusable interpreter is this set-up's to fix, not an agentrt fault.
    let sandbox = sandbox.get().map_err(|why| {
        CliError::new(
            ErrorCode::InvalidInput,
            format!(
                "the Python sandbox cannot run the problems' tests: {why} (scripts/setup.sh \
                 fetches its interpreter; AGENTRT_PYTHON_WASM names another)"
            ),
        )
    })?;

    let done = match file.as_mut() {
        Some(file) => file.results_of(&setting)?,
        None => Vec::new(),
    };
    if !opts.json {
        crate::cli::tell(format_args!(
            "{} problems from {source} ({setting})\n",
            problems.len()
        ));
    }
    let mut from_file = 0;
    let results = eval::evaluate(
        &problems,
        &setting,
        done,
        |problem| match &pipeline {
            None => eval::solve_canonically(sandbox, problem, &setting),
            Some(pipeline) => eval::solve_with_pipeline(pipeline, sandbox, problem, &setting),
        },
        |result, progress| {
            // A problem lost to an outage is not kept: a rerun with the file tries it again.
            if let (Some(file), false) = (file.as_mut(), progress.resumed)
                && !eval::is_outage(result)
            {
                file.append(result)?;
            }
            from_file = progress.from_file;
            if !opts.json {
                // A closed or full stderr must not stop the eval.
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "{}",
                    eval::progress_line(result, progress)
                );
            }
            Ok(())
        },
    )?;
    crate::cli::die_quietly_on_a_closed_pipe();
    let outages = results.iter().filter(|r| eval::is_outage(r)).count();
    if outages > 0 && !opts.json {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{outages} problems failed for an outage (the model server, the sandbox or the \
             store), counted failed here{}",
            if file.is_some() {
                "; they are not in the results file, so a rerun with it tries them again"
            } else {
                ""
            }
        );
    }
    let summary = eval::summarize(&results);
    // Reference solutions are a check of the problems and the sandbox: one failing fails it.
    let failure = (setting.is_canonical() && summary.passed < summary.problems).then(|| {
        CliError::new(
            ErrorCode::ValidationFailed,
            format!(
                "{} of {} reference solutions failed their problem's tests",
                summary.problems - summary.passed,
                summary.problems
            ),
        )
    });
    let mut value = json!({
        "setting": setting,
        "summary": summary,
        "results": results,
    });
    if let Some(e) = &failure {
        // The one JSON document carries the failure too, as the error body's `error`.
        value["error"] = super::error_body(e);
    }
    emit(opts.json, &value, || {
        print!("{}", eval::summary_text(&summary, &setting));
        if from_file > 0 {
            println!("{from_file} of the results from the results file");
        }
    });
    failure.map_or(Ok(()), Err)
}

/// Whether `a` and `b` name one existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// [`Setting::fingerprint`]: the pipeline's attempt selection, every plugin's component, every
/// model, the device, the config.
fn fingerprint(
    pipeline: &crate::pipeline::Pipeline,
    engine: &crate::engine::Engine,
    opts: &RuntimeOpts,
) -> Result<String, CliError> {
    // How the pipeline picks the attempt it keeps is part of what a result measures.
    let mut parts: Vec<Vec<u8>> = vec![
        format!(
            "attempt selection {}",
            crate::pipeline::ATTEMPT_SELECTION_VERSION
        )
        .into_bytes(),
    ];
    for plugin in pipeline.plugins.current().all() {
        let manifest = &plugin.manifest;
        parts.push(
            format!(
                "plugin {} {} {}",
                manifest.name, manifest.version, plugin.sha256
            )
            .into_bytes(),
        );
    }
    for model in engine.models() {
        let info = &model.info;
        // Where its weights are and when they last changed (hashing gigabytes would cost more
        // than the eval): other weights of the same size under the same name are another
        // setting. A remote's address and model name are in `device`.
        let modified = std::fs::metadata(&info.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        parts.push(
            format!(
                "model {} {} {} {} {} {} {modified}",
                info.id,
                info.format,
                info.parameters,
                info.file_bytes,
                info.device,
                info.path.display()
            )
            .into_bytes(),
        );
    }
    if let Some(config) = &opts.config {
        parts.push(std::fs::read(config).map_err(|e| {
            CliError::new(
                ErrorCode::InvalidInput,
                format!("cannot read {}: {e}", config.display()),
            )
        })?);
    }
    Ok(eval::digest(parts.iter().map(Vec::as_slice)))
}
