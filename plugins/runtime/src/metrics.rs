//! Per-container metrics for the daemon's metrics endpoint, as containerd
//! 1.6's cgroups task monitor exposes them (`metrics/cgroups/v1` and `v2`):
//! the same names (`container_cpu_total_nanoseconds`,
//! `container_memory_usage_usage_bytes`, ...), help texts and labels
//! (`container_id`, `namespace`, plus `cpu`, `page`, `op`/`device`/`major`/
//! `minor` where containerd has them), one sample per task of the manager.
//!
//! The numbers come from each shim's `Stats` call, as containerd takes
//! them, so they are whatever cgroup version the host runs and whichever
//! shim serves the task (ours or Go's). Served to the core as the internal
//! `crated.metrics.v1.Metrics/Collect` (`crated_plugin_api::metrics`).

use std::{sync::Arc, time::Duration};

use crated_plugin_api::metrics::{CollectRequest, CollectResponse, TextWriter};
use prost::Message;
use shim_protocol::{
    cgroups::{v1, v2, V1_TYPE_URL, V2_TYPE_URL},
    task as shim,
};

use crate::manager::ShimManager;

/// How long one shim may take to answer `Stats` before its task is left
/// out of a scrape (the core gives the whole collection a few seconds).
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// One task's metrics, decoded (boxed: the v1 message is large).
enum Stats {
    V1(Box<v1::Metrics>),
    V2(Box<v2::Metrics>),
}

struct TaskStats {
    id: String,
    namespace: String,
    stats: Stats,
}

/// A gauge with one value per task.
struct Scalar<M> {
    name: &'static str,
    help: &'static str,
    get: fn(&M) -> Option<u64>,
}

/// The answer to `Collect`: every task's metrics as Prometheus text.
pub async fn collect(manager: Arc<ShimManager>, _: CollectRequest) -> CollectResponse {
    let tasks = manager.all();
    let stats = futures::future::join_all(tasks.iter().map(|t| async move {
        let req = shim::StatsRequest { id: t.id().into() };
        let any = match tokio::time::timeout(STATS_TIMEOUT, t.client.stats(&req)).await {
            Ok(Ok(r)) => r.stats?,
            Ok(Err(e)) => {
                crated_plugin_api::tracing::debug!(id = t.id(), "metrics: stats: {}", e.message);
                return None;
            }
            Err(_) => {
                crated_plugin_api::tracing::warn!(id = t.id(), "metrics: the shim did not answer Stats in time");
                return None;
            }
        };
        let stats = if any.type_url.ends_with(V1_TYPE_URL) {
            Stats::V1(Box::new(v1::Metrics::decode(&any.value[..]).ok()?))
        } else if any.type_url.ends_with(V2_TYPE_URL) {
            Stats::V2(Box::new(v2::Metrics::decode(&any.value[..]).ok()?))
        } else {
            return None;
        };
        Some(TaskStats { id: t.id().to_string(), namespace: t.namespace().to_string(), stats })
    }))
    .await;
    let stats: Vec<TaskStats> = stats.into_iter().flatten().collect();
    CollectResponse { text: render(&stats) }
}

/// The text of `tasks`: each family once, with a sample per task.
fn render(tasks: &[TaskStats]) -> String {
    let mut w = TextWriter::default();
    let v1: Vec<(&TaskStats, &v1::Metrics)> = tasks
        .iter()
        .filter_map(|t| match &t.stats {
            Stats::V1(m) => Some((t, &**m)),
            Stats::V2(_) => None,
        })
        .collect();
    let v2: Vec<(&TaskStats, &v2::Metrics)> = tasks
        .iter()
        .filter_map(|t| match &t.stats {
            Stats::V2(m) => Some((t, &**m)),
            Stats::V1(_) => None,
        })
        .collect();
    if !v1.is_empty() {
        scalars(&mut w, V1, &v1);
        labelled(&mut w, "container_per_cpu_nanoseconds", "The total cpu time per cpu", "gauge", &v1, |m| {
            let usage = m.cpu.as_ref().and_then(|c| c.usage.as_ref());
            usage.map(|u| u.per_cpu.iter().enumerate().map(|(i, v)| (vec![("cpu", i.to_string())], *v)).collect())
        });
        for (name, help, get) in HUGETLB {
            labelled(&mut w, name, help, "gauge", &v1, |m| {
                Some(m.hugetlb.iter().map(|h| (vec![("page", h.pagesize.clone())], get(h))).collect())
            });
        }
        for (name, help, get) in BLKIO {
            labelled(&mut w, name, help, "gauge", &v1, |m| {
                let entries = get(m.blkio.as_ref()?);
                Some(
                    entries
                        .iter()
                        .map(|e| {
                            let labels = vec![
                                ("device", e.device.clone()),
                                ("major", e.major.to_string()),
                                ("minor", e.minor.to_string()),
                                ("op", e.op.clone()),
                            ];
                            (labels, e.value)
                        })
                        .collect(),
                )
            });
        }
        labelled(
            &mut w,
            "container_memory_oom_total",
            "The number of times a container has received an oom event",
            "counter",
            &v1,
            |m| Some(vec![(vec![], m.memory_oom_control.as_ref()?.oom_kill)]),
        );
    }
    if !v2.is_empty() {
        scalars(&mut w, V2, &v2);
        for (name, help, get) in IO {
            labelled(&mut w, name, help, "gauge", &v2, |m| {
                let io = m.io.as_ref()?;
                Some(
                    io.usage
                        .iter()
                        .map(|e| (vec![("major", e.major.to_string()), ("minor", e.minor.to_string())], get(e)))
                        .collect(),
                )
            });
        }
    }
    w.finish()
}

fn scalars<M>(w: &mut TextWriter, table: &[Scalar<M>], tasks: &[(&TaskStats, &M)]) {
    for s in table {
        let values: Vec<(&TaskStats, u64)> = tasks.iter().filter_map(|(t, m)| Some((*t, (s.get)(m)?))).collect();
        if values.is_empty() {
            continue;
        }
        w.family(s.name, s.help, "gauge");
        for (t, v) in values {
            w.sample(s.name, &[("container_id", &t.id), ("namespace", &t.namespace)], v as f64);
        }
    }
}

/// A family whose samples carry labels beyond the task's. Labels are
/// written sorted by name, as Go's client writes them.
fn labelled<M>(
    w: &mut TextWriter,
    name: &str,
    help: &str,
    kind: &str,
    tasks: &[(&TaskStats, &M)],
    values: impl Fn(&M) -> Option<Vec<(Vec<(&'static str, String)>, u64)>>,
) {
    let mut started = false;
    for (t, m) in tasks {
        for (extra, v) in values(m).unwrap_or_default() {
            if !started {
                w.family(name, help, kind);
                started = true;
            }
            let mut labels: Vec<(&str, &str)> = vec![("container_id", &t.id), ("namespace", &t.namespace)];
            labels.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
            labels.sort_unstable_by_key(|(k, _)| *k);
            w.sample(name, &labels, v as f64);
        }
    }
}

type HugetlbGet = fn(&v1::HugetlbStat) -> u64;
const HUGETLB: &[(&str, &str, HugetlbGet)] = &[
    ("container_hugetlb_usage_bytes", "The hugetlb usage", |h| h.usage),
    ("container_hugetlb_failcnt_total", "The hugetlb failcnt", |h| h.failcnt),
    ("container_hugetlb_max_bytes", "The hugetlb maximum usage", |h| h.max),
];

type BlkioGet = fn(&v1::BlkIoStat) -> &Vec<v1::BlkIoEntry>;
const BLKIO: &[(&str, &str, BlkioGet)] = &[
    ("container_blkio_io_merged_recursive_total", "The blkio io merged recursive", |b| &b.io_merged_recursive),
    ("container_blkio_io_queued_recursive_total", "The blkio io queued recursive", |b| &b.io_queued_recursive),
    ("container_blkio_io_service_bytes_recursive_bytes", "The blkio io service bytes recursive", |b| {
        &b.io_service_bytes_recursive
    }),
    ("container_blkio_io_service_time_recursive_total", "The blkio io service time recursive", |b| {
        &b.io_service_time_recursive
    }),
    ("container_blkio_io_serviced_recursive_total", "The blkio io serviced recursive", |b| &b.io_serviced_recursive),
    ("container_blkio_io_time_recursive_total", "The blkio io time recursive", |b| &b.io_time_recursive),
    ("container_blkio_sectors_recursive_total", "The blkio sectors recursive", |b| &b.sectors_recursive),
];

type IoGet = fn(&v2::IoEntry) -> u64;
const IO: &[(&str, &str, IoGet)] = &[
    ("container_io_rbytes_bytes", "IO bytes read", |e| e.rbytes),
    ("container_io_wbytes_bytes", "IO bytes written", |e| e.wbytes),
    ("container_io_rios_total", "Number of read IOs", |e| e.rios),
    ("container_io_wios_total", "Number of write IOs", |e| e.wios),
];

const V1: &[Scalar<v1::Metrics>] = &[
    Scalar {
        name: "container_pids_limit",
        help: "The limit to the number of pids allowed",
        get: |m| Some(m.pids.as_ref()?.limit),
    },
    Scalar {
        name: "container_pids_current",
        help: "The current number of pids",
        get: |m| Some(m.pids.as_ref()?.current),
    },
    Scalar {
        name: "container_cpu_total_nanoseconds",
        help: "The total cpu time",
        get: |m| Some(m.cpu.as_ref()?.usage.as_ref()?.total),
    },
    Scalar {
        name: "container_cpu_kernel_nanoseconds",
        help: "The total kernel cpu time",
        get: |m| Some(m.cpu.as_ref()?.usage.as_ref()?.kernel),
    },
    Scalar {
        name: "container_cpu_user_nanoseconds",
        help: "The total user cpu time",
        get: |m| Some(m.cpu.as_ref()?.usage.as_ref()?.user),
    },
    Scalar {
        name: "container_cpu_throttle_periods_total",
        help: "The total cpu throttle periods",
        get: |m| Some(m.cpu.as_ref()?.throttling.as_ref()?.periods),
    },
    Scalar {
        name: "container_cpu_throttled_periods_total",
        help: "The total cpu throttled periods",
        get: |m| Some(m.cpu.as_ref()?.throttling.as_ref()?.throttled_periods),
    },
    Scalar {
        name: "container_cpu_throttled_time_nanoseconds",
        help: "The total cpu throttled time",
        get: |m| Some(m.cpu.as_ref()?.throttling.as_ref()?.throttled_time),
    },
    Scalar {
        name: "container_memory_cache_bytes",
        help: "The cache amount used",
        get: |m| Some(m.memory.as_ref()?.cache),
    },
    Scalar { name: "container_memory_rss_bytes", help: "The rss amount used", get: |m| Some(m.memory.as_ref()?.rss) },
    Scalar {
        name: "container_memory_rss_huge_bytes",
        help: "The rss_huge amount used",
        get: |m| Some(m.memory.as_ref()?.rss_huge),
    },
    Scalar {
        name: "container_memory_mapped_file_bytes",
        help: "The mapped_file amount used",
        get: |m| Some(m.memory.as_ref()?.mapped_file),
    },
    Scalar { name: "container_memory_dirty_bytes", help: "The dirty amount", get: |m| Some(m.memory.as_ref()?.dirty) },
    Scalar {
        name: "container_memory_writeback_bytes",
        help: "The writeback amount",
        get: |m| Some(m.memory.as_ref()?.writeback),
    },
    Scalar {
        name: "container_memory_pgpgin_bytes",
        help: "The pgpgin amount",
        get: |m| Some(m.memory.as_ref()?.pg_pg_in),
    },
    Scalar {
        name: "container_memory_pgpgout_bytes",
        help: "The pgpgout amount",
        get: |m| Some(m.memory.as_ref()?.pg_pg_out),
    },
    Scalar {
        name: "container_memory_pgfault_bytes",
        help: "The pgfault amount",
        get: |m| Some(m.memory.as_ref()?.pg_fault),
    },
    Scalar {
        name: "container_memory_pgmajfault_bytes",
        help: "The pgmajfault amount",
        get: |m| Some(m.memory.as_ref()?.pg_maj_fault),
    },
    Scalar {
        name: "container_memory_inactive_anon_bytes",
        help: "The inactive_anon amount",
        get: |m| Some(m.memory.as_ref()?.inactive_anon),
    },
    Scalar {
        name: "container_memory_active_anon_bytes",
        help: "The active_anon amount",
        get: |m| Some(m.memory.as_ref()?.active_anon),
    },
    Scalar {
        name: "container_memory_inactive_file_bytes",
        help: "The inactive_file amount",
        get: |m| Some(m.memory.as_ref()?.inactive_file),
    },
    Scalar {
        name: "container_memory_active_file_bytes",
        help: "The active_file amount",
        get: |m| Some(m.memory.as_ref()?.active_file),
    },
    Scalar {
        name: "container_memory_unevictable_bytes",
        help: "The unevictable amount",
        get: |m| Some(m.memory.as_ref()?.unevictable),
    },
    Scalar {
        name: "container_memory_hierarchical_memory_limit_bytes",
        help: "The hierarchical_memory_limit amount",
        get: |m| Some(m.memory.as_ref()?.hierarchical_memory_limit),
    },
    Scalar {
        name: "container_memory_hierarchical_memsw_limit_bytes",
        help: "The hierarchical_memsw_limit amount",
        get: |m| Some(m.memory.as_ref()?.hierarchical_swap_limit),
    },
    Scalar {
        name: "container_memory_total_cache_bytes",
        help: "The total_cache amount used",
        get: |m| Some(m.memory.as_ref()?.total_cache),
    },
    Scalar {
        name: "container_memory_total_rss_bytes",
        help: "The total_rss amount used",
        get: |m| Some(m.memory.as_ref()?.total_rss),
    },
    Scalar {
        name: "container_memory_total_rss_huge_bytes",
        help: "The total_rss_huge amount used",
        get: |m| Some(m.memory.as_ref()?.total_rss_huge),
    },
    Scalar {
        name: "container_memory_total_mapped_file_bytes",
        help: "The total_mapped_file amount used",
        get: |m| Some(m.memory.as_ref()?.total_mapped_file),
    },
    Scalar {
        name: "container_memory_total_dirty_bytes",
        help: "The total_dirty amount",
        get: |m| Some(m.memory.as_ref()?.total_dirty),
    },
    Scalar {
        name: "container_memory_total_writeback_bytes",
        help: "The total_writeback amount",
        get: |m| Some(m.memory.as_ref()?.total_writeback),
    },
    Scalar {
        name: "container_memory_total_pgpgin_bytes",
        help: "The total_pgpgin amount",
        get: |m| Some(m.memory.as_ref()?.total_pg_pg_in),
    },
    Scalar {
        name: "container_memory_total_pgpgout_bytes",
        help: "The total_pgpgout amount",
        get: |m| Some(m.memory.as_ref()?.total_pg_pg_out),
    },
    Scalar {
        name: "container_memory_total_pgfault_bytes",
        help: "The total_pgfault amount",
        get: |m| Some(m.memory.as_ref()?.total_pg_fault),
    },
    Scalar {
        name: "container_memory_total_pgmajfault_bytes",
        help: "The total_pgmajfault amount",
        get: |m| Some(m.memory.as_ref()?.total_pg_maj_fault),
    },
    Scalar {
        name: "container_memory_total_inactive_anon_bytes",
        help: "The total_inactive_anon amount",
        get: |m| Some(m.memory.as_ref()?.total_inactive_anon),
    },
    Scalar {
        name: "container_memory_total_active_anon_bytes",
        help: "The total_active_anon amount",
        get: |m| Some(m.memory.as_ref()?.total_active_anon),
    },
    Scalar {
        name: "container_memory_total_inactive_file_bytes",
        help: "The total_inactive_file amount",
        get: |m| Some(m.memory.as_ref()?.total_inactive_file),
    },
    Scalar {
        name: "container_memory_total_active_file_bytes",
        help: "The total_active_file amount",
        get: |m| Some(m.memory.as_ref()?.total_active_file),
    },
    Scalar {
        name: "container_memory_total_unevictable_bytes",
        help: "The total_unevictable amount",
        get: |m| Some(m.memory.as_ref()?.total_unevictable),
    },
    Scalar {
        name: "container_memory_usage_failcnt_total",
        help: "The usage failcnt",
        get: |m| Some(m.memory.as_ref()?.usage.as_ref()?.failcnt),
    },
    Scalar {
        name: "container_memory_usage_limit_bytes",
        help: "The memory limit",
        get: |m| Some(m.memory.as_ref()?.usage.as_ref()?.limit),
    },
    Scalar {
        name: "container_memory_usage_max_bytes",
        help: "The memory maximum usage",
        get: |m| Some(m.memory.as_ref()?.usage.as_ref()?.max),
    },
    Scalar {
        name: "container_memory_usage_usage_bytes",
        help: "The memory usage",
        get: |m| Some(m.memory.as_ref()?.usage.as_ref()?.usage),
    },
    Scalar {
        name: "container_memory_swap_failcnt_total",
        help: "The swap failcnt",
        get: |m| Some(m.memory.as_ref()?.swap.as_ref()?.failcnt),
    },
    Scalar {
        name: "container_memory_swap_limit_bytes",
        help: "The swap limit",
        get: |m| Some(m.memory.as_ref()?.swap.as_ref()?.limit),
    },
    Scalar {
        name: "container_memory_swap_max_bytes",
        help: "The swap maximum usage",
        get: |m| Some(m.memory.as_ref()?.swap.as_ref()?.max),
    },
    Scalar {
        name: "container_memory_swap_usage_bytes",
        help: "The swap usage",
        get: |m| Some(m.memory.as_ref()?.swap.as_ref()?.usage),
    },
    Scalar {
        name: "container_memory_kernel_failcnt_total",
        help: "The kernel failcnt",
        get: |m| Some(m.memory.as_ref()?.kernel.as_ref()?.failcnt),
    },
    Scalar {
        name: "container_memory_kernel_limit_bytes",
        help: "The kernel limit",
        get: |m| Some(m.memory.as_ref()?.kernel.as_ref()?.limit),
    },
    Scalar {
        name: "container_memory_kernel_max_bytes",
        help: "The kernel maximum usage",
        get: |m| Some(m.memory.as_ref()?.kernel.as_ref()?.max),
    },
    Scalar {
        name: "container_memory_kernel_usage_bytes",
        help: "The kernel usage",
        get: |m| Some(m.memory.as_ref()?.kernel.as_ref()?.usage),
    },
    Scalar {
        name: "container_memory_kerneltcp_failcnt_total",
        help: "The kerneltcp failcnt",
        get: |m| Some(m.memory.as_ref()?.kernel_tcp.as_ref()?.failcnt),
    },
    Scalar {
        name: "container_memory_kerneltcp_limit_bytes",
        help: "The kerneltcp limit",
        get: |m| Some(m.memory.as_ref()?.kernel_tcp.as_ref()?.limit),
    },
    Scalar {
        name: "container_memory_kerneltcp_max_bytes",
        help: "The kerneltcp maximum usage",
        get: |m| Some(m.memory.as_ref()?.kernel_tcp.as_ref()?.max),
    },
    Scalar {
        name: "container_memory_kerneltcp_usage_bytes",
        help: "The kerneltcp usage",
        get: |m| Some(m.memory.as_ref()?.kernel_tcp.as_ref()?.usage),
    },
];
const V2: &[Scalar<v2::Metrics>] = &[
    Scalar {
        name: "container_pids_limit",
        help: "The limit to the number of pids allowed (cgroup v2)",
        get: |m| Some(m.pids.as_ref()?.limit),
    },
    Scalar {
        name: "container_pids_current",
        help: "The current number of pids (cgroup v2)",
        get: |m| Some(m.pids.as_ref()?.current),
    },
    Scalar {
        name: "container_cpu_usage_usec_microseconds",
        help: "Total cpu usage (cgroup v2)",
        get: |m| Some(m.cpu.as_ref()?.usage_usec),
    },
    Scalar {
        name: "container_cpu_user_usec_microseconds",
        help: "Current cpu usage in user space (cgroup v2)",
        get: |m| Some(m.cpu.as_ref()?.user_usec),
    },
    Scalar {
        name: "container_cpu_system_usec_microseconds",
        help: "Current cpu usage in kernel space (cgroup v2)",
        get: |m| Some(m.cpu.as_ref()?.system_usec),
    },
    Scalar {
        name: "container_cpu_nr_periods_total",
        help: "Current cpu number of periods (only if controller is enabled)",
        get: |m| Some(m.cpu.as_ref()?.nr_periods),
    },
    Scalar {
        name: "container_cpu_nr_throttled_total",
        help: "Total number of times tasks have been throttled (only if controller is enabled)",
        get: |m| Some(m.cpu.as_ref()?.nr_throttled),
    },
    Scalar {
        name: "container_cpu_throttled_usec_microseconds",
        help: "Total time duration for which tasks have been throttled. (only if controller is enabled)",
        get: |m| Some(m.cpu.as_ref()?.throttled_usec),
    },
    Scalar {
        name: "container_memory_usage_bytes",
        help: "Current memory usage (cgroup v2)",
        get: |m| Some(m.memory.as_ref()?.usage),
    },
    Scalar {
        name: "container_memory_usage_limit_bytes",
        help: "Current memory usage limit (cgroup v2)",
        get: |m| Some(m.memory.as_ref()?.usage_limit),
    },
    Scalar {
        name: "container_memory_swap_usage_bytes",
        help: "Current swap usage (cgroup v2)",
        get: |m| Some(m.memory.as_ref()?.swap_usage),
    },
    Scalar {
        name: "container_memory_swap_limit_bytes",
        help: "Current swap usage limit (cgroup v2)",
        get: |m| Some(m.memory.as_ref()?.swap_limit),
    },
    Scalar {
        name: "container_memory_file_mapped_bytes",
        help: "The file_mapped amount",
        get: |m| Some(m.memory.as_ref()?.file_mapped),
    },
    Scalar {
        name: "container_memory_file_dirty_bytes",
        help: "The file_dirty amount",
        get: |m| Some(m.memory.as_ref()?.file_dirty),
    },
    Scalar {
        name: "container_memory_file_writeback_bytes",
        help: "The file_writeback amount",
        get: |m| Some(m.memory.as_ref()?.file_writeback),
    },
    Scalar {
        name: "container_memory_pgactivate_bytes",
        help: "The pgactivate amount",
        get: |m| Some(m.memory.as_ref()?.pgactivate),
    },
    Scalar {
        name: "container_memory_pgdeactivate_bytes",
        help: "The pgdeactivate amount",
        get: |m| Some(m.memory.as_ref()?.pgdeactivate),
    },
    Scalar {
        name: "container_memory_pgfault_bytes",
        help: "The pgfault amount",
        get: |m| Some(m.memory.as_ref()?.pgfault),
    },
    Scalar {
        name: "container_memory_pgmajfault_bytes",
        help: "The pgmajfault amount",
        get: |m| Some(m.memory.as_ref()?.pgmajfault),
    },
    Scalar {
        name: "container_memory_pglazyfree_bytes",
        help: "The pglazyfree amount",
        get: |m| Some(m.memory.as_ref()?.pglazyfree),
    },
    Scalar {
        name: "container_memory_pgrefill_bytes",
        help: "The pgrefill amount",
        get: |m| Some(m.memory.as_ref()?.pgrefill),
    },
    Scalar {
        name: "container_memory_pglazyfreed_bytes",
        help: "The pglazyfreed amount",
        get: |m| Some(m.memory.as_ref()?.pglazyfreed),
    },
    Scalar {
        name: "container_memory_pgscan_bytes",
        help: "The pgscan amount",
        get: |m| Some(m.memory.as_ref()?.pgscan),
    },
    Scalar {
        name: "container_memory_pgsteal_bytes",
        help: "The pgsteal amount",
        get: |m| Some(m.memory.as_ref()?.pgsteal),
    },
    Scalar {
        name: "container_memory_inactive_anon_bytes",
        help: "The inactive_anon amount",
        get: |m| Some(m.memory.as_ref()?.inactive_anon),
    },
    Scalar {
        name: "container_memory_active_anon_bytes",
        help: "The active_anon amount",
        get: |m| Some(m.memory.as_ref()?.active_anon),
    },
    Scalar {
        name: "container_memory_inactive_file_bytes",
        help: "The inactive_file amount",
        get: |m| Some(m.memory.as_ref()?.inactive_file),
    },
    Scalar {
        name: "container_memory_active_file_bytes",
        help: "The active_file amount",
        get: |m| Some(m.memory.as_ref()?.active_file),
    },
    Scalar {
        name: "container_memory_unevictable_bytes",
        help: "The unevictable amount",
        get: |m| Some(m.memory.as_ref()?.unevictable),
    },
    Scalar { name: "container_memory_anon_bytes", help: "The anon amount", get: |m| Some(m.memory.as_ref()?.anon) },
    Scalar { name: "container_memory_file_bytes", help: "The file amount", get: |m| Some(m.memory.as_ref()?.file) },
    Scalar {
        name: "container_memory_kernel_stack_bytes",
        help: "The kernel_stack amount",
        get: |m| Some(m.memory.as_ref()?.kernel_stack),
    },
    Scalar { name: "container_memory_slab_bytes", help: "The slab amount", get: |m| Some(m.memory.as_ref()?.slab) },
    Scalar { name: "container_memory_sock_bytes", help: "The sock amount", get: |m| Some(m.memory.as_ref()?.sock) },
    Scalar { name: "container_memory_shmem_bytes", help: "The shmem amount", get: |m| Some(m.memory.as_ref()?.shmem) },
    Scalar {
        name: "container_memory_anon_thp_bytes",
        help: "The anon_thp amount",
        get: |m| Some(m.memory.as_ref()?.anon_thp),
    },
    Scalar {
        name: "container_memory_slab_reclaimable_bytes",
        help: "The slab_reclaimable amount",
        get: |m| Some(m.memory.as_ref()?.slab_reclaimable),
    },
    Scalar {
        name: "container_memory_slab_unreclaimable_bytes",
        help: "The slab_unreclaimable amount",
        get: |m| Some(m.memory.as_ref()?.slab_unreclaimable),
    },
    Scalar {
        name: "container_memory_workingset_refault_bytes",
        help: "The workingset_refault amount",
        get: |m| Some(m.memory.as_ref()?.workingset_refault),
    },
    Scalar {
        name: "container_memory_workingset_activate_bytes",
        help: "The workingset_activate amount",
        get: |m| Some(m.memory.as_ref()?.workingset_activate),
    },
    Scalar {
        name: "container_memory_workingset_nodereclaim_bytes",
        help: "The workingset_nodereclaim amount",
        get: |m| Some(m.memory.as_ref()?.workingset_nodereclaim),
    },
    Scalar {
        name: "container_memory_thp_fault_alloc_bytes",
        help: "The thp_fault_alloc amount",
        get: |m| Some(m.memory.as_ref()?.thp_fault_alloc),
    },
    Scalar {
        name: "container_memory_thp_collapse_alloc_bytes",
        help: "The thp_collapse_alloc amount",
        get: |m| Some(m.memory.as_ref()?.thp_collapse_alloc),
    },
    Scalar {
        name: "container_memory_oom_total",
        help: "The number of times a container has received an oom event",
        get: |m| Some(m.memory_events.as_ref()?.oom),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_names_labels_and_values_as_containerd() {
        let m = v1::Metrics {
            cpu: Some(v1::CpuStat {
                usage: Some(v1::CpuUsage { total: 1500, per_cpu: vec![1000, 500], ..Default::default() }),
                throttling: None,
            }),
            memory: Some(v1::MemoryStat {
                usage: Some(v1::MemoryEntry { usage: 4096, ..Default::default() }),
                ..Default::default()
            }),
            blkio: Some(v1::BlkIoStat {
                io_service_bytes_recursive: vec![v1::BlkIoEntry {
                    op: "Read".into(),
                    device: "/dev/sda".into(),
                    major: 8,
                    minor: 0,
                    value: 7,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(&[TaskStats { id: "c1".into(), namespace: "default".into(), stats: Stats::V1(Box::new(m)) }]);
        assert!(text.contains("# HELP container_cpu_total_nanoseconds The total cpu time\n# TYPE container_cpu_total_nanoseconds gauge\ncontainer_cpu_total_nanoseconds{container_id=\"c1\",namespace=\"default\"} 1500\n"), "{text}");
        assert!(text.contains("container_memory_usage_usage_bytes{container_id=\"c1\",namespace=\"default\"} 4096\n"));
        assert!(
            text.contains("container_per_cpu_nanoseconds{container_id=\"c1\",cpu=\"1\",namespace=\"default\"} 500\n")
        );
        assert!(text.contains("container_blkio_io_service_bytes_recursive_bytes{container_id=\"c1\",device=\"/dev/sda\",major=\"8\",minor=\"0\",namespace=\"default\",op=\"Read\"} 7\n"));
        // No pids in the stats: no pids family.
        assert!(!text.contains("container_pids_current"));
    }

    #[test]
    fn v2_names() {
        let m = v2::Metrics {
            cpu: Some(v2::CpuStat { usage_usec: 12, ..Default::default() }),
            memory: Some(v2::MemoryStat { usage: 99, ..Default::default() }),
            ..Default::default()
        };
        let text = render(&[TaskStats { id: "c2".into(), namespace: "ns".into(), stats: Stats::V2(Box::new(m)) }]);
        assert!(
            text.contains("container_cpu_usage_usec_microseconds{container_id=\"c2\",namespace=\"ns\"} 12\n"),
            "{text}"
        );
        assert!(text.contains("container_memory_usage_bytes{container_id=\"c2\",namespace=\"ns\"} 99\n"));
    }
}
