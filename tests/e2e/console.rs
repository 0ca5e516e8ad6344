//! The web console, end to end in headless Chromium: `tests/console/console.test.cjs` submits a
//! task, follows the run live, opens it again from the history, and looks at the plugins and
//! statistics. Screenshots go to the test's output folder only.
//!
//! Needs node, Debian's chromium and playwright-core (`scripts/test.sh` installs them and sets
//! `AGENTRT_REQUIRE_BROWSER=1`, so there a missing piece fails rather than skips).

use std::path::PathBuf;
use std::process::Command;

use super::harness::{Server, repo_root};

fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("AGENTRT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.is_file() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    let playwright = std::env::var_os("AGENTRT_PLAYWRIGHT")
        .map(PathBuf::from)
        .ok_or("AGENTRT_PLAYWRIGHT does not name the playwright-core package")?;
    if !playwright.join("package.json").is_file() {
        return Err(format!("no playwright-core at {}", playwright.display()));
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        return Err("node is not installed".into());
    }
    Ok((chromium, playwright))
}

#[test]
fn the_console_runs_a_task_live_and_reopens_it_from_the_history() {
    let (chromium, playwright) = match browser_tools() {
        Ok(tools) => tools,
        Err(why) if std::env::var_os("AGENTRT_REQUIRE_BROWSER").is_some() => {
            panic!("the browser test cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipping the browser test: {why} (scripts/test.sh installs what it needs)");
            return;
        }
    };
    let out =
        crate::harness::scratch_root().join(format!("agentrt-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("output folder");
    let server = Server::start(&[]);
    let result = Command::new("node")
        .arg(repo_root().join("tests/console/console.test.cjs"))
        .arg(&server.base)
        .arg(&out)
        .env("AGENTRT_PLAYWRIGHT", &playwright)
        .env("AGENTRT_CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "the console test failed (screenshots in {}):\n{stdout}\n{stderr}",
        out.display()
    );
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no summary from the console test:\n{stdout}\n{stderr}"));
    assert_eq!(summary["ok"], true, "{summary}");
    // The run the browser made is the one the API has.
    let run = summary["run"].as_str().expect("run id");
    let (status, body) = server.get(&format!("/v1/pipeline/runs/{run}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "completed", "{body}");
    let verdict = body["result"]["review"]["verdict"]
        .as_str()
        .unwrap_or_default()
        .replace('_', " ");
    assert_eq!(summary["verdict"], verdict, "{summary} vs {body}");
    for shot in ["1-live", "2-done", "3-from-history", "4-plugins", "5-stats"] {
        assert!(
            out.join(format!("{shot}.png")).is_file(),
            "no screenshot {shot}"
        );
    }
    println!("console screenshots: {}", out.display());
}
