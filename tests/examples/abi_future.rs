//! A library that reports a newer plugin-api ABI version than the daemon
//! speaks, with an otherwise identical layout: the daemon's own version check
//! must refuse it by number.

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{ROk, RResult, RStr, RString, RVec},
};
use crated_plugin_api::abi::{PluginLibrary, PluginLibraryRef, Registration};

extern "C" fn registrations() -> RResult<RVec<Registration>, RString> {
    ROk(RVec::new())
}

#[abi_stable::export_root_module]
pub fn root() -> PluginLibraryRef {
    PluginLibrary {
        abi_version: crated_plugin_api::abi::ABI_VERSION + 1,
        sdk_version: RStr::from_str("99.0.0"),
        registrations,
    }
    .leak_into_prefix()
}
