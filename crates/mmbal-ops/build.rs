//! With the `cuda` feature, compiles `src/cuda/kernels.cu` to PTX with `nvcc` (as candle compiles
//! its own kernels); the PTX is embedded and loaded at run time. The target architecture comes
//! from `CUDA_COMPUTE_CAP` (90 for the H100/H200), the variable candle's build reads too.

fn main() {
    println!("cargo:rerun-if-changed=src/cuda/kernels.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| {
        panic!("mmbal-ops with `cuda`: set CUDA_COMPUTE_CAP (90 for H100/H200); see docs/performance.md")
    });
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("kernels.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3"])
        .arg(format!("-arch=sm_{cap}"))
        .args(["-o"])
        .arg(&out)
        .arg("src/cuda/kernels.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!("mmbal-ops: cannot run `{nvcc}` to build the CUDA kernels: {e}")
        });
    if !status.success() {
        panic!("mmbal-ops: `{nvcc} --ptx src/cuda/kernels.cu` failed ({status})");
    }
}
