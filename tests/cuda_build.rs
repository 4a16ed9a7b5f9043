//! Kernel build checks (DESIGN.md §6), from what build.rs embedded: every
//! kernel compiled for sm_80 and sm_90a, no register spills, tensor-core
//! instructions in the SASS of the matmul-class kernels. They need the CUDA
//! toolchain (`scripts/cuda-toolchain.sh`), not a GPU, so CI runs them.
//! Without nvcc they print why they are skipped, unless
//! `SWITCHYARD_REQUIRE_KERNELS` is set (scripts/test.sh sets it once the
//! toolchain is installed), in which case a kernel-less build fails.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use switchyard::backend::cuda::kernels::{self, Resources};

const ARCHS: [&str; 2] = ["sm_80", "sm_90a"];

/// The repository root: `SWITCHYARD_ROOT` when the binary runs elsewhere
/// than it was built (the GPU check), else the crate directory.
fn root() -> PathBuf {
    std::env::var_os("SWITCHYARD_ROOT").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// Whether this build embeds kernels; panics if they are required but absent.
fn have_kernels(test: &str) -> bool {
    if kernels::NVCC_VERSION.is_some() {
        return true;
    }
    if std::env::var_os("SWITCHYARD_REQUIRE_KERNELS").is_some() {
        panic!("SWITCHYARD_REQUIRE_KERNELS is set but this build has no kernels: build.rs found no nvcc");
    }
    common::skip(test, "built without nvcc (run scripts/cuda-toolchain.sh)");
    false
}

fn report() -> BTreeMap<(String, String), Resources> {
    kernels::parse_ptxas(kernels::PTXAS_REPORT).into_iter().map(|r| ((r.kernel.clone(), r.arch.clone()), r)).collect()
}

#[test]
fn every_family_and_kernel_is_compiled_for_both_architectures() {
    if !have_kernels("every_family_and_kernel_is_compiled_for_both_architectures") {
        return;
    }
    let dir = root().join("kernels");
    let mut families: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    families.sort();
    let embedded: Vec<&str> = kernels::FATBINS.iter().map(|(f, _)| *f).collect();
    assert_eq!(embedded, families, "every kernels/*.cu is embedded");
    for (f, bin) in kernels::FATBINS {
        assert!(bin.len() > 1000, "{f}: fatbin of {} bytes", bin.len());
    }
    assert!(kernels::ALL.len() >= 20, "kernel list: {:?}", kernels::ALL);
    let rep = report();
    for k in kernels::ALL {
        for arch in ARCHS {
            assert!(rep.contains_key(&(k.name.to_string(), arch.to_string())), "{} not compiled for {arch}", k.name);
        }
    }
}

#[test]
fn no_kernel_spills_registers() {
    if !have_kernels("no_kernel_spills_registers") {
        return;
    }
    let rep = report();
    assert!(!rep.is_empty(), "empty ptxas report");
    let spilling: Vec<String> = rep
        .values()
        .filter(|r| r.spill_stores + r.spill_loads > 0)
        .map(|r| format!("{} ({}): {} B stores, {} B loads", r.kernel, r.arch, r.spill_stores, r.spill_loads))
        .collect();
    assert!(spilling.is_empty(), "register spills: {spilling:#?}");
}

/// cuobjdump from the project's toolchain or PATH; nvdisasm must sit beside it.
fn cuobjdump() -> Option<PathBuf> {
    let local = root().join(".toolchain/cuda/nvidia/cu13/bin/cuobjdump");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("cuobjdump")).find(|p| p.is_file()))
}

/// SASS per (kernel, arch) of one embedded family.
fn sass(family: &str) -> Option<BTreeMap<(String, String), String>> {
    let tool = cuobjdump()?;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{family}.fatbin"));
    std::fs::write(&file, kernels::fatbin(family).expect("family embedded")).unwrap();
    let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    path.insert(0, tool.parent().unwrap().to_path_buf());
    let out = Command::new(&tool)
        .arg("--dump-sass")
        .arg(&file)
        .env("PATH", std::env::join_paths(path).unwrap())
        .output()
        .expect("cuobjdump runs");
    assert!(out.status.success(), "cuobjdump failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = BTreeMap::new();
    let (mut arch, mut func) = (String::new(), None::<String>);
    for line in text.lines() {
        let l = line.trim();
        if let Some(a) = l.strip_prefix("arch = ") {
            arch = a.to_string();
        } else if let Some(f) = l.strip_prefix("Function : ") {
            func = Some(f.to_string());
        } else if let Some(f) = &func {
            map.entry((f.clone(), arch.clone())).or_insert_with(String::new).push_str(l);
            map.get_mut(&(f.clone(), arch.clone())).unwrap().push('\n');
        }
    }
    Some(map)
}

#[test]
fn moe_kernels_are_compiled_without_spills() {
    if !have_kernels("moe_kernels_are_compiled_without_spills") {
        return;
    }
    let rep = report();
    let moe: Vec<_> = kernels::ALL.iter().filter(|k| ["router", "dispatch", "expert"].contains(&k.family)).collect();
    assert_eq!(moe.len(), 20, "router (10), dispatch (4) and expert (6) kernels: {moe:?}");
    for k in moe {
        for arch in ARCHS {
            let r = rep
                .get(&(k.name.to_string(), arch.to_string()))
                .unwrap_or_else(|| panic!("{} not compiled for {arch}", k.name));
            assert_eq!(r.spill_stores + r.spill_loads, 0, "{} ({arch}) spills registers", k.name);
            // A stack frame without spills is a local-memory array: slow, and a sign that an
            // array is indexed dynamically where the kernels meant registers.
            assert_eq!(r.stack, 0, "{} ({arch}) has a {} B stack frame", k.name, r.stack);
        }
    }
}

#[test]
fn expert_gemm_sass_uses_tensor_cores() {
    if !have_kernels("expert_gemm_sass_uses_tensor_cores") {
        return;
    }
    let Some(sass) = sass("expert") else {
        common::skip("expert_gemm_sass_uses_tensor_cores", "no cuobjdump (run scripts/cuda-toolchain.sh)");
        return;
    };
    for name in [kernels::EXPERT_FWD.name, kernels::EXPERT_DX.name, kernels::EXPERT_DW.name] {
        for arch in ARCHS {
            let code = sass
                .get(&(name.to_string(), arch.to_string()))
                .unwrap_or_else(|| panic!("no SASS for {name} on {arch}"));
            let mmas = code.matches("HMMA.16816.F32.BF16").count();
            // 4 x 4 MMA tiles per warp and 2 k16 steps per 32-wide k tile: at least 32 per loop body.
            assert!(mmas >= 32, "{name} on {arch}: {mmas} HMMA.16816.F32.BF16 instructions, want >= 32");
            assert!(code.contains("LDSM"), "{name} on {arch}: no ldmatrix (LDSM) in its SASS");
            assert!(code.contains("LDGSTS"), "{name} on {arch}: no cp.async (LDGSTS) in its SASS");
        }
    }
}

#[test]
fn attention_sass_uses_tensor_cores() {
    if !have_kernels("attention_sass_uses_tensor_cores") {
        return;
    }
    let Some(sass) = sass("attention") else {
        common::skip("attention_sass_uses_tensor_cores", "no cuobjdump (run scripts/cuda-toolchain.sh)");
        return;
    };
    // The matmul-class kernels: forward, dK/dV and dQ (not delta, the KV
    // append or the fp32 decode, which are CUDA-core work).
    let mma_kernels: Vec<_> = kernels::ALL
        .iter()
        .filter(|k| {
            ["attention_fwd_hd", "attention_bwd_dkdv_hd", "attention_bwd_dq_hd"].iter().any(|p| k.name.starts_with(p))
        })
        .collect();
    assert_eq!(mma_kernels.len(), 9, "three passes x three head dims");
    for k in mma_kernels {
        for arch in ARCHS {
            let code = sass
                .get(&(k.name.to_string(), arch.to_string()))
                .unwrap_or_else(|| panic!("no SASS for {} on {arch}", k.name));
            let mmas = code.matches("HMMA").count() + code.matches("HGMMA").count();
            assert!(mmas > 0, "{} on {arch}: no HMMA/HGMMA instruction in its SASS", k.name);
        }
    }
}
