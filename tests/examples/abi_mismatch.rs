//! A library built against an incompatible plugin-api: its root module has
//! the same name as the real one but another layout (the ABI number is a
//! `u64` and the registrations are plain strings). abi_stable's layout check
//! must refuse it before any of its code runs.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    prefix_type::PrefixTypeTrait,
    sabi_types::VersionStrings,
    std_types::{RStr, RString, RVec},
    StableAbi,
};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = OldLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct OldLibrary {
    pub abi_version: u64,
    pub sdk_version: RStr<'static>,
    #[sabi(last_prefix_field)]
    pub registrations: extern "C" fn() -> RVec<RString>,
}

impl RootModule for OldLibraryRef {
    declare_root_module_statics! {OldLibraryRef}
    const BASE_NAME: &'static str = "crated_plugin";
    const NAME: &'static str = "crated_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

extern "C" fn registrations() -> RVec<RString> {
    RVec::new()
}

#[abi_stable::export_root_module]
pub fn root() -> OldLibraryRef {
    OldLibrary { abi_version: 1, sdk_version: RStr::from_str("0.0.1"), registrations }.leak_into_prefix()
}
