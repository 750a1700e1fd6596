//! Progress of a transfer, sent as `containerd.types.transfer.Progress` on
//! the stream the client named in `options.progress_stream`. A client that
//! stops listening does not fail the transfer: progress is best effort.

use containerd_client::types::{transfer::Progress, Descriptor};

use crate::streams::{pack, StreamHandle};

/// Where progress goes; a sink without a stream drops everything.
#[derive(Default)]
pub struct ProgressSink {
    stream: Option<StreamHandle>,
}

impl ProgressSink {
    pub fn new(stream: Option<StreamHandle>) -> ProgressSink {
        ProgressSink { stream }
    }

    /// Sends one event; a client that went away stops further sending.
    pub async fn send(&mut self, progress: Progress) {
        if let Some(s) = &self.stream {
            if s.send(pack(&progress)).await.is_err() {
                self.stream = None;
            }
        }
    }

    /// An event without a subject ("Importing", "Completed import").
    pub async fn event(&mut self, event: &str) {
        self.send(Progress { event: event.to_string(), ..Default::default() }).await;
    }

    /// An event about one named thing (a blob, a layer, an image).
    pub async fn named(&mut self, event: &str, name: &str, desc: Option<Descriptor>) {
        self.send(Progress { event: event.to_string(), name: name.to_string(), desc, ..Default::default() }).await;
    }

    /// An event about one blob of a pull or push: named by its ingest
    /// reference (`layer-sha256:..`), with its descriptor, bytes moved and
    /// size (as containerd's progress tracker sends them).
    pub async fn blob(&mut self, event: &str, desc: &crate::oci::Descriptor, progress: u64) {
        self.send(Progress {
            event: event.to_string(),
            name: crate::oci::ref_key(desc),
            desc: Some(desc.to_proto()),
            progress: progress as i64,
            total: desc.size,
            ..Default::default()
        })
        .await;
    }

    /// Bytes moved for one named thing.
    pub async fn bytes(&mut self, event: &str, name: &str, progress: u64, total: u64) {
        self.send(Progress {
            event: event.to_string(),
            name: name.to_string(),
            progress: progress as i64,
            total: total as i64,
            ..Default::default()
        })
        .await;
    }
}
