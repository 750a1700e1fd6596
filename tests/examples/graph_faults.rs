//! Test plugins whose dependencies are wrong: a missing dependency, a cycle,
//! a dependent of the cycle, a duplicate of echo's `type.id`, and one plugin
//! that is fine, to prove the rest still starts.

use crated_plugin_api::{export_plugins, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

macro_rules! plugin {
    ($name:ident, $type:expr, $id:expr, [$($req:expr),*]) => {
        struct $name;
        impl Plugin for $name {
            fn info() -> PluginInfo {
                PluginInfo::new($type, $id).requires(&[$($req),*])
            }
            async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
                Ok(ServiceRouter::new())
            }
        }
    };
}

plugin!(Orphan, "io.crated.orphan.v1", "orphan", ["io.crated.nothing.v1"]);
plugin!(CycleA, "io.crated.cyclea.v1", "a", ["io.crated.cycleb.v1"]);
plugin!(CycleB, "io.crated.cycleb.v1", "b", ["io.crated.cyclea.v1"]);
plugin!(AfterCycle, "io.crated.aftercycle.v1", "c", ["io.crated.cyclea.v1"]);
plugin!(Duplicate, "io.crated.test.v1", "echo", []);
plugin!(Fine, "io.crated.fine.v1", "fine", []);

export_plugins!(Orphan, CycleA, CycleB, AfterCycle, Duplicate, Fine);
