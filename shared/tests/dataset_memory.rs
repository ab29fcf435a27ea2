//! Streams generated datasets (~50 MB of rows, then one 40 MB row) through the reader to show
//! memory does not grow with the file. Its own test binary, so the peak-RSS reading is not
//! polluted by other tests running in parallel.

#![allow(clippy::expect_used)]

use std::io::Read;

use shared::dataset::{DatasetFormat, DatasetReader, Item, RejectReason, RowRules};

const MIB: u64 = 1024 * 1024;

/// A file produced on the fly, piece by piece: nothing of it exists anywhere as a whole.
struct Generated<F: FnMut(u64) -> Option<Vec<u8>>> {
    next_piece: F,
    index: u64,
    pending: Vec<u8>,
    position: usize,
}

fn generated<F: FnMut(u64) -> Option<Vec<u8>>>(next_piece: F) -> Generated<F> {
    Generated {
        next_piece,
        index: 0,
        pending: Vec::new(),
        position: 0,
    }
}

impl<F: FnMut(u64) -> Option<Vec<u8>>> Read for Generated<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position == self.pending.len() {
            match (self.next_piece)(self.index) {
                Some(piece) => self.pending = piece,
                None => return Ok(0),
            }
            self.index += 1;
            self.position = 0;
        }
        let n = buf.len().min(self.pending.len() - self.position);
        buf[..n].copy_from_slice(&self.pending[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// ~50 MB of rows with quoting, embedded newlines and empty cells.
fn many_rows() -> impl Read {
    let mut produced = 0u64;
    generated(move |i| {
        if i == 0 {
            return Some(b"id,title,quote,image,badge\r\n".to_vec());
        }
        if produced >= 50 * MIB {
            return None;
        }
        let n = i - 1;
        let badge = if n % 3 == 0 { "" } else { "new" };
        let line = format!(
            "{n},Title number {n},\"quoted, with \"\"commas\"\"\nand a newline\",https://img.example.com/{n}.png,{badge}\r\n"
        );
        produced += line.len() as u64;
        Some(line.into_bytes())
    })
}

/// A header, one row holding a 40 MB quoted field, then a normal row.
fn one_giant_row() -> impl Read {
    generated(|i| match i {
        0 => Some(b"title,body\n\"giant\",\"".to_vec()),
        1..=40 => Some(vec![b'x'; MIB as usize]),
        41 => Some(b"\"\nsmall,row\n".to_vec()),
        _ => None,
    })
}

/// Peak resident set size in MiB (Linux), if available.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Only for small row counts: collects every item.
fn read_all(data: impl Read) -> Vec<Item> {
    DatasetReader::new(data, DatasetFormat::Csv, RowRules::default())
        .expect("header reads")
        .map(|item| item.expect("no dataset error"))
        .collect()
}

#[test]
fn large_files_and_giant_rows_stream_through_without_accumulating() {
    let before = peak_rss_mib();

    let mut rows = 0u64;
    let reader = DatasetReader::new(many_rows(), DatasetFormat::Csv, RowRules::default())
        .expect("header reads");
    for item in reader {
        let Item::Valid(row) = item.expect("no dataset error") else {
            panic!("unexpected rejection at row {rows}");
        };
        assert_eq!(row.number, rows, "numbers are dense");
        rows += 1;
    }
    assert!(rows > 400_000, "only {rows} rows");

    let items = read_all(one_giant_row());
    assert!(
        matches!(
            &items[..],
            [Item::Rejected(r), Item::Valid(next)]
                if r.number == 0 && matches!(r.reason, RejectReason::RowTooLarge { bytes, .. } if bytes > 40 * MIB)
                && next.number == 1 && next.fields["title"] == "small"
        ),
        "{items:?}"
    );

    if let (Some(before), Some(after)) = (before, peak_rss_mib()) {
        let growth = after.saturating_sub(before);
        eprintln!("peak RSS: {before} MiB before, {after} MiB after streaming");
        assert!(growth < 16, "peak RSS grew by {growth} MiB while streaming");
    }
}
