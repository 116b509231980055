# expect: load
# Reading a file through the open builtin.
def execute(ctx, input):
    with open("/etc/passwd") as f:
        return {"passwd": f.read()}
