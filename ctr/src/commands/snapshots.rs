//! `ctr snapshots`: prepare, view, commit, inspect, label and remove
//! snapshots through the daemon's `containerd.services.snapshots.v1.Snapshots`
//! service (containerd 1.6's `cmd/ctr/commands/snapshots`, talking to the
//! daemon through its snapshotter proxy).
//!
//! `diff` and `unpack` are not here: they need the diff service and image
//! unpacking.

use std::collections::HashMap;
use std::io::{self, Write};

use clap::{Args, Subcommand};
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use containerd_client::types::Mount;

use super::images::progress_bytes;
use super::{format_labels, object_with_label_args, proto_time, GlobalArgs};
use crate::client::Client;
use crate::errdefs;
use crate::gojson::J;
use crate::golog::go_quote;
use crate::gotime::{rfc3339_nano_utc, rfc3339_with_offset, Timestamp, GO_ZERO_TIME_SECS};
use crate::tabwriter::TabWriter;

/// What an empty `--snapshotter` stands for. containerd's client would try
/// the namespace's `containerd.io/defaults/snapshotter` label first, but it
/// reads it with a context that carries no namespace and ctr gives the
/// client no default one, so the lookup fails and stock ctr always falls
/// back to this name (observed with 1.6.20: the label is ignored, even for
/// `-n` or `CONTAINERD_NAMESPACE`).
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// The label that keeps what ctr creates from the garbage collector.
const GC_ROOT_LABEL: &str = "containerd.io/gc.root";

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Snapshotter name. Empty value stands for the default value
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "", hide_default_value = true, value_name = "value")]
    pub snapshotter: String,

    #[command(subcommand)]
    pub command: SnapshotsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// Commit an active snapshot into the provided name
    Commit(PositionalArgs),
    /// Get info about a snapshot
    Info(PositionalArgs),
    /// List snapshots
    #[command(visible_alias = "ls")]
    List(PositionalArgs),
    /// Mount gets mount commands for the snapshots
    #[command(visible_aliases = ["m", "mount"])]
    Mounts(PositionalArgs),
    /// Prepare a snapshot from a committed snapshot
    Prepare(CreateArgs),
    /// Remove snapshots
    #[command(visible_aliases = ["del", "remove", "rm"])]
    Delete(PositionalArgs),
    /// Add labels to content
    Label(PositionalArgs),
    /// Display tree view of snapshot branches
    Tree(PositionalArgs),
    /// Usage snapshots
    Usage(UsageArgs),
    /// Create a read-only snapshot from a committed snapshot
    View(CreateArgs),
}

/// Arguments checked by the command itself: stock ctr prints the command's
/// help (and succeeds) when their number is wrong.
#[derive(Debug, Args)]
pub struct PositionalArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `prepare` and `view`: `[flags] <key> [<parent>]`; flags may follow the
/// arguments, as stock ctr accepts.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Mount target path, will print mount, if provided
    #[arg(short = 't', long, default_value = "", value_name = "value")]
    pub target: String,

    /// Print out snapshot mounts as JSON
    #[arg(long)]
    pub mounts: bool,

    /// <key> [<parent>]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Display size in bytes
    #[arg(short = 'b')]
    pub bytes: bool,

    /// [<key>, ...]
    pub keys: Vec<String>,
}

pub async fn run(global: &GlobalArgs, args: SnapshotsArgs) -> anyhow::Result<()> {
    let snapshotter =
        if args.snapshotter.is_empty() { DEFAULT_SNAPSHOTTER.to_string() } else { args.snapshotter.clone() };
    let sn = Snapshotter { global, name: snapshotter };
    match args.command {
        SnapshotsCommand::Commit(a) => sn.commit(a.args).await,
        SnapshotsCommand::Info(a) => sn.info(a.args).await,
        SnapshotsCommand::List(_) => sn.list().await,
        SnapshotsCommand::Mounts(a) => sn.mounts(a.args).await,
        SnapshotsCommand::Prepare(a) => sn.prepare(a, false).await,
        SnapshotsCommand::Delete(a) => sn.delete(a.args).await,
        SnapshotsCommand::Label(a) => sn.label(a.args).await,
        SnapshotsCommand::Tree(_) => sn.tree().await,
        SnapshotsCommand::Usage(a) => sn.usage(a).await,
        SnapshotsCommand::View(a) => sn.prepare(a, true).await,
    }
}

// What stock ctr (urfave/cli) prints when a command gets the wrong number of
// arguments.

const COMMIT_HELP: &str = "NAME:
   ctr snapshots commit - commit an active snapshot into the provided name

USAGE:
   ctr snapshots commit <key> <active>
";

const INFO_HELP: &str = "NAME:
   ctr snapshots info - get info about a snapshot

USAGE:
   ctr snapshots info <key>
";

const MOUNTS_HELP: &str = "NAME:
   ctr snapshots mounts - mount gets mount commands for the snapshots

USAGE:
   ctr snapshots mounts <target> <key>
";

const PREPARE_HELP: &str = "NAME:
   ctr snapshots prepare - prepare a snapshot from a committed snapshot

USAGE:
   ctr snapshots prepare [command options] [flags] <key> [<parent>]

OPTIONS:
   --target value, -t value  mount target path, will print mount, if provided
   --mounts                  Print out snapshot mounts as JSON
   
";

const VIEW_HELP: &str = "NAME:
   ctr snapshots view - create a read-only snapshot from a committed snapshot

USAGE:
   ctr snapshots view [command options] [flags] <key> [<parent>]

OPTIONS:
   --target value, -t value  mount target path, will print mount, if provided
   --mounts                  Print out snapshot mounts as JSON
   
";

fn print_help(help: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(help.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Go's `snapshots.Kind` as the proxy decodes it: anything that is neither
/// a view nor active is committed.
fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::View) => "View",
        Ok(Kind::Active) => "Active",
        _ => "Committed",
    }
}

/// `time.Now().UTC().Format(time.RFC3339)`: the value of the gc.root label
/// that `prepare` and `commit` set.
fn gc_root_labels() -> HashMap<String, String> {
    [(GC_ROOT_LABEL.to_string(), rfc3339_with_offset(Timestamp::now(), 0))].into_iter().collect()
}

/// ctr's `printMounts`: a `mount` command line per mount.
pub fn mount_lines(target: &str, mounts: &[Mount]) -> String {
    mounts.iter().map(|m| format!("mount -t {} {} {target} -o {}\n", m.r#type, m.source, m.options.join(","))).collect()
}

/// `[]mount.Mount` as `encoding/json` writes it (the Go struct has no
/// target field and no JSON tags).
pub fn mounts_json(mounts: &[Mount]) -> J {
    J::Arr(
        mounts
            .iter()
            .map(|m| {
                let options =
                    if m.options.is_empty() { J::Null } else { J::Arr(m.options.iter().map(|o| J::str(o)).collect()) };
                J::Obj(vec![
                    ("Type".to_string(), J::str(&m.r#type)),
                    ("Source".to_string(), J::str(&m.source)),
                    ("Options".to_string(), options),
                ])
            })
            .collect(),
    )
}

fn time_json(ts: &Option<prost_types::Timestamp>) -> J {
    J::Str(rfc3339_nano_utc(proto_time(ts.as_ref().map(|t| (t.seconds, t.nanos)))))
}

/// `snapshots.Info` as `encoding/json` writes it: `Parent` and `Labels`
/// are `omitempty`, map keys sorted.
pub fn info_json(info: &Info) -> J {
    let mut obj = vec![("Kind".to_string(), J::str(kind_name(info.kind))), ("Name".to_string(), J::str(&info.name))];
    if !info.parent.is_empty() {
        obj.push(("Parent".to_string(), J::str(&info.parent)));
    }
    if !info.labels.is_empty() {
        let mut labels: Vec<(String, J)> = info.labels.iter().map(|(k, v)| (k.clone(), J::str(v))).collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        obj.push(("Labels".to_string(), J::Obj(labels)));
    }
    obj.push(("Created".to_string(), time_json(&info.created_at)));
    obj.push(("Updated".to_string(), time_json(&info.updated_at)));
    J::Obj(obj)
}

/// ctr's snapshot tree: nodes in the order the walk first named them
/// (a child seen before its parent adds a placeholder for the parent),
/// children in walk order.
#[derive(Debug, Default)]
pub struct SnapshotTree {
    /// (name, parent, children) in order of first mention.
    nodes: Vec<(String, String, Vec<String>)>,
    index: HashMap<String, usize>,
}

impl SnapshotTree {
    pub fn add(&mut self, name: &str, parent: &str) {
        match self.index.get(name) {
            Some(&i) => self.nodes[i].1 = parent.to_string(),
            None => {
                self.index.insert(name.to_string(), self.nodes.len());
                self.nodes.push((name.to_string(), parent.to_string(), Vec::new()));
            }
        }
        if !parent.is_empty() {
            if !self.index.contains_key(parent) {
                self.add(parent, "");
            }
            let p = self.index[parent];
            self.nodes[p].2.push(name.to_string());
        }
    }

    /// Every parent-less node with its descendants, two spaces deeper per
    /// level and `\_` before each child.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, parent, _) in &self.nodes {
            if parent.is_empty() {
                self.render_node(name, 0, &mut out);
            }
        }
        out
    }

    fn render_node(&self, name: &str, level: usize, out: &mut String) {
        let Some(&i) = self.index.get(name) else { return };
        out.push_str(&"  ".repeat(level));
        if level > 0 {
            out.push_str("\\_");
        }
        out.push(' ');
        out.push_str(name);
        out.push('\n');
        for child in &self.nodes[i].2 {
            self.render_node(child, level + 1, out);
        }
    }
}

/// One snapshotter of the daemon, as the client's snapshotter proxy sees it.
struct Snapshotter<'a> {
    global: &'a GlobalArgs,
    name: String,
}

impl Snapshotter<'_> {
    async fn client(&self) -> anyhow::Result<Client> {
        self.global.client().await
    }

    /// Every snapshot's info, in the order the daemon streams them (the
    /// proxy's `Walk`).
    async fn walk(&self, client: &Client) -> anyhow::Result<Vec<Info>> {
        let req = ListSnapshotsRequest { snapshotter: self.name.clone(), filters: Vec::new() };
        let mut stream =
            client.call(client.snapshots().list(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        let mut infos = Vec::new();
        loop {
            match client.recv(&mut stream).await {
                Ok(Some(msg)) => infos.extend(msg.info),
                Ok(None) => return Ok(infos),
                Err(s) => return Err(errdefs::from_grpc(&s)),
            }
        }
    }

    async fn stat(&self, client: &Client, key: &str) -> anyhow::Result<Info> {
        let req = StatSnapshotRequest { snapshotter: self.name.clone(), key: key.to_string() };
        let resp =
            client.call(client.snapshots().stat(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        Ok(resp.info.unwrap_or_default())
    }

    async fn list(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let infos = self.walk(&client).await?;
        let mut tw = TabWriter::new(io::stdout().lock(), 1, 8, 1, ' ');
        writeln!(tw, "KEY\tPARENT\tKIND\t")?;
        for info in &infos {
            writeln!(tw, "{}\t{}\t{}\t", info.name, info.parent, kind_name(info.kind))?;
        }
        tw.flush()?;
        Ok(())
    }

    async fn tree(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let mut tree = SnapshotTree::default();
        for info in self.walk(&client).await? {
            tree.add(&info.name, &info.parent);
        }
        let mut out = io::stdout().lock();
        out.write_all(tree.render().as_bytes())?;
        out.flush()?;
        Ok(())
    }

    async fn info(&self, args: Vec<String>) -> anyhow::Result<()> {
        if args.len() != 1 {
            return print_help(INFO_HELP);
        }
        let client = self.client().await?;
        let info = self.stat(&client, &args[0]).await?;
        let mut out = io::stdout().lock();
        writeln!(out, "{}", info_json(&info).indent())?;
        out.flush()?;
        Ok(())
    }

    async fn usage(&self, args: UsageArgs) -> anyhow::Result<()> {
        let client = self.client().await?;
        let keys = if args.keys.is_empty() {
            self.walk(&client).await?.into_iter().map(|i| i.name).collect()
        } else {
            args.keys
        };
        // Like stock ctr, nothing is printed when one of the keys fails: the
        // table is only flushed at the end.
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let req = UsageRequest { snapshotter: self.name.clone(), key: key.clone() };
            let usage =
                client.call(client.snapshots().usage(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
            let size = if args.bytes { usage.size.to_string() } else { progress_bytes(usage.size) };
            rows.push(format!("{key}\t{size}\t{}\t\n", usage.inodes));
        }
        let mut tw = TabWriter::new(io::stdout().lock(), 1, 8, 1, ' ');
        writeln!(tw, "KEY\tSIZE\tINODES\t")?;
        for row in rows {
            tw.write_all(row.as_bytes())?;
        }
        tw.flush()?;
        Ok(())
    }

    /// `prepare` (or `view` when `read_only`): create the snapshot, then
    /// print its mounts as requested.
    async fn prepare(&self, args: CreateArgs, read_only: bool) -> anyhow::Result<()> {
        if args.args.is_empty() || args.args.len() > 2 {
            return print_help(if read_only { VIEW_HELP } else { PREPARE_HELP });
        }
        let key = args.args[0].clone();
        let parent = args.args.get(1).cloned().unwrap_or_default();
        let client = self.client().await?;
        let mounts = if read_only {
            // Unlike prepare, stock ctr's view sets no gc.root label.
            let req = ViewSnapshotRequest { snapshotter: self.name.clone(), key, parent, labels: HashMap::new() };
            client.call(client.snapshots().view(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?.mounts
        } else {
            let req = PrepareSnapshotRequest { snapshotter: self.name.clone(), key, parent, labels: gc_root_labels() };
            client
                .call(client.snapshots().prepare(client.request(req)))
                .await
                .map_err(|s| errdefs::from_grpc(&s))?
                .mounts
        };
        let mut out = io::stdout().lock();
        if !args.target.is_empty() {
            out.write_all(mount_lines(&args.target, &mounts).as_bytes())?;
        }
        if args.mounts {
            writeln!(out, "{}", mounts_json(&mounts).indent())?;
        }
        out.flush()?;
        Ok(())
    }

    async fn mounts(&self, args: Vec<String>) -> anyhow::Result<()> {
        if args.len() != 2 {
            return print_help(MOUNTS_HELP);
        }
        let client = self.client().await?;
        let req = MountsRequest { snapshotter: self.name.clone(), key: args[1].clone() };
        let resp =
            client.call(client.snapshots().mounts(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        let mut out = io::stdout().lock();
        out.write_all(mount_lines(&args[0], &resp.mounts).as_bytes())?;
        out.flush()?;
        Ok(())
    }

    async fn commit(&self, args: Vec<String>) -> anyhow::Result<()> {
        if args.len() != 2 {
            return print_help(COMMIT_HELP);
        }
        let client = self.client().await?;
        let req = CommitSnapshotRequest {
            snapshotter: self.name.clone(),
            name: args[0].clone(),
            key: args[1].clone(),
            labels: gc_root_labels(),
        };
        client.call(client.snapshots().commit(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        Ok(())
    }

    /// Remove each key in turn, stopping at the first failure.
    async fn delete(&self, keys: Vec<String>) -> anyhow::Result<()> {
        let client = self.client().await?;
        for key in keys {
            let req = RemoveSnapshotRequest { snapshotter: self.name.clone(), key: key.clone() };
            client
                .call(client.snapshots().remove(client.request(req)))
                .await
                .map_err(|s| anyhow::anyhow!("failed to remove {}: {}", go_quote(&key), errdefs::from_grpc(&s)))?;
        }
        Ok(())
    }

    /// Set (`k=v`) or clear (`k=`) labels, then print the snapshot's labels
    /// (sorted; stock ctr prints Go's random map order). Without labels it
    /// only reads them.
    async fn label(&self, args: Vec<String>) -> anyhow::Result<()> {
        let (key, labels) = object_with_label_args(&args);
        let client = self.client().await?;
        let info = if labels.is_empty() {
            self.stat(&client, &key).await?
        } else {
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            // The proxy sends a whole `snapshots.Info`: an unset kind reads
            // as committed and unset times as Go's zero time.
            let zero = Some(prost_types::Timestamp { seconds: GO_ZERO_TIME_SECS, nanos: 0 });
            let info = Info {
                name: key,
                parent: String::new(),
                kind: Kind::Committed as i32,
                created_at: zero,
                updated_at: zero,
                labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            };
            let req = UpdateSnapshotRequest {
                snapshotter: self.name.clone(),
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths }),
            };
            client
                .call(client.snapshots().update(client.request(req)))
                .await
                .map_err(|s| errdefs::from_grpc(&s))?
                .info
                .unwrap_or_default()
        };
        let mut out = io::stdout().lock();
        writeln!(out, "{}", format_labels(&info.labels))?;
        out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: t.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn mount_lines_like_ctr() {
        let m = [mount("bind", "/s/1/fs", &["rw", "rbind"]), mount("tmpfs", "none", &[])];
        assert_eq!(mount_lines("/mnt", &m), "mount -t bind /s/1/fs /mnt -o rw,rbind\nmount -t tmpfs none /mnt -o \n");
    }

    #[test]
    fn mounts_json_like_go() {
        let m = [mount("bind", "/s", &["ro"]), mount("x", "y", &[])];
        assert_eq!(
            mounts_json(&m).indent(),
            "[\n    {\n        \"Type\": \"bind\",\n        \"Source\": \"/s\",\n        \"Options\": [\n            \"ro\"\n        ]\n    },\n    {\n        \"Type\": \"x\",\n        \"Source\": \"y\",\n        \"Options\": null\n    }\n]"
        );
        assert_eq!(mounts_json(&[]).indent(), "[]");
    }

    #[test]
    fn info_json_omits_empty_parent_and_labels() {
        let ts = Some(prost_types::Timestamp { seconds: 1_795_812_462, nanos: 500_000_000 });
        let mut info = Info {
            name: "a".into(),
            kind: Kind::Active as i32,
            created_at: ts,
            updated_at: None,
            ..Default::default()
        };
        assert_eq!(
            info_json(&info).indent(),
            "{\n    \"Kind\": \"Active\",\n    \"Name\": \"a\",\n    \"Created\": \"2026-11-27T20:47:42.5Z\",\n    \"Updated\": \"0001-01-01T00:00:00Z\"\n}"
        );
        info.parent = "p".into();
        info.kind = Kind::Unknown as i32;
        info.labels = [("z", "1"), ("b", "2")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let j = info_json(&info).indent();
        assert!(j.starts_with("{\n    \"Kind\": \"Committed\",\n    \"Name\": \"a\",\n    \"Parent\": \"p\",\n    \"Labels\": {\n        \"b\": \"2\",\n        \"z\": \"1\"\n    },"), "{j}");
    }

    #[test]
    fn tree_like_ctr() {
        let mut t = SnapshotTree::default();
        // A child streamed before its parent makes a placeholder that the
        // parent's own entry fills in later.
        for (name, parent) in [("a", "z"), ("b", ""), ("c", "z"), ("d", "c"), ("z", "")] {
            t.add(name, parent);
        }
        assert_eq!(t.render(), " z\n  \\_ a\n  \\_ c\n    \\_ d\n b\n");
    }
}
