; id: forbidden-import
; severity: error
; message: imports a module that reaches outside the sandbox (processes, files, network, interpreter internals)
; fix: use only `from metaforge import llm` and pure-computation standard modules (re, json, math, collections, itertools, random, statistics)
(import_statement
  name: [(dotted_name . (identifier) @module)
         (aliased_import name: (dotted_name . (identifier) @module))]
  (#any-of? @module "os" "sys" "subprocess" "socket" "shutil" "ctypes" "multiprocessing" "pathlib" "importlib" "builtins" "signal" "pickle" "marshal" "io" "urllib" "http" "requests" "pty" "fcntl" "resource" "gc" "inspect" "code" "runpy" "tempfile" "glob" "asyncio" "selectors" "mmap" "_thread")) @violation
(import_from_statement
  module_name: (dotted_name . (identifier) @module)
  (#any-of? @module "os" "sys" "subprocess" "socket" "shutil" "ctypes" "multiprocessing" "pathlib" "importlib" "builtins" "signal" "pickle" "marshal" "io" "urllib" "http" "requests" "pty" "fcntl" "resource" "gc" "inspect" "code" "runpy" "tempfile" "glob" "asyncio" "selectors" "mmap" "_thread")) @violation
