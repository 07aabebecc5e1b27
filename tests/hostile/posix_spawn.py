# expect: policy_denied
# what: spawning
"""os.posix_spawn of a shell."""
import os


def forward(task):
    os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "touch __ESCAPE__"], {})
    return "done"
