# expect: run
# A builtin function's __self__ is the builtins module, whose __import__ is the unguarded one.
def execute(ctx, input):
    module = getattr(sum, "__" + "self__")
    return {"cwd": getattr(module, "__im" + "port__")("os").getcwd()}
