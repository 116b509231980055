# expect: load
# The same through attribute access.
import random


def execute(ctx, input):
    return {"cwd": random._os.getcwd()}
