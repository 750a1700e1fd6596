//! io.containerd.event.v1.exchange: the events service (work in progress).
