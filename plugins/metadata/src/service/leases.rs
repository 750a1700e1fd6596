//! `containerd.services.leases.v1.Leases` (containerd's
//! services/leases/service.go). Namespaced; containerd publishes no lease
//! events, and neither does this. Deletion never collects content here
//! (there is no garbage collector yet), so `sync` has nothing to wait for.

use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest, Lease, ListRequest,
    ListResourcesRequest, ListResourcesResponse, ListResponse, Resource,
};
use crated_plugin_api::{Call, ServiceRouter, Status};

use super::{blocking, labels_in, labels_out, namespace, timestamp};
use crate::leases::{self as store, random_id, LeaseStore};

const SERVICE: &str = "/containerd.services.leases.v1.Leases";

fn out(l: store::Lease) -> Lease {
    Lease { id: l.id, created_at: Some(timestamp(l.created_at)), labels: labels_out(l.labels) }
}

fn resource(r: Option<Resource>) -> Result<store::Resource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource must be provided"))?;
    Ok(store::Resource { id: r.id, kind: r.r#type })
}

pub fn routes(router: ServiceRouter, store: LeaseStore) -> ServiceRouter {
    let (s1, s2, s3, s4, s5, s6) = (store.clone(), store.clone(), store.clone(), store.clone(), store.clone(), store);
    router
        .unary(&format!("{SERVICE}/Create"), move |call: Call, req: CreateRequest| {
            let s = s1.clone();
            async move {
                let ns = namespace(&call)?;
                let id = if req.id.is_empty() { random_id() } else { req.id };
                let l = blocking(move || Ok(s.create(&ns, &id, labels_in(req.labels))?)).await?;
                Ok(CreateResponse { lease: Some(out(l)) })
            }
        })
        .unary(&format!("{SERVICE}/Delete"), move |call: Call, req: DeleteRequest| {
            let s = s2.clone();
            async move {
                let ns = namespace(&call)?;
                blocking(move || Ok(s.delete(&ns, &req.id)?)).await?;
                Ok(())
            }
        })
        .unary(&format!("{SERVICE}/List"), move |call: Call, req: ListRequest| {
            let s = s3.clone();
            async move {
                let ns = namespace(&call)?;
                let filter = super::store_filter(&req.filters)?;
                let leases = blocking(move || Ok(s.list(&ns, &filter)?)).await?;
                Ok(ListResponse { leases: leases.into_iter().map(out).collect() })
            }
        })
        .unary(&format!("{SERVICE}/AddResource"), move |call: Call, req: AddResourceRequest| {
            let s = s4.clone();
            async move {
                let ns = namespace(&call)?;
                let r = resource(req.resource)?;
                blocking(move || Ok(s.add_resource(&ns, &req.id, &r)?)).await?;
                Ok(())
            }
        })
        .unary(&format!("{SERVICE}/DeleteResource"), move |call: Call, req: DeleteResourceRequest| {
            let s = s5.clone();
            async move {
                let ns = namespace(&call)?;
                let r = resource(req.resource)?;
                blocking(move || Ok(s.delete_resource(&ns, &req.id, &r)?)).await?;
                Ok(())
            }
        })
        .unary(&format!("{SERVICE}/ListResources"), move |call: Call, req: ListResourcesRequest| {
            let s = s6.clone();
            async move {
                let ns = namespace(&call)?;
                let rs = blocking(move || Ok(s.list_resources(&ns, &req.id)?)).await?;
                Ok(ListResourcesResponse {
                    resources: rs.into_iter().map(|r| Resource { id: r.id, r#type: r.kind }).collect(),
                })
            }
        })
}
