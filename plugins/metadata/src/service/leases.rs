//! `containerd.services.leases.v1.Leases` (containerd's
//! services/leases/service.go). Namespaced; containerd publishes no lease
//! events, and neither does this. A Delete with `sync` runs a garbage
//! collection before it answers (containerd's `ScheduleAndWait`).

use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest, Lease, ListRequest,
    ListResourcesRequest, ListResourcesResponse, ListResponse, Resource,
};
use crated_plugin_api::{Call, ServiceRouter, Status};

use super::{blocking, labels_in, labels_out, namespace, timestamp};
use crate::gc::Collector;
use crate::leases::{self as store, random_id, LeaseStore};

const SERVICE: &str = "/containerd.services.leases.v1.Leases";

fn out(l: store::Lease) -> Lease {
    Lease { id: l.id, created_at: Some(timestamp(l.created_at)), labels: labels_out(l.labels) }
}

fn resource(r: Option<Resource>) -> Result<store::Resource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource must be provided"))?;
    Ok(store::Resource { id: r.id, kind: r.r#type })
}

pub fn routes(router: ServiceRouter, store: LeaseStore, gc: Collector) -> ServiceRouter {
    let svc = LeaseService { store, gc };
    router
        .unary_with(&format!("{SERVICE}/Create"), &svc, LeaseService::create)
        .unary_with(&format!("{SERVICE}/Delete"), &svc, LeaseService::delete)
        .unary_with(&format!("{SERVICE}/List"), &svc, LeaseService::list)
        .unary_with(&format!("{SERVICE}/AddResource"), &svc, LeaseService::add_resource)
        .unary_with(&format!("{SERVICE}/DeleteResource"), &svc, LeaseService::delete_resource)
        .unary_with(&format!("{SERVICE}/ListResources"), &svc, LeaseService::list_resources)
}

/// The Leases service over the namespace's leases.
#[derive(Clone)]
struct LeaseService {
    store: LeaseStore,
    gc: Collector,
}

impl LeaseService {
    async fn create(self, call: Call, req: CreateRequest) -> Result<CreateResponse, Status> {
        let ns = namespace(&call)?;
        let id = if req.id.is_empty() { random_id() } else { req.id };
        let l = blocking(move || Ok(self.store.create(&ns, &id, labels_in(req.labels))?)).await?;
        Ok(CreateResponse { lease: Some(out(l)) })
    }

    async fn delete(self, call: Call, req: DeleteRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        let store = self.store;
        blocking(move || Ok(store.delete(&ns, &req.id)?)).await?;
        if req.sync {
            self.gc.collect().await?;
        }
        Ok(())
    }

    async fn list(self, call: Call, req: ListRequest) -> Result<ListResponse, Status> {
        let ns = namespace(&call)?;
        let filter = super::store_filter(&req.filters)?;
        let leases = blocking(move || Ok(self.store.list(&ns, &filter)?)).await?;
        Ok(ListResponse { leases: leases.into_iter().map(out).collect() })
    }

    async fn add_resource(self, call: Call, req: AddResourceRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        let r = resource(req.resource)?;
        blocking(move || Ok(self.store.add_resource(&ns, &req.id, &r)?)).await?;
        Ok(())
    }

    async fn delete_resource(self, call: Call, req: DeleteResourceRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        let r = resource(req.resource)?;
        blocking(move || Ok(self.store.delete_resource(&ns, &req.id, &r)?)).await?;
        Ok(())
    }

    async fn list_resources(self, call: Call, req: ListResourcesRequest) -> Result<ListResourcesResponse, Status> {
        let ns = namespace(&call)?;
        let rs = blocking(move || Ok(self.store.list_resources(&ns, &req.id)?)).await?;
        Ok(ListResourcesResponse { resources: rs.into_iter().map(|r| Resource { id: r.id, r#type: r.kind }).collect() })
    }
}
