//! Streaming splitters for JSON arrays and JSON Lines: they cut one top-level element at a time
//! into a buffer bounded by `max_row_bytes`, without recursion, so nesting depth costs nothing here.

use std::io::Read;

use super::DatasetError;
use super::input::{Input, is_json_whitespace};

/// One element cut from the stream; the bytes of `Bytes` are in the source's `buf`.
pub(super) enum Element {
    Bytes,
    TooLarge { bytes: u64 },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    Elements,
    /// The closing `]` was seen; only whitespace may follow.
    Closed,
    Finished,
}

pub(super) struct JsonArraySource<R: Read> {
    input: Input<R>,
    pub(super) buf: Vec<u8>,
    limit: usize,
    state: ArrayState,
}

impl<R: Read> JsonArraySource<R> {
    /// Checks eagerly that the document is an array, so a wrong shape fails before any row.
    pub(super) fn new(mut input: Input<R>, max_row_bytes: usize) -> Result<Self, DatasetError> {
        match input.peek_non_whitespace()? {
            None => return Err(DatasetError::Empty),
            Some(b'[') => input.consume(1),
            Some(other) => {
                return Err(DatasetError::NotAnArray {
                    found: describe_start(other).to_owned(),
                });
            }
        }
        let mut state = ArrayState::Elements;
        if input.peek_non_whitespace()? == Some(b']') {
            input.consume(1);
            state = ArrayState::Closed;
        }
        Ok(Self {
            input,
            buf: Vec::new(),
            limit: max_row_bytes,
            state,
        })
    }

    /// Continues an array read elsewhere: `input` starts just after an element's `,`, or after
    /// the closing `]` when `closed`.
    pub(super) fn resume(input: Input<R>, max_row_bytes: usize, closed: bool) -> Self {
        Self {
            input,
            buf: Vec::new(),
            limit: max_row_bytes,
            state: if closed {
                ArrayState::Closed
            } else {
                ArrayState::Elements
            },
        }
    }

    /// Whether the closing `]` has been read.
    pub(super) fn closed(&self) -> bool {
        self.state != ArrayState::Elements
    }

    pub(super) fn offset(&self) -> u64 {
        self.input.offset()
    }

    pub(super) fn next_element(&mut self) -> Result<Option<Element>, DatasetError> {
        match self.state {
            ArrayState::Finished => return Ok(None),
            ArrayState::Closed => {
                self.state = ArrayState::Finished;
                return match self.input.peek_non_whitespace()? {
                    None => Ok(None),
                    Some(_) => Err(DatasetError::Malformed {
                        message: "unexpected data after the closing ']' of the array".to_owned(),
                        offset: self.input.offset(),
                    }),
                };
            }
            ArrayState::Elements => {}
        }
        self.buf.clear();
        let mut scan = Scanner::default();
        let mut size = 0u64;
        let mut oversize = false;
        loop {
            let chunk = self.input.fill()?;
            if chunk.is_empty() {
                self.state = ArrayState::Finished;
                return Err(DatasetError::Malformed {
                    message: "input ends inside the array (missing ']')".to_owned(),
                    offset: self.input.offset(),
                });
            }
            let end = scan.find_end(chunk);
            let take = end.map_or(chunk.len(), |(at, _)| at);
            size += take as u64;
            if !oversize && size > self.limit as u64 {
                oversize = true;
                self.buf.clear();
            }
            if !oversize {
                self.buf.extend_from_slice(&chunk[..take]);
            }
            match end {
                None => self.input.consume(take),
                Some((_, closes_array)) => {
                    self.input.consume(take + 1);
                    if closes_array {
                        self.state = ArrayState::Closed;
                    }
                    return Ok(Some(if oversize {
                        Element::TooLarge { bytes: size }
                    } else {
                        Element::Bytes
                    }));
                }
            }
        }
    }
}

/// Tracks string/escape state and bracket depth across chunk boundaries.
#[derive(Default)]
struct Scanner {
    depth: u64,
    in_string: bool,
    escaped: bool,
}

impl Scanner {
    /// Index of the `,` or `]` that ends the current top-level element, and whether it is the
    /// array's closing bracket.
    fn find_end(&mut self, chunk: &[u8]) -> Option<(usize, bool)> {
        for (at, &b) in chunk.iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => self.depth += 1,
                b']' if self.depth == 0 => return Some((at, true)),
                b',' if self.depth == 0 => return Some((at, false)),
                // A stray '}' at depth 0 stays in the element for serde to reject.
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        None
    }
}

pub(super) struct JsonLinesSource<R: Read> {
    input: Input<R>,
    pub(super) buf: Vec<u8>,
    limit: usize,
}

impl<R: Read> JsonLinesSource<R> {
    pub(super) fn new(mut input: Input<R>, max_row_bytes: usize) -> Result<Self, DatasetError> {
        if input.peek_non_whitespace()?.is_none() {
            return Err(DatasetError::Empty);
        }
        Ok(Self {
            input,
            buf: Vec::new(),
            limit: max_row_bytes,
        })
    }

    /// Continues a file read elsewhere: `input` starts at the beginning of a line.
    pub(super) fn resume(input: Input<R>, max_row_bytes: usize) -> Self {
        Self {
            input,
            buf: Vec::new(),
            limit: max_row_bytes,
        }
    }

    pub(super) fn offset(&self) -> u64 {
        self.input.offset()
    }

    /// The next non-blank line (without its terminator); blank lines are skipped entirely.
    pub(super) fn next_line(&mut self) -> Result<Option<Element>, DatasetError> {
        loop {
            self.buf.clear();
            let (mut size, mut oversize, mut blank) = (0u64, false, true);
            loop {
                let chunk = self.input.fill()?;
                if chunk.is_empty() {
                    if size == 0 {
                        return Ok(None);
                    }
                    break;
                }
                let newline = chunk.iter().position(|&b| b == b'\n');
                let take = newline.unwrap_or(chunk.len());
                let part = &chunk[..take];
                blank = blank && part.iter().all(|&b| is_json_whitespace(b));
                size += take as u64;
                if !oversize && size > self.limit as u64 {
                    oversize = true;
                    self.buf.clear();
                }
                if !oversize {
                    self.buf.extend_from_slice(part);
                }
                self.input.consume(take + usize::from(newline.is_some()));
                if newline.is_some() {
                    break;
                }
            }
            if blank {
                continue;
            }
            if oversize {
                return Ok(Some(Element::TooLarge { bytes: size }));
            }
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
            return Ok(Some(Element::Bytes));
        }
    }
}

fn describe_start(b: u8) -> &'static str {
    match b {
        b'{' => "an object",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        b'-' | b'0'..=b'9' => "a number",
        _ => "something that is not JSON",
    }
}
