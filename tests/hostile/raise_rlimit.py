# expect: policy_denied
# what: resource limit
"""Lifts its own memory limit."""
import resource


def forward(task):
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return "unlimited"
