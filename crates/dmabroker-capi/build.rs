//! Give libdmabroker.so its soname, `libdmabroker.so.<major>`, so programs
//! linked against it find the ABI-compatible library after upgrades
//! (`scripts/install.sh` installs the symlinks). Only the cdylib gets it.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".to_owned());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdmabroker.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
