# expect: load
# An allowed module's private reference to os.
from random import _os


def execute(ctx, input):
    return {"cwd": _os.getcwd()}
