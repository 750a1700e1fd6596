//! containerd's cgroup metrics messages, as a shim's `Stats` answers them
//! in an `Any`: `io.containerd.cgroups.v1.Metrics` on a v1 or hybrid host,
//! `io.containerd.cgroups.v2.Metrics` on a unified one (containerd/cgroups
//! `stats/v1/metrics.proto` and `v2/stats/metrics.proto`, field numbers
//! kept). The project's shim fills them; the runtime plugin decodes what
//! any shim (the Go one too) returns, for the metrics endpoint.

/// The `Any` type URL of [`v1::Metrics`].
pub const V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// The `Any` type URL of [`v2::Metrics`].
pub const V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// `io.containerd.cgroups.v1` (fields not listed, such as rdma and network,
/// are skipped when decoding).
pub mod v1 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, repeated, tag = "1")]
        pub hugetlb: Vec<HugetlbStat>,
        #[prost(message, optional, tag = "2")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
        #[prost(message, optional, tag = "5")]
        pub blkio: Option<BlkIoStat>,
        #[prost(message, optional, tag = "9")]
        pub memory_oom_control: Option<MemoryOomControl>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HugetlbStat {
        #[prost(uint64, tag = "1")]
        pub usage: u64,
        #[prost(uint64, tag = "2")]
        pub max: u64,
        #[prost(uint64, tag = "3")]
        pub failcnt: u64,
        #[prost(string, tag = "4")]
        pub pagesize: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BlkIoStat {
        #[prost(message, repeated, tag = "1")]
        pub io_service_bytes_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "2")]
        pub io_serviced_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "3")]
        pub io_queued_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "4")]
        pub io_service_time_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "5")]
        pub io_wait_time_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "6")]
        pub io_merged_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "7")]
        pub io_time_recursive: Vec<BlkIoEntry>,
        #[prost(message, repeated, tag = "8")]
        pub sectors_recursive: Vec<BlkIoEntry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BlkIoEntry {
        #[prost(string, tag = "1")]
        pub op: String,
        #[prost(string, tag = "2")]
        pub device: String,
        #[prost(uint64, tag = "3")]
        pub major: u64,
        #[prost(uint64, tag = "4")]
        pub minor: u64,
        #[prost(uint64, tag = "5")]
        pub value: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
        #[prost(message, optional, tag = "2")]
        pub throttling: Option<Throttle>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
        #[prost(uint64, tag = "2")]
        pub kernel: u64,
        #[prost(uint64, tag = "3")]
        pub user: u64,
        #[prost(uint64, repeated, tag = "4")]
        pub per_cpu: Vec<u64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Throttle {
        #[prost(uint64, tag = "1")]
        pub periods: u64,
        #[prost(uint64, tag = "2")]
        pub throttled_periods: u64,
        #[prost(uint64, tag = "3")]
        pub throttled_time: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "1")]
        pub cache: u64,
        #[prost(uint64, tag = "2")]
        pub rss: u64,
        #[prost(uint64, tag = "3")]
        pub rss_huge: u64,
        #[prost(uint64, tag = "4")]
        pub mapped_file: u64,
        #[prost(uint64, tag = "5")]
        pub dirty: u64,
        #[prost(uint64, tag = "6")]
        pub writeback: u64,
        #[prost(uint64, tag = "7")]
        pub pg_pg_in: u64,
        #[prost(uint64, tag = "8")]
        pub pg_pg_out: u64,
        #[prost(uint64, tag = "9")]
        pub pg_fault: u64,
        #[prost(uint64, tag = "10")]
        pub pg_maj_fault: u64,
        #[prost(uint64, tag = "11")]
        pub inactive_anon: u64,
        #[prost(uint64, tag = "12")]
        pub active_anon: u64,
        #[prost(uint64, tag = "13")]
        pub inactive_file: u64,
        #[prost(uint64, tag = "14")]
        pub active_file: u64,
        #[prost(uint64, tag = "15")]
        pub unevictable: u64,
        #[prost(uint64, tag = "16")]
        pub hierarchical_memory_limit: u64,
        #[prost(uint64, tag = "17")]
        pub hierarchical_swap_limit: u64,
        #[prost(uint64, tag = "18")]
        pub total_cache: u64,
        #[prost(uint64, tag = "19")]
        pub total_rss: u64,
        #[prost(uint64, tag = "20")]
        pub total_rss_huge: u64,
        #[prost(uint64, tag = "21")]
        pub total_mapped_file: u64,
        #[prost(uint64, tag = "22")]
        pub total_dirty: u64,
        #[prost(uint64, tag = "23")]
        pub total_writeback: u64,
        #[prost(uint64, tag = "24")]
        pub total_pg_pg_in: u64,
        #[prost(uint64, tag = "25")]
        pub total_pg_pg_out: u64,
        #[prost(uint64, tag = "26")]
        pub total_pg_fault: u64,
        #[prost(uint64, tag = "27")]
        pub total_pg_maj_fault: u64,
        #[prost(uint64, tag = "28")]
        pub total_inactive_anon: u64,
        #[prost(uint64, tag = "29")]
        pub total_active_anon: u64,
        #[prost(uint64, tag = "30")]
        pub total_inactive_file: u64,
        #[prost(uint64, tag = "31")]
        pub total_active_file: u64,
        #[prost(uint64, tag = "32")]
        pub total_unevictable: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
        #[prost(message, optional, tag = "34")]
        pub swap: Option<MemoryEntry>,
        #[prost(message, optional, tag = "35")]
        pub kernel: Option<MemoryEntry>,
        #[prost(message, optional, tag = "36")]
        pub kernel_tcp: Option<MemoryEntry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
        #[prost(uint64, tag = "3")]
        pub max: u64,
        #[prost(uint64, tag = "4")]
        pub failcnt: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryOomControl {
        #[prost(uint64, tag = "1")]
        pub oom_kill_disable: u64,
        #[prost(uint64, tag = "2")]
        pub under_oom: u64,
        #[prost(uint64, tag = "3")]
        pub oom_kill: u64,
    }
}

/// `io.containerd.cgroups.v2` (rdma is skipped when decoding).
pub mod v2 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "1")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "2")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
        #[prost(message, optional, tag = "6")]
        pub io: Option<IoStat>,
        #[prost(message, repeated, tag = "7")]
        pub hugetlb: Vec<HugeTlbStat>,
        #[prost(message, optional, tag = "8")]
        pub memory_events: Option<MemoryEvents>,
    }
    pub use super::v1::PidsStat;
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(uint64, tag = "1")]
        pub usage_usec: u64,
        #[prost(uint64, tag = "2")]
        pub user_usec: u64,
        #[prost(uint64, tag = "3")]
        pub system_usec: u64,
        #[prost(uint64, tag = "4")]
        pub nr_periods: u64,
        #[prost(uint64, tag = "5")]
        pub nr_throttled: u64,
        #[prost(uint64, tag = "6")]
        pub throttled_usec: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "1")]
        pub anon: u64,
        #[prost(uint64, tag = "2")]
        pub file: u64,
        #[prost(uint64, tag = "3")]
        pub kernel_stack: u64,
        #[prost(uint64, tag = "4")]
        pub slab: u64,
        #[prost(uint64, tag = "5")]
        pub sock: u64,
        #[prost(uint64, tag = "6")]
        pub shmem: u64,
        #[prost(uint64, tag = "7")]
        pub file_mapped: u64,
        #[prost(uint64, tag = "8")]
        pub file_dirty: u64,
        #[prost(uint64, tag = "9")]
        pub file_writeback: u64,
        #[prost(uint64, tag = "10")]
        pub anon_thp: u64,
        #[prost(uint64, tag = "11")]
        pub inactive_anon: u64,
        #[prost(uint64, tag = "12")]
        pub active_anon: u64,
        #[prost(uint64, tag = "13")]
        pub inactive_file: u64,
        #[prost(uint64, tag = "14")]
        pub active_file: u64,
        #[prost(uint64, tag = "15")]
        pub unevictable: u64,
        #[prost(uint64, tag = "16")]
        pub slab_reclaimable: u64,
        #[prost(uint64, tag = "17")]
        pub slab_unreclaimable: u64,
        #[prost(uint64, tag = "18")]
        pub pgfault: u64,
        #[prost(uint64, tag = "19")]
        pub pgmajfault: u64,
        #[prost(uint64, tag = "20")]
        pub workingset_refault: u64,
        #[prost(uint64, tag = "21")]
        pub workingset_activate: u64,
        #[prost(uint64, tag = "22")]
        pub workingset_nodereclaim: u64,
        #[prost(uint64, tag = "23")]
        pub pgrefill: u64,
        #[prost(uint64, tag = "24")]
        pub pgscan: u64,
        #[prost(uint64, tag = "25")]
        pub pgsteal: u64,
        #[prost(uint64, tag = "26")]
        pub pgactivate: u64,
        #[prost(uint64, tag = "27")]
        pub pgdeactivate: u64,
        #[prost(uint64, tag = "28")]
        pub pglazyfree: u64,
        #[prost(uint64, tag = "29")]
        pub pglazyfreed: u64,
        #[prost(uint64, tag = "30")]
        pub thp_fault_alloc: u64,
        #[prost(uint64, tag = "31")]
        pub thp_collapse_alloc: u64,
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
        #[prost(uint64, tag = "34")]
        pub swap_usage: u64,
        #[prost(uint64, tag = "35")]
        pub swap_limit: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEvents {
        #[prost(uint64, tag = "1")]
        pub low: u64,
        #[prost(uint64, tag = "2")]
        pub high: u64,
        #[prost(uint64, tag = "3")]
        pub max: u64,
        #[prost(uint64, tag = "4")]
        pub oom: u64,
        #[prost(uint64, tag = "5")]
        pub oom_kill: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IoStat {
        #[prost(message, repeated, tag = "1")]
        pub usage: Vec<IoEntry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IoEntry {
        #[prost(uint64, tag = "1")]
        pub major: u64,
        #[prost(uint64, tag = "2")]
        pub minor: u64,
        #[prost(uint64, tag = "3")]
        pub rbytes: u64,
        #[prost(uint64, tag = "4")]
        pub wbytes: u64,
        #[prost(uint64, tag = "5")]
        pub rios: u64,
        #[prost(uint64, tag = "6")]
        pub wios: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HugeTlbStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub max: u64,
        #[prost(string, tag = "3")]
        pub pagesize: String,
    }
}
