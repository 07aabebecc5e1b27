# expect: policy_denied
"""The __subclasses__ walk to os.system, without importing anything."""


def forward(task):
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "_wrap_close":
            return str(cls.__init__.__globals__["system"]("touch __ESCAPE__"))
    return "not found"
