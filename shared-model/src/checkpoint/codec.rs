//! Writing and reading a checkpoint as a stream: zstd over JSON lines, one line in memory at a time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};

use super::items::{Header, Item, Trailer, TrailerLine, FORMAT_NAME, FORMAT_VERSION};
use super::CheckpointError;

/// zstd level: checkpoints are small and written in the background; 3 is zstd's default trade-off.
const ZSTD_LEVEL: i32 = 3;

/// The longest line a reader accepts (a stream table's query and refresh SQL fit many times over): a corrupt file
/// cannot make the reader hold an unbounded line.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Writes a checkpoint: the header, then [`CheckpointWriter::item`] per item, then [`CheckpointWriter::finish`],
/// which checks the items against the header's counts and writes the trailer.
pub struct CheckpointWriter<W: Write> {
    out: zstd::stream::write::Encoder<'static, W>,
    hash: Sha256,
    lines: u64,
    declared: BTreeMap<String, u64>,
    written: BTreeMap<String, u64>,
}

impl<W: Write> CheckpointWriter<W> {
    /// Starts a checkpoint with `header` (its `format` and `version` are set here).
    pub fn new(out: W, mut header: Header) -> Result<Self, CheckpointError> {
        header.format = FORMAT_NAME.to_string();
        header.version = FORMAT_VERSION;
        let mut out = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(CheckpointError::write)?;
        // zstd's own checksum of the content: a damaged frame fails in the decompressor, before JSON sees it.
        out.include_checksum(true).map_err(CheckpointError::write)?;
        let mut writer = CheckpointWriter {
            out,
            hash: Sha256::new(),
            lines: 0,
            declared: header.counts.clone(),
            written: BTreeMap::new(),
        };
        writer.line(&header)?;
        Ok(writer)
    }

    fn line<T: serde::Serialize>(&mut self, value: &T) -> Result<(), CheckpointError> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| CheckpointError::Invalid(e.to_string()))?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.lines += 1;
        self.out.write_all(&bytes).map_err(CheckpointError::write)
    }

    /// Writes one item (checked first: a checkpoint that could not be restored is not written).
    pub fn item(&mut self, item: &Item) -> Result<(), CheckpointError> {
        item.check().map_err(CheckpointError::Invalid)?;
        *self.written.entry(item.kind().to_string()).or_default() += 1;
        self.line(item)
    }

    /// Writes the trailer and ends the zstd frame; returns the underlying writer and the trailer (its SHA-256
    /// names the checkpoint's contents, e.g. when it is recorded at the coordinators).
    pub fn finish(mut self) -> Result<(W, Trailer), CheckpointError> {
        if self.written != self.declared {
            return Err(CheckpointError::Invalid(format!(
                "the header announced {:?} but {:?} were written",
                self.declared, self.written
            )));
        }
        let trailer =
            TrailerLine { trailer: Trailer { lines: self.lines, sha256: hex(&self.hash.clone().finalize()) } };
        let mut bytes = serde_json::to_vec(&trailer).map_err(|e| CheckpointError::Invalid(e.to_string()))?;
        bytes.push(b'\n');
        self.out.write_all(&bytes).map_err(CheckpointError::write)?;
        let out = self.out.finish().map_err(CheckpointError::write)?;
        Ok((out, trailer.trailer))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a checkpoint: the header on [`CheckpointReader::new`], then the items one by one. The trailer is checked
/// when the items end ([`CheckpointReader::next_item`] returns None only after it matched), so a caller that acts
/// only after reading to the end never acts on a truncated or corrupt file.
pub struct CheckpointReader<R: Read> {
    input: BufReader<zstd::stream::read::Decoder<'static, BufReader<R>>>,
    header: Header,
    hash: Sha256,
    lines: u64,
    read: BTreeMap<String, u64>,
    finished: bool,
}

impl<R: Read> CheckpointReader<R> {
    /// Opens a checkpoint and reads its header.
    pub fn new(input: R) -> Result<Self, CheckpointError> {
        let mut input = BufReader::new(input);
        let magic = input.fill_buf().map_err(CheckpointError::read)?;
        if magic.is_empty() {
            return Err(CheckpointError::Empty);
        }
        if magic.len() < 4 || magic[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(CheckpointError::Foreign("the file is not zstd-compressed".into()));
        }
        let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(CheckpointError::read)?;
        let mut reader = CheckpointReader {
            input: BufReader::new(decoder),
            header: Header {
                format: String::new(),
                version: 0,
                extension_version: String::new(),
                cluster: None,
                database: String::new(),
                written_at: String::new(),
                counts: BTreeMap::new(),
            },
            hash: Sha256::new(),
            lines: 0,
            read: BTreeMap::new(),
            finished: false,
        };
        let Some(first) = reader.raw_line()? else { return Err(CheckpointError::Empty) };
        let value: serde_json::Value = serde_json::from_slice(&first)
            .map_err(|_| CheckpointError::Foreign("its first line is not a JSON object".into()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(CheckpointError::Foreign(format!("its first line does not say \"format\": \"{FORMAT_NAME}\"")));
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v > u64::from(FORMAT_VERSION) => {
                return Err(CheckpointError::NewerVersion { found: v, supported: FORMAT_VERSION })
            }
            Some(_) => {}
            None => return Err(CheckpointError::Corrupt { line: 1, reason: "the header has no version".into() }),
        }
        reader.header = serde_json::from_value(value)
            .map_err(|e| CheckpointError::Corrupt { line: 1, reason: format!("header: {e}") })?;
        reader.note(&first);
        Ok(reader)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next line without its newline, or None at the end; a last line without a newline is a truncated file.
    fn raw_line(&mut self) -> Result<Option<Vec<u8>>, CheckpointError> {
        let mut line = Vec::new();
        let limit = (MAX_LINE_BYTES + 1) as u64;
        let n = (&mut self.input).take(limit).read_until(b'\n', &mut line).map_err(|e| self.damaged(e))?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE_BYTES {
                return Err(CheckpointError::Corrupt {
                    line: self.lines + 1,
                    reason: format!("a line longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            return Err(CheckpointError::Truncated { lines: self.lines });
        }
        line.pop();
        Ok(Some(line))
    }

    /// A read error inside the compressed stream: a damaged frame, or one that ends early.
    fn damaged(&self, e: std::io::Error) -> CheckpointError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CheckpointError::Truncated { lines: self.lines }
        } else {
            CheckpointError::Corrupt { line: self.lines + 1, reason: format!("decompression: {e}") }
        }
    }

    fn note(&mut self, line: &[u8]) {
        self.hash.update(line);
        self.hash.update(b"\n");
        self.lines += 1;
    }

    /// The next item; None once the trailer was read and matched everything before it.
    pub fn next_item(&mut self) -> Result<Option<Item>, CheckpointError> {
        if self.finished {
            return Ok(None);
        }
        let line_no = self.lines + 1;
        let Some(line) = self.raw_line()? else { return Err(CheckpointError::Truncated { lines: self.lines }) };
        if line.starts_with(b"{\"trailer\"") {
            let TrailerLine { trailer } = serde_json::from_slice(&line)
                .map_err(|e| CheckpointError::Corrupt { line: line_no, reason: format!("trailer: {e}") })?;
            self.check_trailer(&trailer)?;
            self.finished = true;
            return Ok(None);
        }
        let item: Item = serde_json::from_slice(&line)
            .map_err(|e| CheckpointError::Corrupt { line: line_no, reason: e.to_string() })?;
        item.check().map_err(|reason| CheckpointError::Corrupt { line: line_no, reason })?;
        self.note(&line);
        *self.read.entry(item.kind().to_string()).or_default() += 1;
        Ok(Some(item))
    }

    fn check_trailer(&mut self, trailer: &Trailer) -> Result<(), CheckpointError> {
        let sha = hex(&self.hash.clone().finalize());
        if trailer.lines != self.lines || trailer.sha256 != sha {
            return Err(CheckpointError::ChecksumMismatch {
                expected: format!("{} lines, sha256 {}", trailer.lines, trailer.sha256),
                found: format!("{} lines, sha256 {sha}", self.lines),
            });
        }
        if self.read != self.header.counts {
            return Err(CheckpointError::Corrupt {
                line: self.lines + 1,
                reason: format!("the header announced {:?} but the file holds {:?}", self.header.counts, self.read),
            });
        }
        let mut rest = Vec::new();
        (&mut self.input).take(1).read_to_end(&mut rest).map_err(|e| self.damaged(e))?;
        if !rest.is_empty() {
            return Err(CheckpointError::Corrupt { line: self.lines + 2, reason: "data after the trailer".into() });
        }
        Ok(())
    }

    /// Reads every remaining item, checking the whole file.
    pub fn read_all(mut self) -> Result<(Header, Vec<Item>), CheckpointError> {
        let mut items = Vec::new();
        while let Some(item) = self.next_item()? {
            items.push(item);
        }
        Ok((self.header, items))
    }
}
