//! Buffered byte input shared by the format scanners: strips a UTF-8 BOM and tracks the byte offset.

use std::io::{BufRead, BufReader, Chain, Cursor, ErrorKind, Read};

use super::DatasetError;

const BOM: &[u8] = b"\xEF\xBB\xBF";
const BUFFER_BYTES: usize = 64 * 1024;

pub(super) struct Input<R: Read> {
    inner: BufReader<Chain<Cursor<Vec<u8>>, R>>,
    offset: u64,
}

impl<R: Read> Input<R> {
    /// Reads up to three bytes eagerly so a BOM is stripped even from a reader that
    /// hands out one byte at a time.
    pub(super) fn new(mut reader: R) -> Result<Self, DatasetError> {
        let mut head = Vec::with_capacity(BOM.len());
        (&mut reader)
            .take(BOM.len() as u64)
            .read_to_end(&mut head)?;
        let mut offset = 0;
        if head == BOM {
            head.clear();
            offset = BOM.len() as u64;
        }
        Ok(Self {
            inner: BufReader::with_capacity(BUFFER_BYTES, Cursor::new(head).chain(reader)),
            offset,
        })
    }

    /// Input that starts at `offset` of the original file (a resumed read): no BOM is looked
    /// for, since the bytes are not the start of the file.
    pub(super) fn at(reader: R, offset: u64) -> Self {
        Self {
            inner: BufReader::with_capacity(BUFFER_BYTES, Cursor::new(Vec::new()).chain(reader)),
            offset,
        }
    }

    /// The buffered bytes, refilled when empty; an empty slice means end of input.
    pub(super) fn fill(&mut self) -> Result<&[u8], DatasetError> {
        loop {
            match self.inner.fill_buf() {
                Ok(_) => return Ok(self.inner.buffer()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.offset += n as u64;
    }

    /// Byte offset in the original file (the BOM included) of the next unread byte.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Skips JSON whitespace and returns the next byte without consuming it.
    pub(super) fn peek_non_whitespace(&mut self) -> Result<Option<u8>, DatasetError> {
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let skip = buf.iter().take_while(|b| is_json_whitespace(**b)).count();
            let next = buf.get(skip).copied();
            self.consume(skip);
            if next.is_some() {
                return Ok(next);
            }
        }
    }
}

pub(super) fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}
