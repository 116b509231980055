# expect: load
# Network access.
import socket


def execute(ctx, input):
    return {"host": socket.gethostname()}
