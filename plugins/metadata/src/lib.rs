//! io.containerd.metadata.v1.redb: namespaces, leases and namespaced content records on redb (work in progress).
