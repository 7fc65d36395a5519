"""`sluice:module/host`: the tests replace these functions with a fake host's."""


def select(pstate, path):
    raise NotImplementedError


def select_from(pstate, target, path):
    raise NotImplementedError


def transform(pstate, path, op):
    raise NotImplementedError


def hop(target, handler, payload):
    raise NotImplementedError


def log(level, message):
    raise NotImplementedError
