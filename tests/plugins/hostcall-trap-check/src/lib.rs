//! Test plugin: a quality check that calls the host's `log.write` through the raw import with a
//! message pointer far outside its linear memory. The host cannot read the argument, so the
//! call traps in the middle of the host call; that must be this call's `PLUGIN_003` only.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck};

/// The plugin type exported to the host.
pub struct HostcallTrapCheck;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "agentrt:plugin/log@0.1.0")]
unsafe extern "C" {
    /// `write(level, message, fields)` in the canonical ABI: the level, then (pointer, length)
    /// of the message and of the fields list.
    #[link_name = "write"]
    fn raw_log_write(level: i32, msg_ptr: i32, msg_len: i32, fields_ptr: i32, fields_len: i32);
}

impl QualityCheck for HostcallTrapCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new(
            "hostcall-trap-check",
            Vec::<String>::new(),
            Vec::<String>::new(),
        )
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        // Make sure the import is linked the ordinary way too, as any plugin that logs has it.
        agentrt_plugin_sdk::log::info("about to pass the host a pointer it cannot read");
        #[cfg(target_arch = "wasm32")]
        // SAFETY: deliberately wrong: the host validates the pointer against the guest's memory
        // and traps; nothing in this module's memory is touched.
        unsafe {
            raw_log_write(2, 0x7fff_fff0, 4096, 0, 0);
        }
        Ok(Vec::new())
    }
}

agentrt_plugin_sdk::export_plugin!(HostcallTrapCheck: quality-check);
