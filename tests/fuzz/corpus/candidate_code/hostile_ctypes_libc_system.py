# expect: policy_denied
"""Calls libc's system() through ctypes, imported by an indirect name."""


def forward(task):
    mod = __import__("ct" + "ypes")
    return str(mod.CDLL(None).system(b"touch __ESCAPE__"))
