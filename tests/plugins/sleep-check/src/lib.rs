//! Test plugin: a quality check that sleeps for two minutes in a single WASI call. Guest code
//! can be interrupted at the deadline, a host call cannot: the host cuts the sleep's timer at
//! the deadline, so the call ends with `PLUGIN_004` then and frees its slot. Granted an address
//! in `SLEEP_TCP`, it waits for a byte from a connection there instead, a wait the host also cuts
//! at the deadline. Granted a folder and a file in it in `SLEEP_FILE`, it reads that file, which
//! for a FIFO no one writes to waits in the operating system, where nothing can cut it: the host
//! abandons the call at its deadline, and its slot stays taken until the read returns. Granted
//! an address in `SLEEP_FLOOD`, it floods a connection there that is never read and closes it,
//! a close that waits for the write in flight (cut at the deadline too).

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Stage};

/// The plugin type exported to the host.
pub struct SleepCheck;

impl QualityCheck for SleepCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("sleep-check", Vec::<String>::new(), Vec::<String>::new())
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        // Granted an address in SLEEP_FLOOD: write to a connection there without waiting until
        // nothing more is taken, then close it; closing waits for the write in flight, which a
        // peer that never reads never lets finish.
        if let Ok(address) = std::env::var("SLEEP_FLOOD") {
            let failed = |what: &str, e: std::io::Error| PipelineError {
                code: "SLEEP_001".into(),
                message: format!("{what}: {e}"),
                stage: Stage::Check,
                attempt: 1,
            };
            let mut connection = std::net::TcpStream::connect(address.as_str())
                .map_err(|e| failed("cannot connect", e))?;
            connection
                .set_nonblocking(true)
                .map_err(|e| failed("cannot stop blocking", e))?;
            let chunk = vec![b'x'; 64 << 10];
            while std::io::Write::write(&mut connection, &chunk).is_ok_and(|n| n > 0) {}
            drop(connection);
            return Ok(Vec::new());
        }
        // Granted a file in SLEEP_FILE: read it (a FIFO without a writer waits in the kernel).
        if let Ok(path) = std::env::var("SLEEP_FILE") {
            let _ = std::fs::read(path);
            return Ok(Vec::new());
        }
        // Granted an address in SLEEP_TCP: wait instead for a byte from a connection there.
        if let Ok(address) = std::env::var("SLEEP_TCP") {
            if let Ok(mut connection) = std::net::TcpStream::connect(address.as_str()) {
                let mut byte = [0u8; 1];
                let _ = std::io::Read::read(&mut connection, &mut byte);
            }
            return Ok(Vec::new());
        }
        std::thread::sleep(std::time::Duration::from_secs(120));
        Ok(Vec::new())
    }
}

agentrt_plugin_sdk::export_plugin!(SleepCheck: quality-check);
