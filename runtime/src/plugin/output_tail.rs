//! What a plugin writes to its standard output and error, kept as the last few KiB: a Python
//! traceback or a Rust panic message is the plugin's own account of a trap, and it goes with
//! the `PLUGIN_003` its caller gets (otherwise only "wasm `unreachable` instruction executed").
//!
//! Writes never fail and never wait, and the host keeps only the tail whatever the plugin
//! writes, so a chatty plugin costs neither memory nor errors. The text handed on has its
//! control characters blanked (line breaks become ` | `): it reaches logs, and a plugin must
//! not be able to forge log lines with it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Most bytes of a call's output kept (its end).
pub const TAIL_BYTES: usize = 2048;

/// The end of a call's output, shared by its stdout and stderr streams.
#[derive(Debug, Clone, Default)]
pub struct OutputTail {
    kept: Arc<Mutex<VecDeque<u8>>>,
}

impl OutputTail {
    fn push(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
        let over = (kept.len() + bytes.len()).saturating_sub(TAIL_BYTES);
        kept.drain(..over);
        kept.extend(bytes);
    }

    /// The kept output as one line of text (`None` when the plugin wrote nothing but space).
    pub fn text(&self) -> Option<String> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = kept.as_slices();
        let raw = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        let lines: Vec<String> = raw
            .lines()
            .map(|line| {
                line.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect::<String>()
            })
            .filter(|line| !line.trim().is_empty())
            .collect();
        let text = lines.join(" | ");
        (!text.is_empty()).then_some(text)
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for OutputTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always room: what does not fit pushes the oldest bytes out.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputTail {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_end_is_kept_as_one_line_without_control_characters() {
        let tail = OutputTail::default();
        assert_eq!(tail.text(), None);
        tail.push(&vec![b'x'; 10 * TAIL_BYTES]);
        tail.push(
            b"\nTraceback (most recent call last):\n  File \"app.py\"\x1b[31m\nValueError: boom\n",
        );
        let text = tail.text().expect("text");
        assert!(
            text.ends_with(
                "| Traceback (most recent call last): |   File \"app.py\" [31m | ValueError: boom"
            ),
            "{text}"
        );
        assert!(text.len() <= TAIL_BYTES + 16, "{}", text.len());
        assert!(!text.chars().any(char::is_control), "{text:?}");
        // One write larger than the tail keeps its own end.
        let big = OutputTail::default();
        let mut long = vec![b'a'; TAIL_BYTES];
        long.extend_from_slice(b"END");
        big.push(&long);
        assert!(big.text().expect("text").ends_with("aEND"));
        assert_eq!(big.kept.lock().expect("lock").len(), TAIL_BYTES);
    }
}
