//! A shared library that is not a crated plugin: it exports no root module.

#[no_mangle]
pub extern "C" fn not_a_plugin_answer() -> u32 {
    42
}
