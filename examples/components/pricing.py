"""Pricing for examples/dynamic.yaml: edit and save this file while the engine runs; the next request uses it."""

from pydantic import BaseModel

DISCOUNTS: dict[str, float] = {}


class Order(BaseModel):
    items: list[dict[str, float]]
    coupon: str | None = None


input_schema = Order
output_schema = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}


async def setup(config):
    DISCOUNTS.update(config.get("discounts", {}))


async def execute(ctx, input):
    subtotal = sum(item["price"] * item.get("quantity", 1) for item in input["items"])
    discount = DISCOUNTS.get(input.get("coupon") or "", 0.0)
    total = round(subtotal * (1 - discount), 2)
    ctx.log.info("priced", execution_id=ctx.execution_id, subtotal=subtotal, discount=discount)
    return {"subtotal": subtotal, "discount": discount, "total": total}


async def teardown():
    DISCOUNTS.clear()
