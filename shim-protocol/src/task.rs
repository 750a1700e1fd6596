//! The shim v2 task API (`containerd.task.v2.Task`): its messages, a typed
//! client ([`TaskClient`]) for the daemon side, and a typed service trait
//! ([`TaskService`]) with its ttrpc adapter ([`serve_task`]) for the shim
//! side. Both sides list the methods once, in [`task_methods!`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::ttrpc::{decode, Client, Handler, HandlerFuture, RequestContext, Status, NAMESPACE_KEY};
use crate::types::{Mount, ProcessInfo};

/// The service's full name.
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";

/// `google.protobuf.Empty`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, Message)]
pub struct CreateTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(message, repeated, tag = "3")]
    pub rootfs: Vec<Mount>,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(string, tag = "5")]
    pub stdin: String,
    #[prost(string, tag = "6")]
    pub stdout: String,
    #[prost(string, tag = "7")]
    pub stderr: String,
    #[prost(string, tag = "8")]
    pub checkpoint: String,
    #[prost(string, tag = "9")]
    pub parent_checkpoint: String,
    #[prost(message, optional, tag = "10")]
    pub options: Option<prost_types::Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateTaskResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(uint32, tag = "2")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "3")]
    pub exited_at: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ExecProcessRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(bool, tag = "3")]
    pub terminal: bool,
    #[prost(string, tag = "4")]
    pub stdin: String,
    #[prost(string, tag = "5")]
    pub stdout: String,
    #[prost(string, tag = "6")]
    pub stderr: String,
    /// The OCI process spec (JSON), type `types.containerd.io/opencontainers/runtime-spec/1/Process`.
    #[prost(message, optional, tag = "7")]
    pub spec: Option<prost_types::Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResizePtyRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub width: u32,
    #[prost(uint32, tag = "4")]
    pub height: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct StateRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct StateResponse {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(enumeration = "crate::types::ProcessStatus", tag = "4")]
    pub status: i32,
    #[prost(string, tag = "5")]
    pub stdin: String,
    #[prost(string, tag = "6")]
    pub stdout: String,
    #[prost(string, tag = "7")]
    pub stderr: String,
    #[prost(bool, tag = "8")]
    pub terminal: bool,
    #[prost(uint32, tag = "9")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "10")]
    pub exited_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "11")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KillRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub signal: u32,
    #[prost(bool, tag = "4")]
    pub all: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct CloseIoRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(bool, tag = "3")]
    pub stdin: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PidsRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PidsResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CheckpointTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub path: String,
    #[prost(message, optional, tag = "3")]
    pub options: Option<prost_types::Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UpdateTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    /// OCI `LinuxResources` (JSON).
    #[prost(message, optional, tag = "2")]
    pub resources: Option<prost_types::Any>,
    #[prost(map = "string, string", tag = "3")]
    pub annotations: std::collections::HashMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StartRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct StartResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct WaitRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct WaitResponse {
    #[prost(uint32, tag = "1")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "2")]
    pub exited_at: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StatsRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct StatsResponse {
    /// cgroup metrics: `io.containerd.cgroups.v1.Metrics` or `...v2.Metrics`.
    #[prost(message, optional, tag = "1")]
    pub stats: Option<prost_types::Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConnectResponse {
    #[prost(uint32, tag = "1")]
    pub shim_pid: u32,
    #[prost(uint32, tag = "2")]
    pub task_pid: u32,
    #[prost(string, tag = "3")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ShutdownRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(bool, tag = "2")]
    pub now: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PauseRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResumeRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// Calls `$m!(rust_name, "Method", Request, Response)` for every method of
/// the task API, so the client, the trait and the dispatcher cannot drift.
macro_rules! task_methods {
    ($m:ident) => {
        $m!(state, "State", StateRequest, StateResponse);
        $m!(create, "Create", CreateTaskRequest, CreateTaskResponse);
        $m!(start, "Start", StartRequest, StartResponse);
        $m!(delete, "Delete", DeleteRequest, DeleteResponse);
        $m!(pids, "Pids", PidsRequest, PidsResponse);
        $m!(pause, "Pause", PauseRequest, Empty);
        $m!(resume, "Resume", ResumeRequest, Empty);
        $m!(checkpoint, "Checkpoint", CheckpointTaskRequest, Empty);
        $m!(kill, "Kill", KillRequest, Empty);
        $m!(exec, "Exec", ExecProcessRequest, Empty);
        $m!(resize_pty, "ResizePty", ResizePtyRequest, Empty);
        $m!(close_io, "CloseIO", CloseIoRequest, Empty);
        $m!(update, "Update", UpdateTaskRequest, Empty);
        $m!(wait, "Wait", WaitRequest, WaitResponse);
        $m!(stats, "Stats", StatsRequest, StatsResponse);
        $m!(connect, "Connect", ConnectRequest, ConnectResponse);
        $m!(shutdown, "Shutdown", ShutdownRequest, Empty);
    };
}

/// A typed client of a shim's task service, in one namespace.
#[derive(Clone, Debug)]
pub struct TaskClient {
    client: Client,
    namespace: String,
    /// The deadline of every call but `Wait` (which lasts as long as the
    /// process does); `None` waits forever.
    timeout: Option<Duration>,
}

macro_rules! client_method {
    ($name:ident, $method:literal, $req:ident, $resp:ident) => {
        pub async fn $name(&self, req: &$req) -> Result<$resp, Status> {
            let timeout = if $method == "Wait" { None } else { self.timeout };
            self.client.call(TASK_SERVICE, $method, req, &[(NAMESPACE_KEY, self.namespace.as_str())], timeout).await
        }
    };
}

impl TaskClient {
    pub fn new(client: Client, namespace: &str, timeout: Option<Duration>) -> TaskClient {
        TaskClient { client, namespace: namespace.to_string(), timeout }
    }

    /// The connection underneath.
    pub fn connection(&self) -> &Client {
        &self.client
    }

    task_methods!(client_method);
}

macro_rules! trait_method {
    ($name:ident, $method:literal, $req:ident, $resp:ident) => {
        fn $name(&self, ctx: RequestContext, req: $req) -> impl Future<Output = Result<$resp, Status>> + Send {
            let _ = (ctx, req);
            async { Err(Status::unimplemented(concat!("containerd.task.v2.Task/", $method))) }
        }
    };
}

/// The task API as a shim implements it. Every method has a default that
/// answers `Unimplemented`, so a shim implements what it supports.
pub trait TaskService: Send + Sync + 'static {
    task_methods!(trait_method);
}

struct TaskHandler<T>(Arc<T>);

macro_rules! dispatch_arm {
    ($svc:ident, $ctx:ident, $method:ident, $payload:ident; $name:ident, $wire:literal, $req:ident, $resp:ident) => {
        if $method == $wire {
            let req: $req = match decode(&$payload) {
                Ok(r) => r,
                Err(e) => return Box::pin(async move { Err(e) }),
            };
            return Box::pin(async move { $svc.$name($ctx, req).await.map(|r| r.encode_to_vec()) });
        }
    };
}

impl<T: TaskService> Handler for TaskHandler<T> {
    fn call(&self, ctx: RequestContext, method: &str, payload: Vec<u8>) -> HandlerFuture {
        let svc = self.0.clone();
        macro_rules! arm {
            ($name:ident, $wire:literal, $req:ident, $resp:ident) => {
                dispatch_arm!(svc, ctx, method, payload; $name, $wire, $req, $resp)
            };
        }
        task_methods!(arm);
        let method = method.to_string();
        Box::pin(async move { Err(Status::unimplemented(format!("{TASK_SERVICE}/{method}"))) })
    }
}

/// The ttrpc handler of a task service, to register under [`TASK_SERVICE`].
pub fn serve_task<T: TaskService>(service: Arc<T>) -> Arc<dyn Handler> {
    Arc::new(TaskHandler(service))
}
