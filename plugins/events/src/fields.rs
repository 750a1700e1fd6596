//! `event.<path>` in subscription filters: containerd decodes the event and
//! asks its generated `Field` method (protoc-gen-go-fieldpath). The same
//! rules here, for containerd's event types:
//!
//! - string fields by their proto name, absent when empty;
//! - bool fields as `true`/`false`, always present;
//! - `labels.<key>` (the rest of the path joined by '.');
//! - message fields recurse (`event.runtime.name`, `event.io.stdin`);
//! - numbers, timestamps, repeated fields and unknown event types: absent.

use std::collections::HashMap;

use containerd_client::{events as ev, services::v1 as images};
use prost::Message;
use prost_types::Any;

fn s(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn labels(m: &HashMap<String, String>, rest: &[String]) -> Option<String> {
    if m.is_empty() {
        return None;
    }
    m.get(&rest.join(".")).cloned()
}

fn decode<M: Message + Default>(any: &Any) -> Option<M> {
    M::decode(any.value.as_slice()).ok()
}

fn task_io(io: &ev::TaskIo, path: &[String]) -> Option<String> {
    match path.first()?.as_str() {
        "stdin" => s(&io.stdin),
        "stdout" => s(&io.stdout),
        "stderr" => s(&io.stderr),
        "terminal" => Some(io.terminal.to_string()),
        _ => None,
    }
}

/// The value of `path` (after `event.`) in the event `any`, if defined.
pub fn event_field(any: &Any, path: &[String]) -> Option<String> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let (first, rest) = (path.first()?.as_str(), &path[1..]);
    match name {
        "containerd.events.ContainerCreate" => {
            let m: ev::ContainerCreate = decode(any)?;
            match first {
                "id" => s(&m.id),
                "image" => s(&m.image),
                "runtime" => match rest.first()?.as_str() {
                    "name" => s(&m.runtime?.name),
                    _ => None,
                },
                _ => None,
            }
        }
        "containerd.events.ContainerUpdate" => {
            let m: ev::ContainerUpdate = decode(any)?;
            match first {
                "id" => s(&m.id),
                "image" => s(&m.image),
                "labels" => labels(&m.labels, rest),
                "snapshot_key" => s(&m.snapshot_key),
                _ => None,
            }
        }
        "containerd.events.ContainerDelete" => match first {
            "id" => s(&decode::<ev::ContainerDelete>(any)?.id),
            _ => None,
        },
        "containerd.events.ContentCreate" => match first {
            "digest" => s(&decode::<ev::ContentCreate>(any)?.digest),
            _ => None,
        },
        "containerd.events.ContentDelete" => match first {
            "digest" => s(&decode::<ev::ContentDelete>(any)?.digest),
            _ => None,
        },
        "containerd.services.images.v1.ImageCreate" => {
            let m: images::ImageCreate = decode(any)?;
            named(first, rest, &m.name, Some(&m.labels))
        }
        "containerd.services.images.v1.ImageUpdate" => {
            let m: images::ImageUpdate = decode(any)?;
            named(first, rest, &m.name, Some(&m.labels))
        }
        "containerd.services.images.v1.ImageDelete" => {
            named(first, rest, &decode::<images::ImageDelete>(any)?.name, None)
        }
        "containerd.events.NamespaceCreate" => {
            let m: ev::NamespaceCreate = decode(any)?;
            named(first, rest, &m.name, Some(&m.labels))
        }
        "containerd.events.NamespaceUpdate" => {
            let m: ev::NamespaceUpdate = decode(any)?;
            named(first, rest, &m.name, Some(&m.labels))
        }
        "containerd.events.NamespaceDelete" => named(first, rest, &decode::<ev::NamespaceDelete>(any)?.name, None),
        "containerd.events.SnapshotPrepare" => {
            let m: ev::SnapshotPrepare = decode(any)?;
            match first {
                "key" => s(&m.key),
                "parent" => s(&m.parent),
                "snapshotter" => s(&m.snapshotter),
                _ => None,
            }
        }
        "containerd.events.SnapshotCommit" => {
            let m: ev::SnapshotCommit = decode(any)?;
            match first {
                "key" => s(&m.key),
                "name" => s(&m.name),
                "snapshotter" => s(&m.snapshotter),
                _ => None,
            }
        }
        "containerd.events.SnapshotRemove" => {
            let m: ev::SnapshotRemove = decode(any)?;
            match first {
                "key" => s(&m.key),
                "snapshotter" => s(&m.snapshotter),
                _ => None,
            }
        }
        "containerd.events.TaskCreate" => {
            let m: ev::TaskCreate = decode(any)?;
            match first {
                "container_id" => s(&m.container_id),
                "bundle" => s(&m.bundle),
                "io" => task_io(m.io.as_ref()?, rest),
                "checkpoint" => s(&m.checkpoint),
                _ => None,
            }
        }
        "containerd.events.TaskStart" => container_only(first, &decode::<ev::TaskStart>(any)?.container_id),
        "containerd.events.TaskDelete" => {
            let m: ev::TaskDelete = decode(any)?;
            match first {
                "container_id" => s(&m.container_id),
                "id" => s(&m.id),
                _ => None,
            }
        }
        "containerd.events.TaskIO" | "containerd.events.TaskIo" => task_io(&decode::<ev::TaskIo>(any)?, path),
        "containerd.events.TaskExit" => {
            let m: ev::TaskExit = decode(any)?;
            match first {
                "container_id" => s(&m.container_id),
                "id" => s(&m.id),
                _ => None,
            }
        }
        "containerd.events.TaskOOM" | "containerd.events.TaskOom" => {
            container_only(first, &decode::<ev::TaskOom>(any)?.container_id)
        }
        "containerd.events.TaskExecAdded" => {
            let m: ev::TaskExecAdded = decode(any)?;
            exec(first, &m.container_id, &m.exec_id)
        }
        "containerd.events.TaskExecStarted" => {
            let m: ev::TaskExecStarted = decode(any)?;
            exec(first, &m.container_id, &m.exec_id)
        }
        "containerd.events.TaskPaused" => container_only(first, &decode::<ev::TaskPaused>(any)?.container_id),
        "containerd.events.TaskResumed" => container_only(first, &decode::<ev::TaskResumed>(any)?.container_id),
        "containerd.events.TaskCheckpointed" => {
            let m: ev::TaskCheckpointed = decode(any)?;
            match first {
                "container_id" => s(&m.container_id),
                "checkpoint" => s(&m.checkpoint),
                _ => None,
            }
        }
        _ => None,
    }
}

fn named(first: &str, rest: &[String], name: &str, l: Option<&HashMap<String, String>>) -> Option<String> {
    match first {
        "name" => s(name),
        "labels" => labels(l?, rest),
        _ => None,
    }
}

fn container_only(first: &str, container_id: &str) -> Option<String> {
    (first == "container_id").then(|| s(container_id)).flatten()
}

fn exec(first: &str, container_id: &str, exec_id: &str) -> Option<String> {
    match first {
        "container_id" => s(container_id),
        "exec_id" => s(exec_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn fields_of_containerd_events() {
        let ns = crated_events_api::any_event(&ev::NamespaceCreate {
            name: "x".into(),
            labels: HashMap::from([("a.b".to_string(), "c".to_string())]),
        });
        assert_eq!(event_field(&ns, &p("name")).as_deref(), Some("x"));
        assert_eq!(event_field(&ns, &p("labels.a.b")).as_deref(), Some("c"));
        assert_eq!(event_field(&ns, &p("labels.zz")), None);
        assert_eq!(event_field(&ns, &p("other")), None);

        let task = crated_events_api::any_event(&ev::TaskCreate {
            container_id: "c1".into(),
            io: Some(ev::TaskIo { stdin: "/in".into(), terminal: false, ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(event_field(&task, &p("container_id")).as_deref(), Some("c1"));
        assert_eq!(event_field(&task, &p("io.stdin")).as_deref(), Some("/in"));
        assert_eq!(event_field(&task, &p("io.terminal")).as_deref(), Some("false"));
        assert_eq!(event_field(&task, &p("bundle")), None, "empty strings are absent");

        let unknown = Any { type_url: "example.Unknown".into(), value: vec![1, 2, 3] };
        assert_eq!(event_field(&unknown, &p("name")), None);
    }
}
