//! containerd's shared types as the shim protocol uses them
//! (`containerd.types`, `containerd.v1.types`) and the task events a shim
//! publishes (`containerd.events`), with their topics.
//!
//! They are wire-identical to the prost types of the `containerd-client`
//! crate; they are written out here so that the shim does not link a gRPC
//! client library to use five messages.

use prost::Message;

/// A mount (`containerd.types.Mount`).
#[derive(Clone, PartialEq, Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub source: String,
    #[prost(string, tag = "3")]
    pub target: String,
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

/// A process's status (`containerd.v1.types.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ProcessStatus {
    Unknown = 0,
    Created = 1,
    Running = 2,
    Stopped = 3,
    Paused = 4,
    Pausing = 5,
}

/// A process of a task, as `Pids` lists them (`containerd.v1.types.ProcessInfo`).
/// `info` carries the runc shim's `ProcessDetails` for exec processes.
#[derive(Clone, PartialEq, Message)]
pub struct ProcessInfo {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(message, optional, tag = "2")]
    pub info: Option<prost_types::Any>,
}

/// An event with its namespace and topic (`containerd.types.Envelope`).
#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<prost_types::Timestamp>,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub topic: String,
    #[prost(message, optional, tag = "4")]
    pub event: Option<prost_types::Any>,
}

/// The daemon's ttrpc events service, which shims publish to.
pub const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
/// Its one method.
pub const EVENTS_FORWARD: &str = "Forward";

/// `containerd.services.events.ttrpc.v1.ForwardRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ForwardRequest {
    #[prost(message, optional, tag = "1")]
    pub envelope: Option<Envelope>,
}

/// The `/tasks/*` topics.
pub mod topics {
    pub const TASK_CREATE: &str = "/tasks/create";
    pub const TASK_START: &str = "/tasks/start";
    pub const TASK_OOM: &str = "/tasks/oom";
    pub const TASK_EXIT: &str = "/tasks/exit";
    pub const TASK_DELETE: &str = "/tasks/delete";
    pub const TASK_EXEC_ADDED: &str = "/tasks/exec-added";
    pub const TASK_EXEC_STARTED: &str = "/tasks/exec-started";
    pub const TASK_PAUSED: &str = "/tasks/paused";
    pub const TASK_RESUMED: &str = "/tasks/resumed";
    pub const TASK_CHECKPOINTED: &str = "/tasks/checkpointed";
}

/// An event message: its proto full name is its `Any` type URL, bare, as
/// containerd 1.6 marshals events (and the only form its `ctr events`
/// decodes).
pub trait Event: Message + Sized {
    const NAME: &'static str;

    fn to_any(&self) -> prost_types::Any {
        prost_types::Any { type_url: Self::NAME.to_string(), value: self.encode_to_vec() }
    }
}

macro_rules! event {
    ($ty:ident, $name:literal) => {
        impl Event for $ty {
            const NAME: &'static str = $name;
        }
    };
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskIo {
    #[prost(string, tag = "1")]
    pub stdin: String,
    #[prost(string, tag = "2")]
    pub stdout: String,
    #[prost(string, tag = "3")]
    pub stderr: String,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskCreate {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(message, repeated, tag = "3")]
    pub rootfs: Vec<Mount>,
    #[prost(message, optional, tag = "4")]
    pub io: Option<TaskIo>,
    #[prost(string, tag = "5")]
    pub checkpoint: String,
    #[prost(uint32, tag = "6")]
    pub pid: u32,
}
event!(TaskCreate, "containerd.events.TaskCreate");

#[derive(Clone, PartialEq, Message)]
pub struct TaskStart {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}
event!(TaskStart, "containerd.events.TaskStart");

#[derive(Clone, PartialEq, Message)]
pub struct TaskDelete {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(uint32, tag = "3")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "4")]
    pub exited_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "5")]
    pub id: String,
}
event!(TaskDelete, "containerd.events.TaskDelete");

#[derive(Clone, PartialEq, Message)]
pub struct TaskExit {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(uint32, tag = "4")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "5")]
    pub exited_at: Option<prost_types::Timestamp>,
}
event!(TaskExit, "containerd.events.TaskExit");

#[derive(Clone, PartialEq, Message)]
pub struct TaskOom {
    #[prost(string, tag = "1")]
    pub container_id: String,
}
event!(TaskOom, "containerd.events.TaskOOM");

#[derive(Clone, PartialEq, Message)]
pub struct TaskExecAdded {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}
event!(TaskExecAdded, "containerd.events.TaskExecAdded");

#[derive(Clone, PartialEq, Message)]
pub struct TaskExecStarted {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
}
event!(TaskExecStarted, "containerd.events.TaskExecStarted");

#[derive(Clone, PartialEq, Message)]
pub struct TaskPaused {
    #[prost(string, tag = "1")]
    pub container_id: String,
}
event!(TaskPaused, "containerd.events.TaskPaused");

#[derive(Clone, PartialEq, Message)]
pub struct TaskResumed {
    #[prost(string, tag = "1")]
    pub container_id: String,
}
event!(TaskResumed, "containerd.events.TaskResumed");

#[derive(Clone, PartialEq, Message)]
pub struct TaskCheckpointed {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub checkpoint: String,
}
event!(TaskCheckpointed, "containerd.events.TaskCheckpointed");
