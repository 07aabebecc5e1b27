# expect: error
"""Raises an exception whose message itself raises: the worker must still report the task
(formatting it used to escape the reporting and kill a pool thread: a timeout)."""


class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no message for you")


def forward(task):
    raise Unprintable()
