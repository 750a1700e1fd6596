//! Packs a root filesystem directory into a single-layer OCI image tar (a
//! gzip layer, config with its diff id, manifest, index) with the test image
//! builders, for `scripts/bench-unpack.sh`. Prints what it built:
//! `layer_compressed_bytes`, `layer_bytes`, `entries`, `archive_bytes`,
//! `target`, `diff_id` (`key=value` lines).
//!
//! Usage: rootfs_image [--user <user>] <rootfs dir> <out.tar> <ref name> [cmd arg...]
//! (the config's `Cmd`, `/bin/sh` when none is given; `--user` sets the
//! config's `User`, as a Dockerfile's `USER`).

use std::path::Path;

use crated_tests::images::{oci_archive_of, Compression, ImageOptions, Layers, Platforms};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().collect();
    let user = match args.get(1).map(String::as_str) {
        Some("--user") if args.len() > 2 => {
            let user = args.remove(2);
            args.remove(1);
            Some(user)
        }
        _ => None,
    };
    let [_, rootfs, out, ref_name, cmd @ ..] = args.as_slice() else {
        return Err("usage: rootfs_image [--user <user>] <rootfs dir> <out.tar> <ref name> [cmd arg...]".into());
    };
    let mut builder = tar::Builder::new(Vec::new());
    // Symlinks stay symlinks; owners, modes and mtimes are kept.
    builder.follow_symlinks(false);
    builder.append_dir_all(".", Path::new(rootfs))?;
    let layer = builder.into_inner()?;
    let entries = tar::Archive::new(layer.as_slice()).entries()?.count();
    let options = ImageOptions {
        ref_name: Some(ref_name.clone()),
        compression: Compression::Gzip,
        layers: Layers::Rootfs,
        platforms: Platforms::Amd64,
        cmd: (!cmd.is_empty()).then(|| cmd.to_vec()),
        user,
        volumes: Vec::new(),
    };
    let layer_bytes = layer.len();
    let archive = oci_archive_of(&options, vec![layer])?;
    std::fs::write(out, &archive.tar)?;
    let layer_digest = &archive.layers[0];
    let files = crated_tests::images::tar_files(&archive.tar)?;
    let stored = files.get(&format!("blobs/sha256/{}", layer_digest.trim_start_matches("sha256:"))).map_or(0, Vec::len);
    println!("layer_compressed_bytes={stored}");
    println!("layer_bytes={layer_bytes}");
    println!("entries={entries}");
    println!("archive_bytes={}", archive.tar.len());
    println!("target={}", archive.target);
    println!("diff_id={}", archive.diff_ids[0]);
    Ok(())
}
