# expect: load
# The os module: processes, files, environment.
import os


def execute(ctx, input):
    return {"uid": os.getuid()}
