//! A task's cgroup v1 metrics (`io.containerd.cgroups.v1.Metrics`) as
//! `ctr tasks metrics` prints them: decoded from the wire by a schema of
//! the message (field number, Go JSON name, kind), written as Go's
//! `encoding/json` writes the gogo struct (`omitempty` everywhere) or as
//! the table of the fields ctr picks.

use std::io::Write;

use crate::gojson::J;

pub const METRICS_V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot convert metric data to cgroups.Metrics or windows.Statistics")]
    UnknownType,
    #[error("decoding metrics: {0}")]
    Decode(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Copy)]
enum K {
    U64,
    Str,
    Msg(&'static [Fd]),
    RepU64,
    RepMsg(&'static [Fd]),
}

#[derive(Clone, Copy)]
struct Fd(u32, &'static str, K);

const HUGETLB: &[Fd] =
    &[Fd(1, "usage", K::U64), Fd(2, "max", K::U64), Fd(3, "failcnt", K::U64), Fd(4, "pagesize", K::Str)];
const PIDS: &[Fd] = &[Fd(1, "current", K::U64), Fd(2, "limit", K::U64)];
const CPU_USAGE: &[Fd] =
    &[Fd(1, "total", K::U64), Fd(2, "kernel", K::U64), Fd(3, "user", K::U64), Fd(4, "per_cpu", K::RepU64)];
const THROTTLE: &[Fd] =
    &[Fd(1, "periods", K::U64), Fd(2, "throttled_periods", K::U64), Fd(3, "throttled_time", K::U64)];
const CPU: &[Fd] = &[Fd(1, "usage", K::Msg(CPU_USAGE)), Fd(2, "throttling", K::Msg(THROTTLE))];
const MEMORY_ENTRY: &[Fd] =
    &[Fd(1, "limit", K::U64), Fd(2, "usage", K::U64), Fd(3, "max", K::U64), Fd(4, "failcnt", K::U64)];
const MEMORY: &[Fd] = &[
    Fd(1, "cache", K::U64),
    Fd(2, "rss", K::U64),
    Fd(3, "rss_huge", K::U64),
    Fd(4, "mapped_file", K::U64),
    Fd(5, "dirty", K::U64),
    Fd(6, "writeback", K::U64),
    Fd(7, "pg_pg_in", K::U64),
    Fd(8, "pg_pg_out", K::U64),
    Fd(9, "pg_fault", K::U64),
    Fd(10, "pg_maj_fault", K::U64),
    Fd(11, "inactive_anon", K::U64),
    Fd(12, "active_anon", K::U64),
    Fd(13, "inactive_file", K::U64),
    Fd(14, "active_file", K::U64),
    Fd(15, "unevictable", K::U64),
    Fd(16, "hierarchical_memory_limit", K::U64),
    Fd(17, "hierarchical_swap_limit", K::U64),
    Fd(18, "total_cache", K::U64),
    Fd(19, "total_rss", K::U64),
    Fd(20, "total_rss_huge", K::U64),
    Fd(21, "total_mapped_file", K::U64),
    Fd(22, "total_dirty", K::U64),
    Fd(23, "total_writeback", K::U64),
    Fd(24, "total_pg_pg_in", K::U64),
    Fd(25, "total_pg_pg_out", K::U64),
    Fd(26, "total_pg_fault", K::U64),
    Fd(27, "total_pg_maj_fault", K::U64),
    Fd(28, "total_inactive_anon", K::U64),
    Fd(29, "total_active_anon", K::U64),
    Fd(30, "total_inactive_file", K::U64),
    Fd(31, "total_active_file", K::U64),
    Fd(32, "total_unevictable", K::U64),
    Fd(33, "usage", K::Msg(MEMORY_ENTRY)),
    Fd(34, "swap", K::Msg(MEMORY_ENTRY)),
    Fd(35, "kernel", K::Msg(MEMORY_ENTRY)),
    Fd(36, "kernel_tcp", K::Msg(MEMORY_ENTRY)),
];
const BLKIO_ENTRY: &[Fd] = &[
    Fd(1, "op", K::Str),
    Fd(2, "device", K::Str),
    Fd(3, "major", K::U64),
    Fd(4, "minor", K::U64),
    Fd(5, "value", K::U64),
];
const BLKIO: &[Fd] = &[
    Fd(1, "io_service_bytes_recursive", K::RepMsg(BLKIO_ENTRY)),
    Fd(2, "io_serviced_recursive", K::RepMsg(BLKIO_ENTRY)),
    Fd(3, "io_queued_recursive", K::RepMsg(BLKIO_ENTRY)),
    Fd(4, "io_service_time_recursive", K::RepMsg(BLKIO_ENTRY)),
    Fd(5, "io_wait_time_recursive", K::RepMsg(BLKIO_ENTRY)),
    Fd(6, "io_merged_recursive", K::RepMsg(BLKIO_ENTRY)),
    Fd(7, "io_time_recursive", K::RepMsg(BLKIO_ENTRY)),
    Fd(8, "sectors_recursive", K::RepMsg(BLKIO_ENTRY)),
];
const RDMA_ENTRY: &[Fd] = &[Fd(1, "device", K::Str), Fd(2, "hca_handles", K::U64), Fd(3, "hca_objects", K::U64)];
const RDMA: &[Fd] = &[Fd(1, "current", K::RepMsg(RDMA_ENTRY)), Fd(2, "limit", K::RepMsg(RDMA_ENTRY))];
const NETWORK: &[Fd] = &[
    Fd(1, "name", K::Str),
    Fd(2, "rx_bytes", K::U64),
    Fd(3, "rx_packets", K::U64),
    Fd(4, "rx_errors", K::U64),
    Fd(5, "rx_dropped", K::U64),
    Fd(6, "tx_bytes", K::U64),
    Fd(7, "tx_packets", K::U64),
    Fd(8, "tx_errors", K::U64),
    Fd(9, "tx_dropped", K::U64),
];
const CGROUP_STATS: &[Fd] = &[
    Fd(1, "nr_sleeping", K::U64),
    Fd(2, "nr_running", K::U64),
    Fd(3, "nr_stopped", K::U64),
    Fd(4, "nr_uninterruptible", K::U64),
    Fd(5, "nr_io_wait", K::U64),
];
const OOM: &[Fd] = &[Fd(1, "oom_kill_disable", K::U64), Fd(2, "under_oom", K::U64), Fd(3, "oom_kill", K::U64)];
const METRICS: &[Fd] = &[
    Fd(1, "hugetlb", K::RepMsg(HUGETLB)),
    Fd(2, "pids", K::Msg(PIDS)),
    Fd(3, "cpu", K::Msg(CPU)),
    Fd(4, "memory", K::Msg(MEMORY)),
    Fd(5, "blkio", K::Msg(BLKIO)),
    Fd(6, "rdma", K::Msg(RDMA)),
    Fd(7, "network", K::RepMsg(NETWORK)),
    Fd(8, "cgroup_stats", K::Msg(CGROUP_STATS)),
    Fd(9, "memory_oom_control", K::Msg(OOM)),
];

/// A decoded message: its fields by schema index.
#[derive(Debug, Clone, Default)]
pub struct Msg {
    fields: Vec<(usize, Val)>,
}

#[derive(Debug, Clone)]
enum Val {
    U64(u64),
    Str(String),
    Msg(Msg),
    List(Vec<u64>),
    Msgs(Vec<Msg>),
}

/// The decoded metrics with their schema.
pub struct Metrics {
    root: Msg,
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, MetricsError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or(MetricsError::Decode("truncated varint"))?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(MetricsError::Decode("varint too long"))
}

fn decode_msg(b: &[u8], schema: &'static [Fd]) -> Result<Msg, MetricsError> {
    let mut m = Msg::default();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (num, wire) = ((key >> 3) as u32, key & 7);
        let field = schema.iter().position(|f| f.0 == num);
        let bytes = match wire {
            0 => {
                let v = varint(b, &mut i)?;
                if let Some(fi) = field {
                    match schema[fi].2 {
                        K::RepU64 => push_list(&mut m, fi, v),
                        _ => set(&mut m, fi, Val::U64(v)),
                    }
                }
                continue;
            }
            2 => {
                let n = varint(b, &mut i)? as usize;
                let s = b.get(i..i + n).ok_or(MetricsError::Decode("truncated field"))?;
                i += n;
                s
            }
            1 => {
                i += 8;
                continue;
            }
            5 => {
                i += 4;
                continue;
            }
            _ => return Err(MetricsError::Decode("bad wire type")),
        };
        let Some(fi) = field else { continue };
        match schema[fi].2 {
            K::Str => set(&mut m, fi, Val::Str(String::from_utf8_lossy(bytes).into_owned())),
            K::Msg(s) => set(&mut m, fi, Val::Msg(decode_msg(bytes, s)?)),
            K::RepMsg(s) => {
                let sub = decode_msg(bytes, s)?;
                match m.fields.iter_mut().find(|(k, _)| *k == fi) {
                    Some((_, Val::Msgs(v))) => v.push(sub),
                    _ => m.fields.push((fi, Val::Msgs(vec![sub]))),
                }
            }
            K::RepU64 => {
                let mut j = 0;
                while j < bytes.len() {
                    let v = varint(bytes, &mut j)?;
                    push_list(&mut m, fi, v);
                }
            }
            K::U64 => return Err(MetricsError::Decode("length-delimited number")),
        }
    }
    Ok(m)
}

fn set(m: &mut Msg, fi: usize, v: Val) {
    match m.fields.iter_mut().find(|(k, _)| *k == fi) {
        Some(slot) => slot.1 = v,
        None => m.fields.push((fi, v)),
    }
}

fn push_list(m: &mut Msg, fi: usize, v: u64) {
    match m.fields.iter_mut().find(|(k, _)| *k == fi) {
        Some((_, Val::List(l))) => l.push(v),
        _ => m.fields.push((fi, Val::List(vec![v]))),
    }
}

/// `typeurl.UnmarshalAny` for the cgroup v1 metrics.
pub fn decode(any: &prost_types::Any) -> Result<Metrics, MetricsError> {
    if any.type_url != METRICS_V1_TYPE_URL {
        return Err(MetricsError::UnknownType);
    }
    Ok(Metrics { root: decode_msg(&any.value, METRICS)? })
}

fn to_json(m: &Msg, schema: &'static [Fd]) -> J {
    let mut out = Vec::new();
    for (fi, f) in schema.iter().enumerate() {
        let Some((_, v)) = m.fields.iter().find(|(k, _)| *k == fi) else { continue };
        let j = match (v, f.2) {
            (Val::U64(0), _) => continue,
            (Val::U64(n), _) => J::Num(n.to_string()),
            (Val::Str(s), _) if s.is_empty() => continue,
            (Val::Str(s), _) => J::Str(s.clone()),
            (Val::Msg(sub), K::Msg(s)) => to_json(sub, s),
            (Val::List(l), _) => J::Arr(l.iter().map(|n| J::Num(n.to_string())).collect()),
            (Val::Msgs(l), K::RepMsg(s)) => J::Arr(l.iter().map(|x| to_json(x, s)).collect()),
            _ => continue,
        };
        out.push((f.1.to_string(), j));
    }
    J::Obj(out)
}

/// `json.MarshalIndent(metrics, "", "  ")`.
pub fn indent2(m: &Metrics) -> String {
    to_json(&m.root, METRICS).indent_with("  ")
}

fn sub<'a>(m: &'a Msg, schema: &'static [Fd], name: &str) -> Option<&'a Msg> {
    let fi = schema.iter().position(|f| f.1 == name)?;
    m.fields.iter().find(|(k, _)| *k == fi).and_then(|(_, v)| if let Val::Msg(x) = v { Some(x) } else { None })
}

fn num(m: Option<&Msg>, schema: &'static [Fd], name: &str) -> u64 {
    let Some(m) = m else { return 0 };
    let Some(fi) = schema.iter().position(|f| f.1 == name) else { return 0 };
    m.fields.iter().find(|(k, _)| *k == fi).map_or(0, |(_, v)| if let Val::U64(n) = v { *n } else { 0 })
}

fn list(m: Option<&Msg>, schema: &'static [Fd], name: &str) -> Vec<u64> {
    let Some(m) = m else { return Vec::new() };
    let Some(fi) = schema.iter().position(|f| f.1 == name) else { return Vec::new() };
    m.fields.iter().find(|(k, _)| *k == fi).map_or(Vec::new(), |(_, v)| {
        if let Val::List(l) = v {
            l.clone()
        } else {
            Vec::new()
        }
    })
}

/// ctr's `printCgroupMetricsTable`.
pub fn write_table<W: Write>(w: &mut W, m: &Metrics) -> Result<(), MetricsError> {
    let root = &m.root;
    writeln!(w, "METRIC\tVALUE\t")?;
    if let Some(mem) = sub(root, METRICS, "memory") {
        let usage = sub(mem, MEMORY, "usage");
        writeln!(w, "memory.usage_in_bytes\t{}\t", num(usage, MEMORY_ENTRY, "usage"))?;
        writeln!(w, "memory.limit_in_bytes\t{}\t", num(usage, MEMORY_ENTRY, "limit"))?;
        writeln!(w, "memory.stat.cache\t{}\t", num(Some(mem), MEMORY, "total_cache"))?;
    }
    if let Some(cpu) = sub(root, METRICS, "cpu") {
        let usage = sub(cpu, CPU, "usage");
        writeln!(w, "cpuacct.usage\t{}\t", num(usage, CPU_USAGE, "total"))?;
        let per: Vec<String> = list(usage, CPU_USAGE, "per_cpu").iter().map(u64::to_string).collect();
        writeln!(w, "cpuacct.usage_percpu\t[{}]\t", per.join(" "))?;
    }
    if let Some(pids) = sub(root, METRICS, "pids") {
        writeln!(w, "pids.current\t{}\t", num(Some(pids), PIDS, "current"))?;
        writeln!(w, "pids.limit\t{}\t", num(Some(pids), PIDS, "limit"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pids_and_cpu() {
        // pids {current: 2, limit: 0}, cpu {usage {total: 300, per_cpu: [100, 200]}}
        let pids = [0x08, 0x02];
        let usage = [0x08, 0xac, 0x02, 0x22, 0x03, 0x64, 0xc8, 0x01];
        let mut cpu = vec![0x0a, usage.len() as u8];
        cpu.extend(usage);
        let mut b = vec![0x12, pids.len() as u8];
        b.extend(pids);
        b.extend([0x1a, cpu.len() as u8]);
        b.extend(cpu);
        let m = decode(&prost_types::Any { type_url: METRICS_V1_TYPE_URL.into(), value: b }).unwrap();
        let mut out = Vec::new();
        write_table(&mut out, &m).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("cpuacct.usage\t300\t\ncpuacct.usage_percpu\t[100 200]\t\npids.current\t2\t\npids.limit\t0\t\n"),
            "{s}"
        );
        assert_eq!(indent2(&m), "{\n  \"pids\": {\n    \"current\": 2\n  },\n  \"cpu\": {\n    \"usage\": {\n      \"total\": 300,\n      \"per_cpu\": [\n        100,\n        200\n      ]\n    }\n  }\n}");
    }
}
