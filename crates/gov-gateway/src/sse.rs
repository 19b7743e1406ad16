//! Server-sent events read from an upstream response, one event block at a time, keeping each
//! block's bytes exactly as the provider sent them (the gateway forwards those bytes; it only
//! reads the `data:` field to see usage and tool calls).

use axum::body::Bytes;

/// Most bytes held while waiting for the end of one event.
const MAX_EVENT: usize = 4 << 20;

/// One event block: its bytes as received (with the blank line that ends it) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) raw: Bytes,
    pub(crate) data: String,
}

/// Splits a byte stream into event blocks.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    buf: Vec<u8>,
}

/// Why a stream could not be framed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TooLong;

impl Framer {
    /// Adds received bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), TooLong> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_EVENT {
            return Err(TooLong);
        }
        Ok(())
    }

    /// The next complete block, if one is buffered.
    pub(crate) fn next_block(&mut self) -> Option<Block> {
        let end = block_end(&self.buf)?;
        let raw: Vec<u8> = self.buf.drain(..end).collect();
        let data = data_of(&raw);
        Some(Block {
            raw: Bytes::from(raw),
            data,
        })
    }

    /// What is left at the end of the stream (a last block with no blank line after it).
    pub(crate) fn rest(&mut self) -> Option<Block> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let raw = std::mem::take(&mut self.buf);
        let data = data_of(&raw);
        Some(Block {
            raw: Bytes::from(raw),
            data,
        })
    }
}

/// Where the first block ends (after its blank line), for `\n\n`, `\r\n\r\n` and `\r\r`.
fn block_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some(i + 2),
            b'\n' if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') => {
                return Some(i + 3);
            }
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some(i + 2),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The `data:` lines of a block, joined with newlines.
fn data_of(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    data.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_bytes_across_chunk_boundaries() {
        let mut f = Framer::default();
        f.push(b"event: message_start\r\ndata: {\"a\"")
            .expect("fits");
        assert_eq!(f.next_block(), None);
        f.push(b":1}\r\n\r\ndata: [DONE]\n\n: tail").expect("fits");
        let b = f.next_block().expect("one");
        assert_eq!(
            &b.raw[..],
            b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n"
        );
        assert_eq!(b.data, "{\"a\":1}");
        assert_eq!(f.next_block().expect("two").data, "[DONE]");
        assert_eq!(f.next_block(), None);
        assert_eq!(&f.rest().expect("rest").raw[..], b": tail");
    }
}
