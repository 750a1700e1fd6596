//! `containerd.services.containers.v1.Containers` (containerd's
//! services/containers/local.go): namespaced; `ListStream` sends one
//! container per message; publishes /containers/create, /containers/update
//! and /containers/delete with containerd's events.

use containerd_client::events::{container_create, ContainerCreate, ContainerDelete, ContainerUpdate};
use containerd_client::services::v1::{
    container, Container, CreateContainerRequest, CreateContainerResponse, DeleteContainerRequest, GetContainerRequest,
    GetContainerResponse, ListContainerMessage, ListContainersRequest, ListContainersResponse, UpdateContainerRequest,
    UpdateContainerResponse,
};
use crated_events_api::topics;
use crated_plugin_api::{Call, ServiceRouter, Status};

use super::{any_in, any_out, blocking, labels_in, labels_out, namespace, timestamp, Events};
use crate::containers::{self as store, ContainerStore};

const SERVICE: &str = "/containerd.services.containers.v1.Containers";

fn out(c: store::Container) -> Container {
    Container {
        id: c.id,
        labels: labels_out(c.labels),
        image: c.image,
        runtime: Some(container::Runtime { name: c.runtime.name, options: c.runtime.options.map(any_out) }),
        spec: c.spec.map(any_out),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
        extensions: c.extensions.into_iter().map(|(k, v)| (k, any_out(v))).collect(),
        sandbox: c.sandbox,
    }
}

fn container_in(c: Container) -> store::Container {
    let runtime = c.runtime.unwrap_or_default();
    store::Container {
        id: c.id,
        labels: labels_in(c.labels),
        image: c.image,
        runtime: store::Runtime { name: runtime.name, options: runtime.options.map(any_in) },
        spec: c.spec.map(any_in),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        extensions: c.extensions.into_iter().map(|(k, v)| (k, any_in(v))).collect(),
        sandbox: c.sandbox,
        created_at: 0,
        updated_at: 0,
    }
}

pub fn routes(router: ServiceRouter, store: ContainerStore, events: Events) -> ServiceRouter {
    let svc = ContainerService { store, events };
    router
        .unary_with(&format!("{SERVICE}/Get"), &svc, ContainerService::get)
        .unary_with(&format!("{SERVICE}/List"), &svc, ContainerService::list)
        .server_streaming_with(&format!("{SERVICE}/ListStream"), &svc, ContainerService::list_stream)
        .unary_with(&format!("{SERVICE}/Create"), &svc, ContainerService::create)
        .unary_with(&format!("{SERVICE}/Update"), &svc, ContainerService::update)
        .unary_with(&format!("{SERVICE}/Delete"), &svc, ContainerService::delete)
}

/// The Containers service over the namespace's containers; publishes its
/// changes.
#[derive(Clone)]
struct ContainerService {
    store: ContainerStore,
    events: Events,
}

impl ContainerService {
    async fn get(self, call: Call, req: GetContainerRequest) -> Result<GetContainerResponse, Status> {
        let ns = namespace(&call)?;
        let c = blocking(move || Ok(self.store.get(&ns, &req.id)?)).await?;
        Ok(GetContainerResponse { container: Some(out(c)) })
    }

    async fn list(self, call: Call, req: ListContainersRequest) -> Result<ListContainersResponse, Status> {
        let ns = namespace(&call)?;
        let filter = super::store_filter(&req.filters)?;
        let all = blocking(move || Ok(self.store.list(&ns, &filter)?)).await?;
        Ok(ListContainersResponse { containers: all.into_iter().map(out).collect() })
    }

    async fn list_stream(
        self,
        call: Call,
        req: ListContainersRequest,
    ) -> Result<impl futures::Stream<Item = Result<ListContainerMessage, Status>>, Status> {
        let ns = namespace(&call)?;
        let filter = super::store_filter(&req.filters)?;
        let all = blocking(move || Ok(self.store.list(&ns, &filter)?)).await?;
        Ok(futures::stream::iter(
            all.into_iter().map(|c| Ok::<_, Status>(ListContainerMessage { container: Some(out(c)) })),
        ))
    }

    async fn create(self, call: Call, req: CreateContainerRequest) -> Result<CreateContainerResponse, Status> {
        let ns = namespace(&call)?;
        let c = container_in(req.container.unwrap_or_default());
        let (s, n) = (self.store, ns.clone());
        let c = blocking(move || Ok(s.create(&n, c)?)).await?;
        let ev = ContainerCreate {
            id: c.id.clone(),
            image: c.image.clone(),
            runtime: Some(container_create::Runtime {
                name: c.runtime.name.clone(),
                options: c.runtime.options.clone().map(any_out),
            }),
        };
        self.events.publish(&ns, topics::CONTAINER_CREATE, &ev).await;
        Ok(CreateContainerResponse { container: Some(out(c)) })
    }

    async fn update(self, call: Call, req: UpdateContainerRequest) -> Result<UpdateContainerResponse, Status> {
        let ns = namespace(&call)?;
        let c = container_in(req.container.unwrap_or_default());
        if c.id.is_empty() {
            return Err(Status::invalid_argument("Container.ID required"));
        }
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let (s, n) = (self.store, ns.clone());
        let c = blocking(move || Ok(s.update(&n, c, &paths)?)).await?;
        let ev = ContainerUpdate {
            id: c.id.clone(),
            image: c.image.clone(),
            labels: labels_out(c.labels.clone()),
            snapshot_key: c.snapshot_key.clone(),
        };
        self.events.publish(&ns, topics::CONTAINER_UPDATE, &ev).await;
        Ok(UpdateContainerResponse { container: Some(out(c)) })
    }

    async fn delete(self, call: Call, req: DeleteContainerRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        let (s, n, id) = (self.store, ns.clone(), req.id.clone());
        blocking(move || Ok(s.delete(&n, &id)?)).await?;
        self.events.publish(&ns, topics::CONTAINER_DELETE, &ContainerDelete { id: req.id }).await;
        Ok(())
    }
}
