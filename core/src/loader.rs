//! Finds and opens plugin libraries: every `*.so` in `plugin_dir`.
//!
//! Each library is opened through abi_stable's checked loader, which
//! compares the type layout of the whole ABI tree with the one this daemon
//! was built with, then our own ABI number is compared. A library that is not
//! a plugin, or is incompatible, becomes a [`LibraryError`] that introspection
//! reports; it never stops the daemon.
//!
//! Why `lib_header_from_path` and not `RootModule::load_from_file`: the
//! latter caches the first module loaded per root-module type, so a second
//! library would silently come back as the first one.
//!
//! Libraries are never unloaded (abi_stable leaks them on purpose); a reload
//! must load a fresh copy under another path.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use crated_plugin_api::abi::{PluginLibraryRef, Registration, ABI_VERSION};

/// One library that loaded, with its registrations.
pub struct LoadedLibrary {
    pub path: PathBuf,
    pub abi_version: u32,
    pub sdk_version: String,
    pub registrations: Vec<Registration>,
}

/// A file in `plugin_dir` that could not be used, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct LibraryLoadError {
    pub path: PathBuf,
    pub message: String,
}

/// The outcome of scanning a plugin directory.
#[derive(Default)]
pub struct Scan {
    pub libraries: Vec<LoadedLibrary>,
    pub errors: Vec<LibraryLoadError>,
}

/// Lists the `*.so` files of `dir`, sorted by name so load order is stable.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "so") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every plugin library in `dir`. A missing directory is an empty scan
/// with one error.
pub fn scan(dir: &Path) -> Scan {
    let mut scan = Scan::default();
    let files = match plugin_files(dir) {
        Ok(f) => f,
        Err(e) => {
            scan.errors
                .push(LibraryLoadError { path: dir.to_path_buf(), message: format!("cannot read plugin_dir: {e}") });
            return scan;
        }
    };
    for path in files {
        match load(&path) {
            Ok(lib) => scan.libraries.push(lib),
            Err(message) => scan.errors.push(LibraryLoadError { path, message }),
        }
    }
    scan
}

/// Loads one library and reads its registrations.
pub fn load(path: &Path) -> Result<LoadedLibrary, String> {
    let header = lib_header_from_path(path).map_err(|e| describe(&e))?;
    let module = header.init_root_module::<PluginLibraryRef>().map_err(|e| describe(&e))?;
    let abi_version = module.abi_version();
    let sdk_version = module.sdk_version().to_string();
    if abi_version != ABI_VERSION {
        return Err(format!(
            "incompatible plugin-api ABI: this daemon expects ABI version {ABI_VERSION}, the library was built \
             against ABI version {abi_version} (crated-plugin-api {sdk_version}); rebuild it against a compatible \
             crated-plugin-api"
        ));
    }
    let registrations = match (module.registrations())() {
        abi_stable::std_types::ROk(r) => r.into_vec(),
        abi_stable::std_types::RErr(m) => return Err(format!("library failed to list its plugins: {m}")),
    };
    Ok(LoadedLibrary { path: path.to_path_buf(), abi_version, sdk_version, registrations })
}

/// Turns abi_stable's error (which for a layout mismatch runs to thousands of
/// lines) into a message a person can read.
fn describe(e: &LibraryError) -> String {
    match e {
        LibraryError::OpenError { err, .. } => format!("cannot open library: {err}"),
        LibraryError::GetSymbolError { .. } => {
            "not a crated plugin: the library does not export a crated plugin root module \
             (symbol _1as_0lib_1header_0root_bmodule_bloader); build it with crated_plugin_api::export_plugins!"
                .to_string()
        }
        LibraryError::IncompatibleVersionNumber { library_name, expected_version, actual_version } => format!(
            "incompatible plugin-api version: this daemon expects {library_name} {expected_version}, \
             the library was built against {actual_version}"
        ),
        LibraryError::AbiInstability(err) => {
            let detail = error_paragraphs(&err.to_string());
            format!(
                "incompatible plugin-api ABI: the library's types do not match this daemon's \
                 crated-plugin-api {}: {detail}",
                crated_plugin_api::SDK_VERSION
            )
        }
        other => {
            let text = other.to_string();
            let first: Vec<&str> = text.lines().take(6).collect();
            format!("cannot load plugin library: {}", first.join("; "))
        }
    }
}

/// The `Error:` paragraphs of an abi_stable layout report, each on one line
/// ("Error:mismatched type Expected: PluginLibrary Found: OldLibrary").
fn error_paragraphs(report: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in report.lines().map(str::trim) {
        if line.starts_with("Error:") {
            if let Some(p) = current.take() {
                out.push(p.join(" "));
            }
            current = Some(vec![line]);
        } else if line.is_empty() {
            if let Some(p) = current.take() {
                out.push(p.join(" "));
            }
        } else if let Some(p) = current.as_mut() {
            p.push(line);
        }
    }
    if let Some(p) = current.take() {
        out.push(p.join(" "));
    }
    out.dedup();
    out.truncate(5);
    if out.is_empty() {
        report.lines().map(str::trim).filter(|l| !l.is_empty()).take(3).collect::<Vec<_>>().join(" ")
    } else {
        out.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::error_paragraphs;

    #[test]
    fn layout_reports_shrink_to_their_error_lines() {
        let report = "Compared <this>:\n  --- Type Layout ---\n  lots\n\nError:mismatched type\nExpected:\n    A\nFound:\n    B\n\n";
        assert_eq!(error_paragraphs(report), "Error:mismatched type Expected: A Found: B");
    }
}
