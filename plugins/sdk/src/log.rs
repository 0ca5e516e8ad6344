//! Structured log lines, attributed by the host to the calling plugin.
//!
//! `log::info("message")` for a plain line, [`write`] for one with key/value fields. Outside a
//! WebAssembly host (unit tests on the host target) lines go to standard error instead.

pub use crate::__bindings::log::Level;

/// Write one log line at `level` with key/value `fields`.
pub fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        crate::__bindings::log::write(level, message, &fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let fields: String = fields
            .iter()
            .map(|(key, value)| format!(" {key}={value:?}"))
            .collect();
        eprintln!("[{level:?}] {message}{fields}");
    }
}

/// Fine detail.
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref(), &[]);
}

/// Diagnostic detail.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref(), &[]);
}

/// Normal operation.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref(), &[]);
}

/// Something unexpected that the plugin handled.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref(), &[]);
}

/// Something the plugin could not handle.
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref(), &[]);
}
