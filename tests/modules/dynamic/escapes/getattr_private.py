# expect: run
# A private module attribute spelled at run time.
import random


def execute(ctx, input):
    os = getattr(random, "_" + "os")
    return {"cwd": os.getcwd()}
