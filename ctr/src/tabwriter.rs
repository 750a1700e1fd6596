//! A column aligner with the semantics of Go's `text/tabwriter`.
//!
//! containerd's `ctr` prints all of its tables through Go's tabwriter, so
//! byte-for-byte compatible output needs the same rules:
//!
//! * text is split into cells by `'\t'`; a cell is *tab-terminated*, so the
//!   text after the last tab of a line is not part of any column and is
//!   written as is, without padding;
//! * a *column block* is a run of consecutive lines that all have a
//!   terminated cell in that column; each block is sized on its own:
//!   `max(minwidth, widest cell + padding)`;
//! * columns to the right are sized recursively inside the block of the
//!   column to their left;
//! * cell width is counted in characters (Go counts runes), not bytes;
//! * padding uses `padchar`; with `'\t'` the cell width is rounded up to a
//!   multiple of `tabwidth` and filled with tabs.
//!
//! Flags (`AlignRight`, `DiscardEmptyColumns`, ...) are not implemented:
//! `ctr` always passes 0.

use std::io::{self, Write};

#[derive(Debug, Clone)]
struct Cell {
    text: Vec<u8>,
    /// Width in characters.
    width: usize,
}

impl Cell {
    fn new(text: Vec<u8>) -> Self {
        // Count UTF-8 characters: every byte that is not a continuation byte
        // starts one (invalid bytes count as one each, as Go does).
        let width = text.iter().filter(|&&b| (b & 0xC0) != 0x80).count();
        Cell { text, width }
    }
}

/// Go-compatible tab writer. Write text into it, then call [`TabWriter::flush`].
#[derive(Debug)]
pub struct TabWriter<W: Write> {
    out: W,
    minwidth: usize,
    tabwidth: usize,
    padding: usize,
    padchar: u8,
    /// Completed lines, each a list of cells (the last cell is the text after
    /// the final tab, possibly empty).
    lines: Vec<Vec<Cell>>,
    /// Cells of the line in progress.
    partial: Vec<Cell>,
    /// Bytes of the cell in progress.
    cell: Vec<u8>,
}

impl<W: Write> TabWriter<W> {
    /// Same parameters as Go's `tabwriter.NewWriter(out, minwidth, tabwidth,
    /// padding, padchar, 0)`. `padchar` must be ASCII.
    pub fn new(out: W, minwidth: usize, tabwidth: usize, padding: usize, padchar: char) -> Self {
        assert!(padchar.is_ascii(), "tabwriter padchar must be ASCII");
        TabWriter {
            out,
            minwidth,
            tabwidth,
            padding,
            padchar: padchar as u8,
            lines: Vec::new(),
            partial: Vec::new(),
            cell: Vec::new(),
        }
    }

    /// Consume the writer, returning the underlying output. Unflushed text is
    /// discarded; call [`TabWriter::flush`] first.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn into_inner(self) -> W {
        self.out
    }

    fn end_line(&mut self) -> io::Result<()> {
        let cell = std::mem::take(&mut self.cell);
        self.partial.push(Cell::new(cell));
        let line = std::mem::take(&mut self.partial);
        let single = line.len() == 1;
        self.lines.push(line);
        // A line with a single cell cannot influence the layout of what
        // follows (its only cell is not in a column), so everything so far
        // can be written out. Go does the same.
        if single {
            self.flush_lines()?;
        }
        Ok(())
    }

    /// Format and write everything buffered, including an unterminated last
    /// line (written without a newline).
    fn flush_lines(&mut self) -> io::Result<()> {
        let mut lines = std::mem::take(&mut self.lines);
        let complete = lines.len();
        if !self.cell.is_empty() {
            let cell = std::mem::take(&mut self.cell);
            self.partial.push(Cell::new(cell));
        }
        let partial = std::mem::take(&mut self.partial);
        let has_partial = !partial.is_empty();
        if has_partial {
            lines.push(partial);
        }
        let mut out = Vec::new();
        let mut widths = Vec::new();
        self.format(&mut out, &mut widths, &lines, 0, lines.len(), complete);
        self.out.write_all(&out)
    }

    /// Lay out lines `line0..line1`: find the column blocks of column
    /// `widths.len()` and recurse into each with its width pushed.
    /// Lines with index `>= complete` are written without a trailing newline.
    fn format(
        &self,
        out: &mut Vec<u8>,
        widths: &mut Vec<usize>,
        lines: &[Vec<Cell>],
        mut line0: usize,
        line1: usize,
        complete: usize,
    ) {
        let column = widths.len();
        let mut this = line0;
        while this < line1 {
            // Does this line have a terminated cell in `column`?
            if column + 1 >= lines[this].len() {
                this += 1;
                continue;
            }
            // Lines before the block have no cell here: write them out.
            self.write_lines(out, widths, lines, line0, this, complete);
            line0 = this;

            let mut width = self.minwidth;
            while this < line1 && column + 1 < lines[this].len() {
                width = width.max(lines[this][column].width + self.padding);
                this += 1;
            }

            widths.push(width);
            self.format(out, widths, lines, line0, this, complete);
            widths.pop();
            line0 = this;
        }
        self.write_lines(out, widths, lines, line0, line1, complete);
    }

    fn write_lines(
        &self,
        out: &mut Vec<u8>,
        widths: &[usize],
        lines: &[Vec<Cell>],
        line0: usize,
        line1: usize,
        complete: usize,
    ) {
        for (i, line) in lines.iter().enumerate().take(line1).skip(line0) {
            for (j, cell) in line.iter().enumerate() {
                out.extend_from_slice(&cell.text);
                if let Some(&w) = widths.get(j) {
                    self.write_padding(out, cell.width, w);
                }
            }
            if i < complete {
                out.push(b'\n');
            }
        }
    }

    fn write_padding(&self, out: &mut Vec<u8>, textw: usize, cellw: usize) {
        if self.padchar == b'\t' {
            if self.tabwidth == 0 {
                return;
            }
            let cellw = cellw.div_ceil(self.tabwidth) * self.tabwidth;
            let n = cellw.saturating_sub(textw);
            out.extend(std::iter::repeat_n(b'\t', n.div_ceil(self.tabwidth)));
            return;
        }
        let n = cellw.saturating_sub(textw);
        out.extend(std::iter::repeat_n(self.padchar, n));
    }

    /// Write out all buffered text, formatted.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_lines()?;
        self.out.flush()
    }
}

impl<W: Write> Write for TabWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            match b {
                b'\t' => {
                    let cell = std::mem::take(&mut self.cell);
                    self.partial.push(Cell::new(cell));
                }
                b'\n' => self.end_line()?,
                _ => self.cell.push(b),
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        TabWriter::flush(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(minwidth: usize, tabwidth: usize, padding: usize, padchar: char, text: &str) -> String {
        let mut w = TabWriter::new(Vec::new(), minwidth, tabwidth, padding, padchar);
        w.write_all(text.as_bytes()).unwrap();
        w.flush().unwrap();
        String::from_utf8(w.into_inner()).unwrap()
    }

    /// Left-justify `s` in a field of `w` spaces (the expected-output helper).
    fn pad(s: &str, w: usize) -> String {
        format!("{s:<w$}")
    }

    #[test]
    fn plugins_table_layout() {
        // `ctr plugins ls`: NewWriter(os.Stdout, 4, 8, 4, ' ', 0), rows end with a tab.
        let text = "TYPE\tID\tPLATFORMS\tSTATUS\t\n\
                    io.containerd.content.v1\tcontent\t-\tok\t\n\
                    io.containerd.snapshotter.v1\tbtrfs\tlinux/amd64\tskip\t\n";
        // Column widths: widest cell + padding 4 -> 32, 11, 15, 10.
        let row =
            |a: &str, b: &str, c: &str, d: &str| format!("{}{}{}{}\n", pad(a, 32), pad(b, 11), pad(c, 15), pad(d, 10));
        let want = row("TYPE", "ID", "PLATFORMS", "STATUS")
            + &row("io.containerd.content.v1", "content", "-", "ok")
            + &row("io.containerd.snapshotter.v1", "btrfs", "linux/amd64", "skip");
        assert_eq!(render(4, 8, 4, ' ', text), want);
        // Spot-check one line literally, in case `pad` itself were wrong.
        assert!(want.starts_with("TYPE                            ID         PLATFORMS      STATUS    \n"));
    }

    #[test]
    fn minwidth_applies() {
        assert_eq!(render(4, 8, 1, ' ', "a\tb\n"), "a   b\n");
        assert_eq!(render(1, 8, 1, ' ', "a\tb\n"), "a b\n");
    }

    #[test]
    fn last_cell_is_not_a_column() {
        // Trailing text after the last tab is not padded.
        assert_eq!(render(1, 8, 2, ' ', "a\tlong\nbbb\tx\n"), "a    long\nbbb  x\n");
    }

    #[test]
    fn column_blocks_are_independent() {
        // Line 2 has no cell in column 1, which splits column 1 into two blocks,
        // while column 0 spans all three lines.
        let text = "a\tb\tc\nxxxxx\tyy\nq\twwwwww\tz\n";
        let want = "a      b  c\nxxxxx  yy\nq      wwwwww  z\n";
        assert_eq!(render(0, 8, 2, ' ', text), want);
    }

    #[test]
    fn single_cell_line_splits_tables() {
        let text = "aaaaaa\tb\nsep\nc\td\n";
        assert_eq!(render(0, 8, 1, ' ', text), "aaaaaa b\nsep\nc d\n");
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let text = "é\tx\nab\ty\n";
        assert_eq!(render(0, 8, 1, ' ', text), "é  x\nab y\n");
    }

    #[test]
    fn tab_padding_rounds_to_tabwidth() {
        let text = "a\tb\nabcdefghij\tc\n";
        // width 11 -> rounded to 16; "a" needs 15 cells of padding -> 2 tabs.
        assert_eq!(render(0, 8, 1, '\t', text), "a\t\tb\nabcdefghij\tc\n");
    }

    #[test]
    fn unterminated_last_line_has_no_newline() {
        assert_eq!(render(0, 8, 1, ' ', "ab\tc\nd\te"), "ab c\nd  e");
    }

    #[test]
    fn detailed_layout() {
        // The shape of `ctr plugins ls -d` (NewWriter(.., 4, 8, 4, ' ', 0)); Go's
        // Println puts a space between operands, hence the leading blanks.
        let text =
            "Type:\t io.containerd.content.v1\nID:\t content\nExports:\t\n\t root \t /var/lib\n\t\t\t\nType:\t x\n";
        // Column 0 spans every line: "Exports:" + 4 = 12. Column 1 is one block of
        // lines 4-5: " root " + 4 = 10. Column 2 only exists on line 5: minwidth 4.
        let want = [
            format!("{}{}", pad("Type:", 12), " io.containerd.content.v1"),
            format!("{}{}", pad("ID:", 12), " content"),
            pad("Exports:", 12),
            format!("{}{}{}", pad("", 12), pad(" root ", 10), " /var/lib"),
            " ".repeat(12 + 10 + 4),
            format!("{}{}", pad("Type:", 12), " x"),
        ]
        .map(|l| l + "\n")
        .concat();
        assert_eq!(render(4, 8, 4, ' ', text), want);
    }
}
