//! `containerd.services.namespaces.v1.Namespaces` (containerd's
//! services/namespaces/local.go): publishes /namespaces/create, update and
//! delete.

use containerd_client::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use containerd_client::services::v1::{
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest, GetNamespaceResponse,
    ListNamespacesRequest, ListNamespacesResponse, Namespace, UpdateNamespaceRequest, UpdateNamespaceResponse,
};
use crated_events_api::topics;
use crated_plugin_api::{
    filters::{labels_field, AnyFilter, Fields},
    Call, ServiceRouter, Status,
};

use super::{blocking, labels_in, labels_out, Events};
use crate::namespaces::{self as store, NamespaceStore};

const SERVICE: &str = "/containerd.services.namespaces.v1.Namespaces";

fn out(n: store::Namespace) -> Namespace {
    Namespace { name: n.name, labels: labels_out(n.labels) }
}

impl Fields for store::Namespace {
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        match path.first().map(String::as_str) {
            Some("name") if path.len() == 1 => Some(std::borrow::Cow::Borrowed(&self.name)),
            Some("labels") => labels_field(path, self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            _ => None,
        }
    }
}

/// The namespace an event about `name` is published in: the caller's, as
/// containerd does, or the namespace itself when the call has none.
fn event_ns<'a>(call: &'a Call, name: &'a str) -> &'a str {
    call.namespace().filter(|n| !n.is_empty()).unwrap_or(name)
}

pub fn routes(router: ServiceRouter, store: NamespaceStore, events: Events) -> ServiceRouter {
    let svc = NamespaceService { store, events };
    router
        .unary_with(&format!("{SERVICE}/Get"), &svc, NamespaceService::get)
        .unary_with(&format!("{SERVICE}/List"), &svc, NamespaceService::list)
        .unary_with(&format!("{SERVICE}/Create"), &svc, NamespaceService::create)
        .unary_with(&format!("{SERVICE}/Update"), &svc, NamespaceService::update)
        .unary_with(&format!("{SERVICE}/Delete"), &svc, NamespaceService::delete)
}

/// The Namespaces service over the namespace store; publishes its changes.
#[derive(Clone)]
struct NamespaceService {
    store: NamespaceStore,
    events: Events,
}

impl NamespaceService {
    async fn get(self, _: Call, req: GetNamespaceRequest) -> Result<GetNamespaceResponse, Status> {
        let n = blocking(move || Ok(self.store.get(&req.name)?)).await?;
        Ok(GetNamespaceResponse { namespace: Some(out(n)) })
    }

    async fn list(self, _: Call, req: ListNamespacesRequest) -> Result<ListNamespacesResponse, Status> {
        let filter = AnyFilter::parse(&[req.filter])?;
        let all = blocking(move || Ok(self.store.list()?)).await?;
        Ok(ListNamespacesResponse { namespaces: all.into_iter().filter(|n| filter.matches(n)).map(out).collect() })
    }

    async fn create(self, call: Call, req: CreateNamespaceRequest) -> Result<CreateNamespaceResponse, Status> {
        let ns = req.namespace.unwrap_or_default();
        let s = self.store;
        let n = blocking(move || Ok(s.create(&ns.name, labels_in(ns.labels))?)).await?;
        let ev = NamespaceCreate { name: n.name.clone(), labels: labels_out(n.labels.clone()) };
        self.events.publish(event_ns(&call, &n.name), topics::NAMESPACE_CREATE, &ev).await;
        Ok(CreateNamespaceResponse { namespace: Some(out(n)) })
    }

    async fn update(self, call: Call, req: UpdateNamespaceRequest) -> Result<UpdateNamespaceResponse, Status> {
        let ns = req.namespace.unwrap_or_default();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        // containerd's event carries the labels of the request, not
        // the namespace's labels after the update.
        let ev = NamespaceUpdate { name: ns.name.clone(), labels: ns.labels.clone() };
        let s = self.store;
        let n = blocking(move || Ok(s.update(&ns.name, labels_in(ns.labels), &paths)?)).await?;
        self.events.publish(event_ns(&call, &n.name), topics::NAMESPACE_UPDATE, &ev).await;
        Ok(UpdateNamespaceResponse { namespace: Some(out(n)) })
    }

    async fn delete(self, _: Call, req: DeleteNamespaceRequest) -> Result<(), Status> {
        let (s, name) = (self.store, req.name.clone());
        blocking(move || Ok(s.delete(&name)?)).await?;
        let ev = NamespaceDelete { name: req.name.clone() };
        // containerd publishes a delete in the deleted namespace.
        self.events.publish(&req.name, topics::NAMESPACE_DELETE, &ev).await;
        Ok(())
    }
}
