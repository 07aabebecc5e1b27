// The runtime, templates, rules, seeds, experiments and data are embedded with include_dir;
// tell cargo to rebuild when any of them changes (stable include_dir cannot track new files).
fn main() {
    for dir in ["runtime", "templates", "grammars", "archive", "experiments", "data"] {
        println!("cargo:rerun-if-changed={dir}");
    }
    record_ggml_cpu_flags();
    stamp_model_protocol();
}

// A hash of the model process's protocol source (FNV-1a), so the supervisor can refuse a
// variant build of the model process that another version of metaforge left beside it.
fn stamp_model_protocol() {
    let file = "src/llm/model_process.rs";
    println!("cargo:rerun-if-changed={file}");
    let text = std::fs::read(file).unwrap_or_default();
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    println!("cargo:rustc-env=METAFORGE_MODEL_PROTOCOL={hash:016x}");
}

// Which instruction sets ggml's CPU kernels were compiled for, read from the CMake build
// that llama-cpp-sys-2 ran (it names its install folder in DEP_LLAMA_GGML_CMAKE_DIR). The
// binary reports them (`metaforge doctor`), refuses to start a model on a CPU that lacks one,
// and a test checks that the build is the portable one, with no AMX kernels in it.
fn record_ggml_cpu_flags() {
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_GGML_CMAKE_DIR");
    let Ok(cmake_dir) = std::env::var("DEP_LLAMA_GGML_CMAKE_DIR") else {
        return; // built without the local-model feature
    };
    let Some(out) = std::path::Path::new(&cmake_dir).ancestors().nth(2) else {
        return;
    };
    let flags_make = out.join("build/ggml/src/CMakeFiles/ggml-cpu.dir/flags.make");
    println!("cargo:rerun-if-changed={}", flags_make.display());
    let Ok(text) = std::fs::read_to_string(&flags_make) else {
        println!(
            "cargo:warning=cannot read {}: `metaforge doctor` will not know ggml's CPU flags",
            flags_make.display()
        );
        return;
    };
    let flags: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("CXX_FLAGS ="))
        .unwrap_or_default()
        .split_whitespace()
        .filter(|f| f.starts_with("-m") && *f != "-m64")
        .collect();
    println!("cargo:rustc-env=METAFORGE_GGML_CPU_FLAGS={}", flags.join(" "));
    let lib = ["lib", "lib64"]
        .iter()
        .map(|d| out.join(d).join("libggml-cpu.a"))
        .find(|p| p.is_file());
    if let Some(lib) = lib {
        println!("cargo:rustc-env=METAFORGE_GGML_CPU_LIB={}", lib.display());
    }
}
