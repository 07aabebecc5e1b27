; id: dunder-escape
; severity: error
; message: reaches interpreter internals through a dunder attribute (a classic sandbox escape)
; fix: remove the access to __subclasses__, __globals__, __builtins__, __code__ and friends
(attribute
  attribute: (identifier) @attr
  (#any-of? @attr "__subclasses__" "__globals__" "__builtins__" "__code__" "__bases__" "__mro__" "__class__" "__dict__" "__getattribute__" "__closure__" "__func__" "__self__" "__loader__" "__spec__" "__import__")) @violation
