//! How a plugin adds metrics to the daemon's metrics endpoint
//! (`[metrics] address`, `GET /v1/metrics`).
//!
//! The core cannot see a plugin's state, so a plugin that has metrics
//! serves the internal service [`SERVICE`] (`ServiceRouter::internal`: off
//! the socket, like `crated.gc.v1.Collector`). At every scrape the core
//! calls [`COLLECT`] on each running plugin that serves it, on that
//! plugin's lane as any call, with a timeout of [`COLLECT_TIMEOUT_SECS`],
//! and appends the text it returns to the scrape. A plugin that fails, is
//! down or times out is left out of that scrape with a comment line
//! saying why; it never fails the scrape.
//!
//! The text is Prometheus' text exposition format (version 0.0.4): `# HELP`
//! and `# TYPE` lines, then samples, no `# EOF`. Use [`TextWriter`] to
//! write it. Names must not collide with the core's (`grpc_server_*`,
//! `process_*`, `crated_plugin_*`) nor another plugin's: prefix them with
//! something of your own.
//!
//! ```ignore
//! use crated_plugin_api::metrics::{self, CollectRequest, CollectResponse, TextWriter};
//! ServiceRouter::new().internal(metrics::SERVICE).unary(metrics::COLLECT, |_call, _: CollectRequest| async move {
//!     let mut w = TextWriter::default();
//!     w.family("example_widgets", "Widgets made", "counter");
//!     w.sample("example_widgets", &[("color", "blue")], 3.0);
//!     Ok::<_, Status>(CollectResponse { text: w.finish() })
//! })
//! ```

use std::fmt::Write as _;

/// The internal service a plugin serves to contribute metrics.
pub const SERVICE: &str = "crated.metrics.v1.Metrics";
/// Unary: [`CollectRequest`] -> [`CollectResponse`].
pub const COLLECT: &str = "/crated.metrics.v1.Metrics/Collect";
/// How long the core waits for one plugin's [`COLLECT`] at a scrape.
pub const COLLECT_TIMEOUT_SECS: u64 = 5;

#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectResponse {
    /// Prometheus text (version 0.0.4), without `# EOF`.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// Writes Prometheus' text format: families, then their samples.
#[derive(Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    /// Starts a family: `kind` is `counter`, `gauge`, `histogram` or
    /// `untyped`. Write its samples next.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A value as Go's text encoder writes it: integers without a fraction,
/// large ones in exponent form (`1.2345e+06`), `+Inf`, `NaN`.
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e21 {
        // Go's strconv 'g' with shortest precision switches to exponent form
        // at 1e21; an integer below that prints whole.
        let _ = write!(out, "{}", v as i128);
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_and_escaped_labels() {
        let mut w = TextWriter::default();
        w.family("x_bytes", "The x\nthing", "gauge");
        w.sample("x_bytes", &[("id", "a\"b"), ("namespace", "default")], 4096.0);
        w.sample("x_bytes", &[], 0.5);
        assert_eq!(
            w.finish(),
            "# HELP x_bytes The x\\nthing\n# TYPE x_bytes gauge\nx_bytes{id=\"a\\\"b\",namespace=\"default\"} 4096\nx_bytes 0.5\n"
        );
    }
}
