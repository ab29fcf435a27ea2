//! CSV records with bounded memory: csv-core drives the RFC 4180 state machine while we cap
//! each record's buffer, so one enormous quoted field cannot grow the heap past `max_row_bytes`.

use std::io::Read;

use csv_core::ReadRecordResult;

use super::DatasetError;
use super::input::Input;

/// What the last call to [`CsvSource::next_record`] found; the fields of `Fields` are read
/// through [`CsvSource::fields`].
pub(super) enum CsvRecord {
    Fields,
    TooLarge { bytes: u64 },
}

pub(super) struct CsvSource<R: Read> {
    input: Input<R>,
    parser: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    field_count: usize,
    limit: usize,
    done: bool,
}

impl<R: Read> CsvSource<R> {
    pub(super) fn new(input: Input<R>, max_row_bytes: usize) -> Self {
        Self {
            input,
            // Defaults are RFC 4180: comma, double quotes with "" escapes, CR / LF / CRLF
            // terminators; empty lines are skipped.
            parser: csv_core::Reader::new(),
            out: Vec::new(),
            ends: Vec::new(),
            field_count: 0,
            limit: max_row_bytes,
            done: false,
        }
    }

    /// The largest record from now on (the header has its own limit).
    pub(super) fn set_limit(&mut self, max_record_bytes: usize) {
        self.limit = max_record_bytes;
    }

    /// Byte offset of the next unread byte: after a record, where the next one starts.
    pub(super) fn offset(&self) -> u64 {
        self.input.offset()
    }

    /// Reads the next record; `None` at the end of input. A record whose raw bytes exceed the
    /// limit is still consumed to its end (so the next record starts in the right place) but
    /// its contents are discarded as they stream past.
    pub(super) fn next_record(&mut self) -> Result<Option<CsvRecord>, DatasetError> {
        if self.done {
            return Ok(None);
        }
        let (mut out_len, mut ends_len, mut raw, mut oversize) = (0usize, 0usize, 0u64, false);
        // Whether this record's raw bytes hold an odd number of quote characters, and where it
        // started: a record cut short by the end of input with an odd count has a quoted field
        // that never closed.
        let (mut odd_quotes, start) = (false, self.input.offset());
        loop {
            if !oversize && out_len == self.out.len() {
                oversize = !grow(&mut self.out, self.limit.saturating_add(1));
            }
            if !oversize && ends_len == self.ends.len() {
                oversize = !grow(&mut self.ends, self.limit.saturating_add(2));
            }
            if oversize {
                // Reuse the buffers as scratch: the contents are never looked at.
                out_len = 0;
                ends_len = 0;
            }
            let buf = self.input.fill()?;
            let at_end = buf.is_empty();
            let (result, nin, nout, nend) =
                self.parser
                    .read_record(buf, &mut self.out[out_len..], &mut self.ends[ends_len..]);
            odd_quotes ^= odd_quote_count(&buf[..nin]);
            self.input.consume(nin);
            raw += nin as u64;
            out_len += nout;
            ends_len += nend;
            if raw > self.limit as u64 {
                oversize = true;
            }
            match result {
                ReadRecordResult::InputEmpty
                | ReadRecordResult::OutputFull
                | ReadRecordResult::OutputEndsFull => continue,
                // csv-core ends an open quoted field silently at end of input, which would
                // swallow every later row into one field: refuse the rest of the file instead.
                ReadRecordResult::Record if at_end && odd_quotes => {
                    self.done = true;
                    return Err(DatasetError::Malformed {
                        message: "a quoted field is never closed: the quote opened in this row runs to the end of the file".into(),
                        offset: start,
                    });
                }
                ReadRecordResult::Record if oversize => {
                    return Ok(Some(CsvRecord::TooLarge { bytes: raw }));
                }
                ReadRecordResult::Record => {
                    self.field_count = ends_len;
                    return Ok(Some(CsvRecord::Fields));
                }
                ReadRecordResult::End => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }

    /// The fields of the record last returned as [`CsvRecord::Fields`].
    pub(super) fn fields(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        (0..self.field_count).map(|i| self.field(i))
    }

    /// How many fields the record last returned as [`CsvRecord::Fields`] has.
    pub(super) fn field_count(&self) -> usize {
        self.field_count
    }

    /// Field `i` of the record last returned as [`CsvRecord::Fields`] (empty past its end).
    pub(super) fn field(&self, i: usize) -> &[u8] {
        self.out.get(self.field_range(i)).unwrap_or_default()
    }

    /// Where field `i` lies in [`CsvSource::record_text`].
    pub(super) fn field_range(&self, i: usize) -> std::ops::Range<usize> {
        let ends = &self.ends[..self.field_count];
        let Some(&end) = ends.get(i) else {
            return 0..0;
        };
        let start = if i == 0 { 0 } else { ends[i - 1] };
        start..end
    }

    /// The record's fields end to end, when that is UTF-8 (one check for the whole record;
    /// a field is UTF-8 too when its range also falls on character boundaries).
    pub(super) fn record_text(&self) -> Option<&str> {
        let end = self.ends[..self.field_count].last().copied().unwrap_or(0);
        std::str::from_utf8(self.out.get(..end)?).ok()
    }
}

/// Whether `bytes` holds an odd number of `"`. A count that wraps at 256 keeps its parity and
/// lets the compiler add 16 or 32 bytes at a time.
fn odd_quote_count(bytes: &[u8]) -> bool {
    let count = bytes
        .iter()
        .fold(0u8, |count, b| count.wrapping_add(u8::from(*b == b'"')));
    count % 2 == 1
}

/// Doubles `buf` up to `cap` elements; false when it is already at the cap.
fn grow<T: Default + Clone>(buf: &mut Vec<T>, cap: usize) -> bool {
    if buf.len() >= cap {
        return false;
    }
    let len = buf.len().saturating_mul(2).max(64).min(cap);
    buf.resize(len, T::default());
    true
}
