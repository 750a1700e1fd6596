//! io.containerd.content.v1.content: the content-addressed blob store (work in progress).
