# Included by CMake right after each `project()` of llama.cpp's build (CMAKE_PROJECT_INCLUDE,
# set in .cargo/config.toml). llama-cpp-2 always turns on llama.cpp's `common` library
# (argument parsing, chat-format parsers, an HTTP client), which metaforge never calls and
# which is about half of llama.cpp's compile time; a normal variable here overrides the
# cache entry the crate's build script sets, so `common` and cpp-httplib are not built.
if(PROJECT_NAME STREQUAL "llama.cpp")
  set(LLAMA_BUILD_COMMON OFF)
endif()
