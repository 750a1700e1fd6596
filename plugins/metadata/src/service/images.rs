//! `containerd.services.images.v1.Images` (containerd's
//! services/images/local.go): namespaced; publishes /images/create,
//! /images/update and /images/delete with the events of the images API
//! (`containerd.services.images.v1.ImageCreate` etc.). A Delete carrying a
//! target (containerd 2.x) deletes only an image with that target digest.
//! A Delete with `sync` runs a garbage collection before it answers
//! (containerd's `ScheduleAndWait`).

use containerd_client::services::v1::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse, Image, ImageCreate,
    ImageDelete, ImageUpdate, ListImagesRequest, ListImagesResponse, UpdateImageRequest, UpdateImageResponse,
};
use containerd_client::types::Descriptor;
use crated_events_api::topics;
use crated_plugin_api::{Call, ServiceRouter, Status};

use super::{blocking, labels_in, labels_out, namespace, timestamp, Events};
use crate::gc::Collector;
use crate::images::{self as store, ImageStore};

const SERVICE: &str = "/containerd.services.images.v1.Images";

fn out(i: store::Image) -> Image {
    Image {
        name: i.name,
        labels: labels_out(i.labels),
        target: Some(Descriptor {
            media_type: i.target.media_type,
            digest: i.target.digest,
            size: i.target.size,
            annotations: labels_out(i.target.annotations),
        }),
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
    }
}

fn image_in(i: Image) -> store::Image {
    let t = i.target.unwrap_or_default();
    store::Image {
        name: i.name,
        labels: labels_in(i.labels),
        target: store::Descriptor {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            annotations: labels_in(t.annotations),
        },
        created_at: 0,
        updated_at: 0,
    }
}

/// The image of a Create or Update, which must name one.
fn required(image: Option<Image>) -> Result<store::Image, Status> {
    let image = image_in(image.unwrap_or_default());
    if image.name.is_empty() {
        return Err(Status::invalid_argument("Image.Name required"));
    }
    Ok(image)
}

pub fn routes(router: ServiceRouter, store: ImageStore, events: Events, gc: Collector) -> ServiceRouter {
    let svc = ImageService { store, events, gc };
    router
        .unary_with(&format!("{SERVICE}/Get"), &svc, ImageService::get)
        .unary_with(&format!("{SERVICE}/List"), &svc, ImageService::list)
        .unary_with(&format!("{SERVICE}/Create"), &svc, ImageService::create)
        .unary_with(&format!("{SERVICE}/Update"), &svc, ImageService::update)
        .unary_with(&format!("{SERVICE}/Delete"), &svc, ImageService::delete)
}

/// The Images service over the namespace's images; publishes its changes.
#[derive(Clone)]
struct ImageService {
    store: ImageStore,
    events: Events,
    gc: Collector,
}

impl ImageService {
    async fn get(self, call: Call, req: GetImageRequest) -> Result<GetImageResponse, Status> {
        let ns = namespace(&call)?;
        let i = blocking(move || Ok(self.store.get(&ns, &req.name)?)).await?;
        Ok(GetImageResponse { image: Some(out(i)) })
    }

    async fn list(self, call: Call, req: ListImagesRequest) -> Result<ListImagesResponse, Status> {
        let ns = namespace(&call)?;
        let filter = super::store_filter(&req.filters)?;
        let all = blocking(move || Ok(self.store.list(&ns, &filter)?)).await?;
        Ok(ListImagesResponse { images: all.into_iter().map(out).collect() })
    }

    async fn create(self, call: Call, req: CreateImageRequest) -> Result<CreateImageResponse, Status> {
        let ns = namespace(&call)?;
        let image = required(req.image)?;
        let (s, n) = (self.store, ns.clone());
        let i = blocking(move || Ok(s.create(&n, image)?)).await?;
        let ev = ImageCreate { name: i.name.clone(), labels: labels_out(i.labels.clone()) };
        self.events.publish(&ns, topics::IMAGE_CREATE, &ev).await;
        Ok(CreateImageResponse { image: Some(out(i)) })
    }

    async fn update(self, call: Call, req: UpdateImageRequest) -> Result<UpdateImageResponse, Status> {
        let ns = namespace(&call)?;
        let image = required(req.image)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let (s, n) = (self.store, ns.clone());
        let i = blocking(move || Ok(s.update(&n, image, &paths)?)).await?;
        let ev = ImageUpdate { name: i.name.clone(), labels: labels_out(i.labels.clone()) };
        self.events.publish(&ns, topics::IMAGE_UPDATE, &ev).await;
        Ok(UpdateImageResponse { image: Some(out(i)) })
    }

    async fn delete(self, call: Call, req: DeleteImageRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        let (s, n, name) = (self.store, ns.clone(), req.name.clone());
        let target = req.target.map(|t| t.digest).filter(|d| !d.is_empty());
        blocking(move || Ok(s.delete(&n, &name, target.as_deref())?)).await?;
        self.events.publish(&ns, topics::IMAGE_DELETE, &ImageDelete { name: req.name }).await;
        if req.sync {
            self.gc.collect().await?;
        }
        Ok(())
    }
}
