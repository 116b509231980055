# expect: load
# Frame objects lead to other modules' globals.
def execute(ctx, input):
    gen = (x for x in [1])
    return {"names": list(gen.gi_frame.f_globals)}
