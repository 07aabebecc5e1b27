# Included by CMake right after each `project()` of llama.cpp's build (CMAKE_PROJECT_INCLUDE,
# set in .cargo/config.toml). A normal variable set here overrides the cache entry of the
# same name that llama-cpp-2's build script sets, and makes ggml's later `option()` a no-op.
#
# llama-cpp-2 always turns on llama.cpp's `common` library (argument parsing, chat-format
# parsers, an HTTP client), which metaforge never calls and which is about half of
# llama.cpp's compile time: `common` and cpp-httplib are not built.
if(PROJECT_NAME STREQUAL "llama.cpp")
  set(LLAMA_BUILD_COMMON OFF)
endif()

# ggml is never built for the build machine's own CPU: llama-cpp-2 turns on GGML_NATIVE
# (`-march=native`) whenever Rust is built with `target-cpu=native`, and on an Intel CPU with
# AMX that compiles ggml's AMX kernels, which die at the first decode (`tileloadd`, SIGILL or
# SIGSEGV; llama.cpp issue 20824). The instruction sets come from the GGML_* variables of
# .cargo/config.toml instead, and AMX stays off whatever they say.
if(PROJECT_NAME STREQUAL "ggml")
  set(GGML_NATIVE OFF)
  set(GGML_AMX_TILE OFF)
  set(GGML_AMX_INT8 OFF)
  set(GGML_AMX_BF16 OFF)
endif()
