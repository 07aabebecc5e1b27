; id: mutable-global
; severity: warning
; message: writes a global from inside a function; tasks run concurrently, so shared state races between them
; fix: keep state in local variables of `forward`
(global_statement) @violation
