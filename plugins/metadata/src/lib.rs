//! io.containerd.metadata.v1.redb: namespaces, leases, namespaced content
//! records, images, containers and snapshot records on redb, serving
//! containerd's Namespaces, Leases, (namespaced) Content, Images, Containers
//! and (namespaced) Snapshots services. Snapshotters are optional
//! dependencies: each request names the one it goes to.
//!
//! Like containerd, the stores are plain library modules ([`db`],
//! [`namespaces`], [`leases`], [`content`], [`images`], [`containers`],
//! [`snapshots`]) and
//! [`service`] maps gRPC to them; [`gc`] is the garbage collector over all
//! of them; this file only registers the plugin.

pub mod containers;
pub mod content;
pub mod db;
pub mod gc;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod service;
pub mod snapshots;

use std::time::Duration;

use crated_plugin_api::{snapshots::SnapshotterClient, types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

use crate::{
    containers::ContainerStore, content::ContentStore, db::Db, images::ImageStore, leases::LeaseStore,
    namespaces::NamespaceStore, service::content::ContentService, service::Events, snapshots::SnapshotStore,
};

/// The plugin's database file, under its root directory.
pub const DB_FILE: &str = "meta.redb";

pub struct Metadata;

impl Plugin for Metadata {
    fn info() -> PluginInfo {
        PluginInfo::new(types::METADATA, "redb")
            .requires(&[types::CONTENT, types::EVENT])
            // With no snapshotter the Snapshots service answers that none is loaded.
            .requires_optional(&[types::SNAPSHOTTER])
            // How often leases past their `containerd.io/gc.expire` are removed.
            .config_defaults("lease_expiry_interval_ms = 10000\n")
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let interval = ctx
            .config
            .get("lease_expiry_interval_ms")
            .and_then(|v| v.as_integer())
            .filter(|v| *v > 0)
            .unwrap_or(10_000) as u64;
        let path = ctx.root.join(DB_FILE);
        let shown = path.display().to_string();
        let db = tokio::task::spawn_blocking(move || Db::open(&path))
            .await
            .map_err(PluginError::failed)?
            .map_err(|e| PluginError::failed(format!("{shown}: {e}")))?;

        let leases = LeaseStore::new(db.clone());
        let events = Events::new(ctx.host.clone());
        let content = ContentService::new(ContentStore::new(db.clone()), ctx.host.clone(), events.clone());

        let snapshotters: Vec<(String, SnapshotterClient)> = ctx
            .host
            .dependencies_of_type(types::SNAPSHOTTER)
            .into_iter()
            .map(|d| (d.id.clone(), SnapshotterClient::new(&ctx.host, &d.key())))
            .collect();
        let snapshots = SnapshotStore::new(db.clone(), snapshotters);
        let collector = gc::Collector::new(
            db.clone(),
            snapshots.clone(),
            ctx.host.clone(),
            content.blob_lock(),
            content.blob_pins(),
        );
        // Repair what a crash left between a record and its backend
        // snapshot (snapshots.rs explains why). Each repair holds its
        // snapshotter's lock, so that snapshotter's changes wait for it;
        // it runs in the background so that a proxy snapshotter that hangs
        // or is down delays only its own calls, never the daemon's start.
        for sn in snapshots.snapshotters() {
            let snapshots = snapshots.clone();
            tokio::spawn(async move {
                match snapshots.recover(&sn).await {
                    Ok((0, 0)) => {}
                    Ok((dropped, removed)) => crated_plugin_api::tracing::warn!(
                        "snapshotter {sn}: dropped {dropped} records without a backend snapshot, removed {removed} \
                         backend snapshots without a record"
                    ),
                    Err(e) => crated_plugin_api::tracing::warn!("snapshotter {sn}: recovery failed: {e}"),
                }
            });
        }

        let sweeper = leases.clone();
        let expiry = tokio::spawn(async move {
            loop {
                let s = sweeper.clone();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                match tokio::task::spawn_blocking(move || s.expire(now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => crated_plugin_api::tracing::warn!("expiring leases: {e}"),
                    Err(e) => crated_plugin_api::tracing::warn!("expiring leases: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(interval)).await;
            }
        });
        let expiry = std::sync::Arc::new(expiry);

        let router = ServiceRouter::new().on_shutdown(move || {
            let expiry = expiry.clone();
            async move { expiry.abort() }
        });
        let router = service::namespaces::routes(router, NamespaceStore::new(db.clone()), events.clone());
        let router = service::leases::routes(router, leases, collector.clone());
        let router = service::images::routes(router, ImageStore::new(db.clone()), events.clone(), collector.clone());
        let router = service::gc::routes(router, collector);
        let router = service::containers::routes(router, ContainerStore::new(db.clone()), events.clone());
        let router = service::snapshots::routes(router, snapshots, events);
        Ok(service::content::routes(router, content))
    }
}
