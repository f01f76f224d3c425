//! Link flags for the gateway binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CIBA_GATE_NO_RELR");
    // Packed relative relocations (DT_RELR; glibc >= 2.36, binutils >= 2.38, Debian 12
    // has both): the binary's ~70,000 relative relocations take a few KB instead of the
    // 1.7 MB the loader reads, and keeps resident, at every start. CIBA_GATE_NO_RELR=1
    // builds without them (an older toolchain or libc).
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux"
        && target_env == "gnu"
        && std::env::var_os("CIBA_GATE_NO_RELR").is_none()
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
