; id: forbidden-builtin
; severity: error
; message: calls a builtin that runs code or touches the host (eval, exec, compile, open, __import__, input, breakpoint)
; fix: compute the answer with ordinary Python and `llm(...)`; files and dynamic code are not available to agents
(call
  function: (identifier) @name
  (#any-of? @name "eval" "exec" "compile" "open" "__import__" "input" "breakpoint" "globals" "vars" "memoryview")) @violation
