//! Prints the stock containerd config the tests use ([`crated_tests::stock`])
//! for a directory, so that `scripts/bench-unpack.sh` runs containerd on the
//! same layout. Usage: stock_config <dir>

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: stock_config <dir>");
        std::process::exit(2);
    };
    print!("{}", crated_tests::stock::containerd_config(std::path::Path::new(&dir), ""));
}
