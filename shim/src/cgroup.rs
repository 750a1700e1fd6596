//! A container's cgroup: where it is (found from its init pid when the task
//! is created, as the Go shim loads it), its metrics for `Stats` as
//! containerd's cgroups library reports them (`io.containerd.cgroups.v1.Metrics`
//! on a v1 or hybrid host, `io.containerd.cgroups.v2.Metrics` on a unified
//! one, written out here with their field numbers), and the v1 OOM watch
//! (an eventfd registered on `memory.oom_control`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use prost::Message;

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the host mounts cgroup2 alone at `/sys/fs/cgroup`.
pub fn is_unified() -> bool {
    rustix::fs::statfs(ROOT).map(|s| s.f_type == 0x6367_7270).unwrap_or(false)
}

/// Where a container's cgroup is.
#[derive(Debug, Clone)]
pub enum Cgroup {
    /// Per controller (`memory`, `cpuacct`, ...), the directory.
    V1(HashMap<String, PathBuf>),
    V2(PathBuf),
}

impl Cgroup {
    /// The cgroup of `pid`, from `/proc/<pid>/cgroup`.
    pub fn of_pid(pid: i32) -> std::io::Result<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        if is_unified() {
            let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
            return Ok(Cgroup::V2(Path::new(ROOT).join(path.trim_start_matches('/'))));
        }
        let mut dirs = HashMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            for c in controllers.split(',').filter(|c| !c.is_empty()) {
                let c = c.strip_prefix("name=").unwrap_or(c);
                let dir = Path::new(ROOT).join(c).join(path.trim_start_matches('/'));
                dirs.insert(c.to_string(), dir);
            }
        }
        Ok(Cgroup::V1(dirs))
    }

    /// The metrics, as the `Any` that `Stats` answers.
    pub fn metrics(&self) -> prost_types::Any {
        match self {
            Cgroup::V1(dirs) => prost_types::Any {
                type_url: "io.containerd.cgroups.v1.Metrics".to_string(),
                value: v1_metrics(dirs).encode_to_vec(),
            },
            Cgroup::V2(dir) => prost_types::Any {
                type_url: "io.containerd.cgroups.v2.Metrics".to_string(),
                value: v2_metrics(dir).encode_to_vec(),
            },
        }
    }

    /// The memory cgroup directory (v1), for the OOM watch.
    pub fn memory_dir(&self) -> Option<&Path> {
        match self {
            Cgroup::V1(dirs) => dirs.get("memory").map(|p| p.as_path()),
            Cgroup::V2(_) => None,
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(0);
    }
    s.parse().ok()
}

fn read_kv(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

pub use shim_protocol::cgroups::{v1, v2};

/// USER_HZ: the unit of `cpuacct.stat`.
const NANOS_PER_TICK: u64 = 1_000_000_000 / 100;

fn v1_metrics(dirs: &HashMap<String, PathBuf>) -> v1::Metrics {
    let mut m = v1::Metrics::default();
    if let Some(d) = dirs.get("pids") {
        m.pids = Some(v1::PidsStat {
            current: read_u64(&d.join("pids.current")).unwrap_or(0),
            limit: read_u64(&d.join("pids.max")).unwrap_or(0),
        });
    }
    if let Some(d) = dirs.get("cpuacct") {
        let stat = read_kv(&d.join("cpuacct.stat"));
        let per_cpu = std::fs::read_to_string(d.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let throttle = dirs.get("cpu").map(|c| {
            let s = read_kv(&c.join("cpu.stat"));
            v1::Throttle {
                periods: s.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: s.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: s.get("throttled_time").copied().unwrap_or(0),
            }
        });
        m.cpu = Some(v1::CpuStat {
            usage: Some(v1::CpuUsage {
                total: read_u64(&d.join("cpuacct.usage")).unwrap_or(0),
                kernel: stat.get("system").copied().unwrap_or(0) * NANOS_PER_TICK,
                user: stat.get("user").copied().unwrap_or(0) * NANOS_PER_TICK,
                per_cpu,
            }),
            throttling: throttle,
        });
    }
    if let Some(d) = dirs.get("memory") {
        let s = read_kv(&d.join("memory.stat"));
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        let entry = |prefix: &str| -> Option<v1::MemoryEntry> {
            let usage = read_u64(&d.join(format!("{prefix}.usage_in_bytes")))?;
            Some(v1::MemoryEntry {
                usage,
                limit: read_u64(&d.join(format!("{prefix}.limit_in_bytes"))).unwrap_or(0),
                max: read_u64(&d.join(format!("{prefix}.max_usage_in_bytes"))).unwrap_or(0),
                failcnt: read_u64(&d.join(format!("{prefix}.failcnt"))).unwrap_or(0),
            })
        };
        m.memory = Some(v1::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: entry("memory"),
            swap: entry("memory.memsw"),
            kernel: entry("memory.kmem"),
            kernel_tcp: entry("memory.kmem.tcp"),
        });
        let oom = read_kv(&d.join("memory.oom_control"));
        m.memory_oom_control = Some(v1::MemoryOomControl {
            oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
            under_oom: oom.get("under_oom").copied().unwrap_or(0),
            oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
        });
    }
    m
}

fn v2_metrics(dir: &Path) -> v2::Metrics {
    let cpu = read_kv(&dir.join("cpu.stat"));
    let mem = read_kv(&dir.join("memory.stat"));
    v2::Metrics {
        pids: Some(v2::PidsStat {
            current: read_u64(&dir.join("pids.current")).unwrap_or(0),
            limit: read_u64(&dir.join("pids.max")).unwrap_or(0),
        }),
        cpu: Some(v2::CpuStat {
            usage_usec: cpu.get("usage_usec").copied().unwrap_or(0),
            user_usec: cpu.get("user_usec").copied().unwrap_or(0),
            system_usec: cpu.get("system_usec").copied().unwrap_or(0),
            nr_periods: cpu.get("nr_periods").copied().unwrap_or(0),
            nr_throttled: cpu.get("nr_throttled").copied().unwrap_or(0),
            throttled_usec: cpu.get("throttled_usec").copied().unwrap_or(0),
        }),
        memory: Some(v2::MemoryStat {
            anon: mem.get("anon").copied().unwrap_or(0),
            file: mem.get("file").copied().unwrap_or(0),
            usage: read_u64(&dir.join("memory.current")).unwrap_or(0),
            usage_limit: read_u64(&dir.join("memory.max")).unwrap_or(0),
            swap_usage: read_u64(&dir.join("memory.swap.current")).unwrap_or(0),
            swap_limit: read_u64(&dir.join("memory.swap.max")).unwrap_or(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Registers an eventfd for OOM notifications on a v1 memory cgroup; it
/// becomes readable on every OOM, and once more when the cgroup is removed.
pub fn oom_eventfd(memory_dir: &Path) -> std::io::Result<OwnedFd> {
    let control = std::fs::File::open(memory_dir.join("memory.oom_control"))?;
    let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)?;
    std::fs::write(memory_dir.join("cgroup.event_control"), format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()))?;
    Ok(efd)
}

/// Moves `pid` into the cgroup `path` (the runc options' `shim_cgroup`).
pub fn add_pid(path: &str, pid: u32) -> std::io::Result<()> {
    let rel = path.trim_start_matches('/');
    if is_unified() {
        return std::fs::write(Path::new(ROOT).join(rel).join("cgroup.procs"), pid.to_string());
    }
    let mut last = Ok(());
    for entry in std::fs::read_dir(ROOT)? {
        let dir = entry?.path().join(rel);
        if dir.is_dir() {
            last = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_field_numbers() {
        // Metrics{pids: {current: 2}} = field 2 (len-delimited) holding
        // field 1 varint 2.
        let m = v1::Metrics { pids: Some(v1::PidsStat { current: 2, limit: 0 }), ..Default::default() };
        assert_eq!(m.encode_to_vec(), vec![0x12, 0x02, 0x08, 0x02]);
        let mem =
            v1::MemoryStat { usage: Some(v1::MemoryEntry { usage: 1, ..Default::default() }), ..Default::default() };
        // Field 33, wire type 2: key (33 << 3 | 2) = 266 = 0x8a 0x02.
        assert_eq!(&mem.encode_to_vec()[..2], &[0x8a, 0x02]);
    }

    #[test]
    fn our_own_cgroup_reads() {
        let cg = Cgroup::of_pid(std::process::id() as i32).unwrap();
        let any = cg.metrics();
        assert!(any.type_url.starts_with("io.containerd.cgroups.v"));
    }
}
