//! Writing to stdout, and telling a closed pipe (`omstream ... | head`) from a real failure.

use std::io::{self, Write};

/// Writes `text` to stdout and flushes it. Errors are returned as `io::Error`, so that a closed
/// pipe is recognised by [`is_closed_pipe`].
pub(crate) fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether `err` is stdout's reader going away. Rust ignores SIGPIPE, so a write to a closed pipe
/// fails with `BrokenPipe`; the reader has what it wanted and the tool should end quietly.
pub(crate) fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Lays out rows under headers, left-aligning the first column and right-aligning the others
/// (they hold numbers).
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == 0 {
                line.push_str(&format!("{cell:<w$}"));
            } else {
                line.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["PARTITION", "BYTES"],
            &[
                vec!["0".into(), "12345".into()],
                vec!["10".into(), "7".into()],
            ],
        );
        assert_eq!(
            text,
            "PARTITION  BYTES\n0          12345\n10             7\n"
        );
    }

    #[test]
    fn only_broken_pipes_are_closed_pipes() {
        assert!(is_closed_pipe(
            &io::Error::from(io::ErrorKind::BrokenPipe).into()
        ));
        assert!(!is_closed_pipe(
            &io::Error::from(io::ErrorKind::NotFound).into()
        ));
        assert!(!is_closed_pipe(&anyhow::anyhow!("broken pipe")));
    }
}
