# expect: crashed:11
"""A hard crash of the interpreter."""
import faulthandler


def forward(task):
    faulthandler._sigsegv()
