# expect: run
# Dunder attributes spelled at run time, out of reach of the source check: the guarded getattr refuses them.
def execute(ctx, input):
    dunder = "__{}__".format
    cls = getattr((), dunder("class"))
    base = getattr(cls, dunder("base"))
    return {"classes": len(getattr(base, dunder("subclasses"))())}
