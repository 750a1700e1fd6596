//! Showing a transfer's progress events: on a terminal, a table redrawn in
//! place like containerd 1.6 ctr's pull display (a row per blob with its
//! status, a bar and bytes, then `elapsed: ... total: ...`); otherwise one
//! plain line per event, without escape codes.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use containerd_client::types::transfer::Progress;

use crate::commands::images::progress_bytes;
use crate::tabwriter::TabWriter;

/// The bar's width between its `|`s, as in 1.6.
const BAR_WIDTH: usize = 40;
/// How often the terminal table is redrawn at most.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// One line of the table: a blob (or the reference being transferred).
#[derive(Debug, Clone, Default, PartialEq)]
struct Row {
    key: String,
    status: String,
    progress: i64,
    total: i64,
}

/// The kind a media type names, for the row key (`layer-sha256:...`).
fn kind(media_type: &str) -> &'static str {
    if media_type.contains("manifest.list") || media_type.contains("image.index") {
        "index"
    } else if media_type.contains("manifest") {
        "manifest"
    } else if media_type.contains("config") {
        "config"
    } else if media_type.contains("layer") || media_type.contains("rootfs") {
        "layer"
    } else {
        "blob"
    }
}

/// `progress.Bar`: `|` then `+` for the done share, spaces for the rest.
fn bar(progress: i64, total: i64) -> String {
    let filled =
        if total > 0 { ((progress.clamp(0, total) as f64 / total as f64) * BAR_WIDTH as f64) as usize } else { 0 };
    format!("|{}{}|", "+".repeat(filled), " ".repeat(BAR_WIDTH - filled))
}

/// The state of a display: the rows in arrival order.
#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    /// Bytes moved so far, over every blob.
    total_bytes: i64,
}

impl Table {
    /// Fold one event in.
    pub fn update(&mut self, p: &Progress) {
        let key = match &p.desc {
            Some(d) => format!("{}-{}", kind(&d.media_type), d.digest),
            None => p.name.clone(),
        };
        let i = *self.index.entry(key.clone()).or_insert_with(|| {
            self.rows.push(Row { key, ..Default::default() });
            self.rows.len() - 1
        });
        let row = &mut self.rows[i];
        row.status = p.event.clone();
        if p.total > 0 {
            row.total = p.total;
        }
        if p.progress > row.progress {
            self.total_bytes += p.progress - row.progress;
            row.progress = p.progress;
        }
        if (p.event == "complete" || p.event == "already exists") && row.total > 0 {
            self.total_bytes += row.total - row.progress;
            row.progress = row.total;
        }
    }

    /// The table's text: tab-aligned rows, then the elapsed/total line.
    pub fn render(&self, elapsed: Duration) -> String {
        let mut tw = TabWriter::new(Vec::new(), 1, 8, 1, ' ');
        for r in &self.rows {
            let _ = if r.total > 0 {
                writeln!(
                    tw,
                    "{}:\t{}\t{}\t{}/{}\t",
                    r.key,
                    r.status,
                    bar(r.progress, r.total),
                    progress_bytes(r.progress),
                    progress_bytes(r.total)
                )
            } else {
                writeln!(tw, "{}:\t{}\t\t\t", r.key, r.status)
            };
        }
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { (self.total_bytes as f64 / secs) as i64 } else { 0 };
        let _ = writeln!(
            tw,
            "elapsed: {secs:.1} s\ttotal: {}\t({}/s)\t",
            progress_bytes(self.total_bytes),
            progress_bytes(rate)
        );
        let _ = tw.flush();
        String::from_utf8_lossy(&tw.into_inner()).into_owned()
    }
}

/// One event as a plain line: `<name>: <event>` (with `progress/total`
/// bytes when the event carries them).
pub fn plain_line(p: &Progress) -> String {
    let subject = match &p.desc {
        Some(d) => format!("{}-{}", kind(&d.media_type), d.digest),
        None => p.name.clone(),
    };
    let mut line = if subject.is_empty() { p.event.clone() } else { format!("{subject}: {}", p.event) };
    if p.total > 0 {
        line.push_str(&format!(" {}/{}", p.progress, p.total));
    }
    line
}

/// Where events go: a live table on a terminal, lines otherwise.
pub struct Display {
    live: bool,
    table: Table,
    start: Instant,
    last_draw: Option<Instant>,
    drawn_lines: usize,
}

impl Display {
    pub fn new(live: bool) -> Display {
        Display { live, table: Table::default(), start: Instant::now(), last_draw: None, drawn_lines: 0 }
    }

    /// A live table when stdout is a terminal.
    pub fn for_stdout() -> Display {
        use std::io::IsTerminal as _;
        Display::new(io::stdout().is_terminal())
    }

    pub fn event(&mut self, p: &Progress) -> io::Result<()> {
        if !self.live {
            let mut out = io::stdout().lock();
            writeln!(out, "{}", plain_line(p))?;
            return out.flush();
        }
        self.table.update(p);
        if self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW_EVERY) {
            self.draw()?;
        }
        Ok(())
    }

    /// Redraw the table over the previous one (cursor up, clear below).
    fn draw(&mut self) -> io::Result<()> {
        let text = self.table.render(self.start.elapsed());
        let mut out = io::stdout().lock();
        if self.drawn_lines > 0 {
            write!(out, "\x1b[{}A\x1b[0J", self.drawn_lines)?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        self.drawn_lines = text.lines().count();
        self.last_draw = Some(Instant::now());
        Ok(())
    }

    /// The final state (on a terminal).
    pub fn finish(&mut self) -> io::Result<()> {
        if self.live {
            self.draw()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::types::Descriptor;

    fn ev(event: &str, name: &str, mt: &str, progress: i64, total: i64) -> Progress {
        Progress {
            event: event.into(),
            name: name.into(),
            parents: vec![],
            progress,
            total,
            desc: (!mt.is_empty()).then(|| Descriptor {
                media_type: mt.into(),
                digest: format!("sha256:{name}"),
                size: total,
                annotations: Default::default(),
            }),
        }
    }

    #[test]
    fn table_tracks_blobs() {
        let mut t = Table::default();
        t.update(&ev("Pulling from r", "r", "", 0, 0));
        t.update(&ev("downloading", "aa", "application/vnd.oci.image.layer.v1.tar+gzip", 1024, 4096));
        t.update(&ev("downloading", "aa", "application/vnd.oci.image.layer.v1.tar+gzip", 2048, 4096));
        let text = t.render(Duration::from_secs(1));
        assert!(text.contains("|++++++++++++++++++++                    | 2.0 KiB/4.0 KiB"), "{text}");
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(words.contains("layer-sha256:aa: downloading |"), "{text}");
        assert!(words.contains("elapsed: 1.0 s total: 2.0 KiB (2.0 KiB/s)"), "{text}");
        t.update(&ev("complete", "aa", "application/vnd.oci.image.layer.v1.tar+gzip", 0, 0));
        let text = t.render(Duration::from_secs(2));
        assert!(text.contains("4.0 KiB/4.0 KiB"), "{text}");
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn plain_lines() {
        assert_eq!(plain_line(&ev("saved", "docker.io/x:1", "", 0, 0)), "docker.io/x:1: saved");
        assert_eq!(
            plain_line(&ev("uploading", "bb", "application/vnd.oci.image.manifest.v1+json", 5, 9)),
            "manifest-sha256:bb: uploading 5/9"
        );
        assert_eq!(plain_line(&ev("Completed import", "", "", 0, 0)), "Completed import");
    }
}
