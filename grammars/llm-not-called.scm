; id: llm-not-called-directly
; severity: error
; message: passes `llm` around as a value; the gateway can only account for and guard direct calls
; fix: call it directly, e.g. `llm(prompt, temperature=0.7)`
(argument_list (identifier) @name (#eq? @name "llm")) @violation
(assignment right: (identifier) @name (#eq? @name "llm")) @violation
