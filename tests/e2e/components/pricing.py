"""The e2e pricing component: the test rewrites VERSION on each save and checks the responses follow."""

from pydantic import BaseModel

VERSION = 1


class Order(BaseModel):
    items: list[int]


input_schema = Order
output_schema = {"type": "object", "required": ["total", "version"]}


async def execute(ctx, input):
    ctx.log.info("priced", items=len(input["items"]))
    return {"total": sum(input["items"]) * VERSION, "version": VERSION}
