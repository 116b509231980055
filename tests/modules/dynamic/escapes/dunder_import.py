# expect: load
# __import__ by name, around the import statement check.
def execute(ctx, input):
    os = __import__("os")
    return {"cwd": os.getcwd()}
