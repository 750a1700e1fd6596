//! `ctr content`: the daemon's content store (list, get, ingest, active
//! ingests, delete, label). `edit`, `fetch`, `fetch-object`, `push-object`
//! and `prune` are not implemented.

use std::io::{self, Read, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use containerd_client::services::v1::{
    DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest, ReadContentRequest,
    UpdateRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::{format_labels, object_with_label_args, proto_time, GlobalArgs};
use crate::client::Client;
use crate::digest;
use crate::duration::GoDuration;
use crate::errdefs;
use crate::golog;
use crate::tabwriter::TabWriter;
use crate::units::{human_duration, human_size};

/// ctr reads and writes content in 1 MiB chunks.
const CHUNK: usize = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum ContentCommand {
    /// Display active transfers
    Active(ActiveArgs),
    /// Permanently delete one or more blobs
    #[command(visible_aliases = ["del", "remove", "rm"])]
    Delete(DigestsArgs),
    /// Get the data for an object
    Get(DigestsArgs),
    /// Accept content into the store
    Ingest(IngestArgs),
    /// List all blobs in the store
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Add labels to content
    Label(LabelArgs),
}

#[derive(Debug, Args)]
pub struct ActiveArgs {
    /// Total timeout for fetch (accepted, unused, as in stock ctr)
    #[arg(short = 't', long, env = "CONTAINERD_FETCH_TIMEOUT", default_value = "0s", value_name = "DURATION")]
    pub timeout: GoDuration,

    /// Path to content store root (accepted, unused, as in stock ctr)
    #[arg(long, default_value = "/tmp/content")]
    pub root: String,

    /// A filter on the ingests; only the first argument is used
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DigestsArgs {
    /// [<digest>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub digests: Vec<String>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Validate against provided size
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub expected_size: i64,

    /// Verify content against expected digest
    #[arg(long, default_value = "")]
    pub expected_digest: String,

    /// <key>: the ingest (transaction) reference
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print only the blob digest
    #[arg(short, long)]
    pub quiet: bool,

    /// Filters
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// <digest> [<label>=<value> ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: ContentCommand) -> anyhow::Result<()> {
    match command {
        ContentCommand::Active(args) => active(global, args).await,
        ContentCommand::Delete(args) => delete(global, args).await,
        ContentCommand::Get(args) => get(global, args).await,
        ContentCommand::Ingest(args) => ingest(global, args).await,
        ContentCommand::List(args) => list(global, args).await,
        ContentCommand::Label(args) => label(global, args).await,
    }
}

fn info_labels(info: &Info) -> String {
    format_labels(&info.labels)
}

/// One `content ls` row (tab-separated, for the tab writer).
fn list_row(info: &Info) -> String {
    let mut labels = info_labels(info);
    if labels.is_empty() {
        labels = "-".into();
    }
    let created = proto_time(info.created_at.as_ref().map(|t| (t.seconds, t.nanos)));
    format!(
        "{}\t{}\t{}\t{}\n",
        info.digest,
        human_size(info.size as f64),
        human_duration(created.elapsed_nanos()),
        labels
    )
}

async fn list(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    // Go opens the stream without waiting for the server; a refused listing
    // (a bad filter) shows up at the first receive, after the header.
    let mut stream =
        client.call(client.content().list(client.request(ListContentRequest { filters: args.filters }))).await;

    let stdout = io::stdout().lock();
    if args.quiet {
        let mut out = stdout;
        let stream = stream.as_mut().map_err(|s| errdefs::from_grpc(s))?;
        loop {
            match client.recv(stream).await {
                Ok(Some(msg)) => {
                    for info in &msg.info {
                        writeln!(out, "{}", info.digest)?;
                    }
                    out.flush()?;
                }
                Ok(None) => return Ok(()),
                Err(s) => return Err(errdefs::from_grpc(&s)),
            }
        }
    }

    let mut tw = TabWriter::new(stdout, 1, 8, 1, '\t');
    writeln!(tw, "DIGEST\tSIZE\tAGE\tLABELS")?;
    // Like stock ctr, whatever was listed is printed even when the listing
    // then fails.
    let res = match stream.as_mut() {
        Err(s) => Err(errdefs::from_grpc(s)),
        Ok(stream) => loop {
            match client.recv(stream).await {
                Ok(Some(msg)) => {
                    for info in &msg.info {
                        tw.write_all(list_row(info).as_bytes())?;
                    }
                }
                Ok(None) => break Ok(()),
                Err(s) => break Err(errdefs::from_grpc(&s)),
            }
        },
    };
    tw.flush()?;
    res
}

async fn active(global: &GlobalArgs, args: ActiveArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let filter = args.filters.into_iter().next().unwrap_or_default();
    let resp = client
        .call(client.content().list_statuses(client.request(ListStatusesRequest { filters: vec![filter] })))
        .await
        .map_err(|s| errdefs::from_grpc(&s))?;
    let mut tw = TabWriter::new(io::stdout().lock(), 1, 8, 1, '\t');
    writeln!(tw, "REF\tSIZE\tAGE\t")?;
    for st in &resp.statuses {
        let started = proto_time(st.started_at.as_ref().map(|t| (t.seconds, t.nanos)));
        writeln!(tw, "{}\t{}\t{}\t", st.r#ref, human_size(st.offset as f64), human_duration(started.elapsed_nanos()))?;
    }
    tw.flush()?;
    Ok(())
}

async fn get(global: &GlobalArgs, args: DigestsArgs) -> anyhow::Result<()> {
    let dgst = digest::parse(args.digests.first().map_or("", String::as_str))?;
    let client = global.client().await?;
    let info = client
        .call(client.content().info(client.request(InfoRequest { digest: dgst.clone() })))
        .await
        .map_err(|s| errdefs::from_grpc(&s))?
        .info
        .unwrap_or_default();
    let size = info.size;
    if size <= 0 {
        return Ok(());
    }
    // The reader returns the raw gRPC errors.
    let mut stream = client
        .call(client.content().read(client.request(ReadContentRequest { digest: dgst, offset: 0, size })))
        .await
        .map_err(|s| errdefs::raw(&s))?;
    let mut out = io::stdout().lock();
    let mut written: i64 = 0;
    while written < size {
        match client.recv(&mut stream).await {
            Ok(Some(msg)) => {
                let n = msg.data.len().min((size - written) as usize);
                out.write_all(&msg.data[..n])?;
                written += n as i64;
            }
            Ok(None) => break,
            Err(s) => {
                out.flush()?;
                return Err(errdefs::raw(&s));
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn delete(global: &GlobalArgs, args: DigestsArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let mut exit_err: Option<anyhow::Error> = None;
    let mut out = io::stdout().lock();
    for arg in &args.digests {
        if let Err(e) = digest::validate(arg) {
            golog::error(&format!("could not delete {arg}"), &e);
            exit_err.get_or_insert_with(|| anyhow::anyhow!(e));
            continue;
        }
        let res =
            client.call(client.content().delete(client.request(DeleteContentRequest { digest: arg.clone() }))).await;
        match res {
            Ok(_) => {
                writeln!(out, "{arg}")?;
                out.flush()?;
            }
            // Already gone: nothing to print, not an error.
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => {
                let e = errdefs::from_grpc(&s);
                golog::error(&format!("could not delete {arg}"), &e);
                exit_err.get_or_insert(e);
            }
        }
    }
    match exit_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn label(global: &GlobalArgs, args: LabelArgs) -> anyhow::Result<()> {
    let (object, labels) = object_with_label_args(&args.args);
    let client = global.client().await?;
    let dgst = digest::parse(&object)?;

    let info = if labels.is_empty() {
        // Nothing to update: show the current labels.
        client
            .call(client.content().info(client.request(InfoRequest { digest: dgst })))
            .await
            .map_err(|s| errdefs::from_grpc(&s))?
            .info
    } else {
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let mut req = UpdateRequest {
            info: Some(Info {
                digest: dgst,
                labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut mask = req.update_mask.take().unwrap_or_default();
        mask.paths = paths;
        req.update_mask = Some(mask);
        client.call(client.content().update(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?.info
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", info.as_ref().map(info_labels).unwrap_or_default())?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// ingest: containerd's `content.WriteBlob` over the Write stream.

/// An error of the write session: a gRPC status, or the stream ending
/// without one (Go's `io.EOF`).
#[derive(Debug)]
enum WriteError {
    Status(Status),
    Eof,
}

impl WriteError {
    fn code(&self) -> Option<Code> {
        match self {
            WriteError::Status(s) => Some(s.code()),
            WriteError::Eof => None,
        }
    }

    /// `errdefs.FromGRPC` of the error.
    fn converted(&self) -> anyhow::Error {
        match self {
            WriteError::Status(s) => errdefs::from_grpc(s),
            WriteError::Eof => anyhow::anyhow!("EOF"),
        }
    }
}

/// containerd's proxy content writer: one request/response cycle at a time.
struct RemoteWriter<'c> {
    client: &'c Client,
    tx: Option<mpsc::Sender<WriteContentRequest>>,
    rx: Streaming<WriteContentResponse>,
    offset: i64,
    digest: String,
}

impl<'c> RemoteWriter<'c> {
    /// Open the session with a stat of `reference` (the proxy's `negotiate`).
    async fn open(
        client: &'c Client,
        reference: &str,
        total: i64,
        expected: &str,
    ) -> Result<RemoteWriter<'c>, WriteError> {
        let (tx, rx) = mpsc::channel(2);
        let first = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total,
            expected: expected.to_string(),
            ..Default::default()
        };
        // Queue the first message before the call: the server answers (and
        // sends its headers) only once it has read it.
        tx.send(first).await.map_err(|_| WriteError::Eof)?;
        let rx = client
            .call(client.content().write(client.request(ReceiverStream::new(rx))))
            .await
            .map_err(WriteError::Status)?;
        let mut w = RemoteWriter { client, tx: Some(tx), rx, offset: 0, digest: String::new() };
        let resp = w.recv().await?;
        w.offset = resp.offset;
        Ok(w)
    }

    async fn recv(&mut self) -> Result<WriteContentResponse, WriteError> {
        match self.client.recv(&mut self.rx).await {
            Ok(Some(resp)) => {
                if !resp.digest.is_empty() {
                    self.digest = resp.digest.clone();
                }
                Ok(resp)
            }
            Ok(None) => Err(WriteError::Eof),
            Err(s) => Err(WriteError::Status(s)),
        }
    }

    async fn send(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, WriteError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(req).await.is_ok(),
            None => false,
        };
        if !sent {
            // The stream is gone; its status explains why.
            return match self.recv().await {
                Err(e) => Err(e),
                Ok(_) => Err(WriteError::Eof),
            };
        }
        self.recv().await
    }

    async fn status(&mut self) -> Result<i64, WriteError> {
        let resp = self.send(WriteContentRequest { action: WriteAction::Stat as i32, ..Default::default() }).await?;
        Ok(resp.offset)
    }

    /// Write `data` at the current offset; the number of bytes taken.
    async fn write(&mut self, data: &[u8]) -> anyhow::Result<usize> {
        let offset = self.offset;
        let resp = self
            .send(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: data.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("failed to send write: {}", e.converted()))?;
        let n = (resp.offset - offset).max(0) as usize;
        self.offset += n as i64;
        if n < data.len() {
            anyhow::bail!("short write");
        }
        Ok(n)
    }

    /// Commit; `Err((already_exists, error))`.
    async fn commit(&mut self, size: i64, expected: &str) -> Result<(), (bool, anyhow::Error)> {
        let res = self
            .send(WriteContentRequest {
                action: WriteAction::Commit as i32,
                total: size,
                offset: self.offset,
                expected: expected.to_string(),
                ..Default::default()
            })
            .await;
        self.close();
        let resp = res.map_err(|e| {
            (e.code() == Some(Code::AlreadyExists), anyhow::anyhow!("commit failed: {}", e.converted()))
        })?;
        if size != 0 && resp.offset != size {
            return Err((false, anyhow::anyhow!("unexpected size: {} != {}", resp.offset, size)));
        }
        if !expected.is_empty() && resp.digest != expected {
            return Err((false, anyhow::anyhow!("unexpected digest: {} != {}", resp.digest, expected)));
        }
        self.digest = resp.digest;
        self.offset = resp.offset;
        Ok(())
    }

    /// `CloseSend`.
    fn close(&mut self) {
        self.tx = None;
    }
}

/// Read until `buf` is full or the input ends (Go's `io.ReadAtLeast`).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

type Input = Box<dyn Read + Send>;

/// Fill `buf` from `input` on the blocking pool, so that a slow stdin does
/// not stall the connection.
async fn read_chunk(mut input: Input, mut buf: Vec<u8>) -> (Input, Vec<u8>, io::Result<usize>) {
    match tokio::task::spawn_blocking(move || {
        let res = read_full(&mut *input, &mut buf);
        (input, buf, res)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => (Box::new(io::empty()), Vec::new(), Err(io::Error::other(e.to_string()))),
    }
}

/// Go's error text for an OS error on stdin (`read /dev/stdin: ...`).
fn stdin_error(op: &str, e: &io::Error) -> String {
    format!("{op} /dev/stdin: {}", crate::errdefs::os_text(e))
}

/// Stdin, positioned at `offset` (resuming an ingest), as Go's `seekReader`
/// does with `os.Stdin`: seeking a pipe or a terminal fails.
fn stdin_at(offset: i64) -> Result<Input, String> {
    if offset <= 0 {
        return Ok(Box::new(io::stdin()));
    }
    use std::io::Seek;
    let mut f = std::fs::File::open("/dev/stdin")
        .map_err(|e| format!("failed to seek to offset {offset}: {}", stdin_error("seek", &e)))?;
    match f.seek(io::SeekFrom::Start(offset as u64)) {
        Ok(n) if n == offset as u64 => Ok(Box::new(f)),
        Ok(_) => Err(format!("failed to seek to offset {offset}: unexpected seek location without seek error")),
        Err(e) => Err(format!("failed to seek to offset {offset}: {}", stdin_error("seek", &e))),
    }
}

/// A small random delay bound for lock retries (no RNG crate needed).
fn jitter_ms(bound: u64) -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    if bound == 0 {
        0
    } else {
        (nanos / 1000) % bound
    }
}

async fn ingest(global: &GlobalArgs, args: IngestArgs) -> anyhow::Result<()> {
    let reference = args.args.first().cloned().unwrap_or_default();
    let size = args.expected_size;
    let expected = args.expected_digest;
    if !expected.is_empty() {
        digest::validate(&expected).map_err(|e| anyhow::anyhow!(e))?;
    }
    if reference.is_empty() {
        anyhow::bail!("must specify a transaction reference");
    }
    let client = global.client().await?;

    // OpenWriter: retry while the reference is locked by another writer.
    let mut retry: u64 = 16;
    let mut w = loop {
        match RemoteWriter::open(&client, &reference, size, &expected).await {
            Ok(w) => break w,
            // The blob is already there: nothing to do.
            Err(e) if e.code() == Some(Code::AlreadyExists) => return Ok(()),
            Err(e) if e.code() == Some(Code::Unavailable) => {
                let delay = Duration::from_millis(jitter_ms(retry));
                if let Some(deadline) = client.deadline() {
                    if tokio::time::Instant::now() + delay >= deadline {
                        anyhow::bail!("failed to open writer: {}", e.converted());
                    }
                }
                tokio::time::sleep(delay).await;
                if retry < 2048 {
                    retry <<= 1;
                }
            }
            Err(e) => anyhow::bail!("failed to open writer: {}", e.converted()),
        }
    };

    // content.Copy
    let ws_offset = w
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("failed to get status: error getting writer status: {}", e.converted()))?;
    let mut input = stdin_at(ws_offset).map_err(|e| anyhow::anyhow!("unable to resume write to {reference}: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut copied: i64 = 0;
    loop {
        let (i, b, res) = read_chunk(input, buf).await;
        (input, buf) = (i, b);
        let n = res.map_err(|e| anyhow::anyhow!("failed to copy: {}", stdin_error("read", &e)))?;
        if n > 0 {
            let m = w.write(&buf[..n]).await.map_err(|e| anyhow::anyhow!("failed to copy: {e}"))?;
            copied += m as i64;
        }
        if n < buf.len() {
            break;
        }
    }
    if size != 0 && copied < size - ws_offset {
        anyhow::bail!("failed to read expected number of bytes: unexpected EOF");
    }
    match w.commit(size, &expected).await {
        Ok(()) | Err((true, _)) => Ok(()),
        Err((false, e)) => {
            anyhow::bail!("failed commit on ref {}: {e}", golog::go_quote(&reference))
        }
    }
}

/// containerd's client `writeContent`: `data` written under `reference`
/// and committed with `labels` (a blob already there is fine); its digest.
pub async fn write_content(
    client: &Client,
    reference: &str,
    data: &[u8],
    labels: std::collections::HashMap<String, String>,
) -> anyhow::Result<String> {
    let mut w = RemoteWriter::open(client, reference, 0, "")
        .await
        .map_err(|e| anyhow::anyhow!("failed to open writer: {}", e.converted()))?;
    let offset = w.status().await.map_err(|e| e.converted())?;
    if offset != 0 {
        // A leftover partial write of this reference: start over.
        w.send(WriteContentRequest { action: WriteAction::Write as i32, offset: 0, ..Default::default() })
            .await
            .map_err(|e| e.converted())?;
        w.offset = 0;
    }
    for chunk in data.chunks(CHUNK) {
        w.write(chunk).await?;
    }
    let size = data.len() as i64;
    let res = w
        .send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            total: size,
            offset: w.offset,
            labels,
            ..Default::default()
        })
        .await;
    w.close();
    match res {
        Ok(resp) => Ok(resp.digest),
        Err(e) if e.code() == Some(Code::AlreadyExists) => {
            Ok(format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(data)))
        }
        Err(e) => Err(anyhow::anyhow!("commit failed: {}", e.converted())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gotime::Timestamp;

    #[test]
    fn list_rows() {
        let now = Timestamp::now();
        let mut info = Info { digest: "sha256:abc".into(), size: 1536, ..Default::default() };
        let mut ts = info.created_at.take().unwrap_or_default();
        ts.seconds = now.secs - 3;
        ts.nanos = now.nanos as i32;
        info.created_at = Some(ts);
        assert_eq!(list_row(&info), "sha256:abc\t1.536kB\t3 seconds\t-\n");
        info.labels = [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())].into();
        assert_eq!(list_row(&info), "sha256:abc\t1.536kB\t3 seconds\ta=1,b=2\n");
    }

    #[test]
    fn stdin_error_text() {
        let e = io::Error::from_raw_os_error(29);
        assert_eq!(stdin_error("seek", &e), "seek /dev/stdin: illegal seek");
    }
}
