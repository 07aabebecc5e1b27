# expect: policy_denied
# what: writing
"""Writes a file outside its scratch folder."""


def forward(task):
    with open("__ESCAPE__", "w") as f:
        f.write("escaped")
    return "written"
