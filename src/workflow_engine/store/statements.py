"""Every statement the store runs, built once per dialect so SQLAlchemy compiles each only once per engine.

Values come in as bound parameters named after the columns (prefixed `p_` in SET clauses, where SQLAlchemy
reserves the column names). Status constants are inlined as literals on purpose: the planner can then match them
against indexes and the SQL text stays identical between calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from workflow_engine.store.connect import Dialect
from workflow_engine.store.records import FINISHED, Status
from workflow_engine.store.schema import components, configs, executions, schedule_ticks, steps

e = executions.c


def _lit(*statuses: Status) -> list[ColumnElement[Any]]:
    return [sa.literal_column(f"'{status.value}'") for status in statuses]


def _p(name: str) -> sa.BindParameter[Any]:
    """Bound parameter `p_<name>` typed as the executions column `name` (JSON and status conversion apply)."""
    return sa.bindparam(f"p_{name}", type_=executions.c[name].type)


def _insert_for(dialect: Dialect) -> Callable[[sa.Table], Any]:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _claimable(now: ColumnElement[Any]) -> list[ColumnElement[bool]]:
    """What nobody holds, as separate conditions: each matches one index range (an OR of them would make the
    planner scan every active row, or the whole table)."""
    active = _lit(Status.QUEUED, Status.RUNNING)
    return [
        sa.and_(e.status.in_(active), e.lease_expires_at <= now),  # the lease expired
        sa.and_(e.status.in_(active), e.lease_expires_at.is_(None)),  # never leased, or released
        sa.and_(e.status == _lit(Status.PARKED)[0], e.wake_at <= now),  # parked and its timer is due
    ]


_TAKE = {
    "status": _lit(Status.RUNNING)[0],
    "owner": _p("owner"),
    "lease_expires_at": _p("lease_expires_at"),
    "updated_at": _p("updated_at"),
}


class Statements:
    """The prepared statement objects of one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        insert = _insert_for(dialect)
        self.insert_execution: Insert = sa.insert(executions)
        self.insert_execution_idempotent: Insert = (
            insert(executions)
            .on_conflict_do_nothing(
                index_elements=[e.workflow, e.idempotency_key], index_where=e.idempotency_key.is_not(None)
            )
            .returning(e.id)
        )
        self.get_execution: Select[Any] = sa.select(executions).where(e.id == sa.bindparam("id"))
        self.get_by_idempotency_key: Select[Any] = sa.select(executions).where(
            e.workflow == sa.bindparam("workflow"), e.idempotency_key == sa.bindparam("idempotency_key")
        )
        self.finish_execution: Update = (
            sa.update(executions)
            .where(e.id == sa.bindparam("p_id"))
            .values(
                status=_p("status"),
                output=_p("output"),
                error=_p("error"),
                finished_at=_p("finished_at"),
                updated_at=_p("finished_at"),
                owner=sa.null(),
                lease_expires_at=sa.null(),
                # Cleared so the partial wake/wait indexes hold only executions that may still wake.
                wake_at=sa.null(),
                wait_topic=sa.null(),
            )
        )
        self.save_step: Insert = self._build_save_step(insert)
        order: ColumnElement[Any] = sa.literal_column("rowid") if dialect == "sqlite" else sa.literal_column("seq")
        self.load_steps: Select[Any] = (
            sa.select(steps).where(steps.c.execution_id == sa.bindparam("execution_id")).order_by(order)
        )
        self.claim: Update = self._build_claim()
        self.claim_one: Update = (
            sa.update(executions)
            .where(e.id == sa.bindparam("p_id"), e.status == sa.bindparam("p_expect"))
            .values(_TAKE)
        )
        self.heartbeat: Update = (
            sa.update(executions)
            .where(e.owner == sa.bindparam("p_owner"), self._id_in_list())
            .values(lease_expires_at=_p("lease_expires_at"))
        )
        self.release_owner: Update = (
            sa.update(executions)
            .where(e.owner == sa.bindparam("p_owner"), e.status.in_(_lit(Status.QUEUED, Status.RUNNING)))
            .values(owner=sa.null(), lease_expires_at=sa.null(), updated_at=_p("updated_at"))
        )
        self.park: Update = (
            sa.update(executions)
            .where(e.id == sa.bindparam("p_id"))
            .values(
                status=_lit(Status.PARKED)[0],
                owner=sa.null(),
                lease_expires_at=sa.null(),
                wake_at=_p("wake_at"),
                wait_topic=_p("wait_topic"),
                wait_state=_p("wait_state"),
                updated_at=_p("updated_at"),
            )
        )
        self.waiting_on: Select[Any] = (
            sa.select(executions)
            .where(e.wait_topic == sa.bindparam("topic"), e.status == _lit(Status.PARKED)[0])
            .order_by(e.created_at, e.id)
        )
        self.fire_tick: Insert = insert(schedule_ticks).on_conflict_do_nothing().returning(schedule_ticks.c.tick)
        self.last_tick: Select[Any] = sa.select(sa.func.max(schedule_ticks.c.tick)).where(
            schedule_ticks.c.workflow == sa.bindparam("workflow")
        )
        self.insert_config: Insert = (
            insert(configs).on_conflict_do_nothing(index_elements=[configs.c.digest]).returning(configs.c.version)
        )
        self.config_version: Select[Any] = sa.select(configs.c.version).where(
            configs.c.digest == sa.bindparam("digest")
        )
        self.get_config: Select[Any] = sa.select(configs.c.text).where(configs.c.version == sa.bindparam("version"))
        self.prune_executions, self.prune_ticks = self._build_prune()
        self.save_component: Insert = self._build_save_component(insert)
        self.get_component: Select[Any] = sa.select(components).where(components.c.name == sa.bindparam("name"))
        self.list_components: Select[Any] = sa.select(components).order_by(components.c.name)
        self.delete_component: Delete = sa.delete(components).where(components.c.name == sa.bindparam("name"))

    def _build_save_component(self, insert: Callable[[sa.Table], Any]) -> Insert:
        stmt = insert(components)
        upsert: Insert = stmt.on_conflict_do_update(
            index_elements=[components.c.name],
            set_={name: stmt.excluded[name] for name in ("source", "digest", "updated_at")},
        )
        return upsert

    def _build_save_step(self, insert: Callable[[sa.Table], Any]) -> Insert:
        stmt = insert(steps)
        replaced = ("attempt", "status", "output", "error", "started_at", "finished_at", "extra")
        # ON CONFLICT DO UPDATE keeps the row (and so its place in load order): a retry replaces in place.
        upsert: Insert = stmt.on_conflict_do_update(
            index_elements=[steps.c.execution_id, steps.c.step_key],
            set_={name: stmt.excluded[name] for name in replaced},
        )
        return upsert

    def _id_in_list(self) -> ColumnElement[bool]:
        """`id` is in the list bound as `p_ids`, with SQL text that does not change with the list's length."""
        if self.dialect == "postgresql":
            return e.id == sa.any_(sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.Text)))
        # SQLite has no arrays: the list travels as one JSON text, unpacked by json_each.
        unpacked = sa.func.json_each(sa.bindparam("p_ids", type_=sa.Text))
        values: Select[Any] = sa.select(sa.column("value")).select_from(unpacked)
        return e.id.in_(values.scalar_subquery())

    def _build_claim(self) -> Update:
        now: sa.BindParameter[float] = sa.bindparam("p_now", type_=sa.Double())
        limit: sa.BindParameter[int] = sa.bindparam("p_limit", type_=sa.Integer())
        branches: list[Select[Any]] = []
        for index, condition in enumerate(_claimable(now)):
            candidates = sa.select(e.id).where(condition).limit(limit)
            if self.dialect == "postgresql":
                # Lock the candidates and skip rows another replica holds locked: two replicas never take the
                # same execution and never wait on each other. MATERIALIZED runs each locking query exactly once;
                # rows locked here but cut by the outer LIMIT are free again when the statement ends.
                part = candidates.with_for_update(skip_locked=True).cte(f"claimable_{index}")
                branches.append(sa.select(part.prefix_with("MATERIALIZED").c.id))
            else:
                # One UPDATE statement holds SQLite's write lock from its read to its write: atomic as it is.
                branches.append(sa.select(candidates.subquery(f"claimable_{index}").c.id))
        chosen = sa.union_all(*branches).limit(limit)
        return sa.update(executions).where(e.id.in_(chosen)).values(_TAKE).returning(*executions.c)

    def _build_prune(self) -> tuple[Delete, Delete]:
        old = (
            sa.select(e.id)
            .where(
                e.finished_at < sa.bindparam("p_before", type_=sa.Double()),
                e.status.in_(_lit(*sorted(FINISHED))),
            )
            .order_by(e.finished_at)
            .limit(sa.bindparam("p_batch"))
        )
        # Steps go with their execution through ON DELETE CASCADE.
        prune_executions = sa.delete(executions).where(e.id.in_(old.scalar_subquery()))
        t = schedule_ticks.alias("t")
        m = schedule_ticks.alias("m")
        latest = sa.select(sa.func.max(m.c.tick)).where(m.c.workflow == t.c.workflow).scalar_subquery()
        # Every tick but the latest of each workflow: the latest is what catch-up after downtime compares with.
        old_ticks = (
            sa.select(t.c.workflow, t.c.tick)
            .where(t.c.tick < sa.bindparam("p_before", type_=sa.Double()), t.c.tick < latest)
            .limit(sa.bindparam("p_batch"))
        )
        prune_ticks = sa.delete(schedule_ticks).where(
            sa.tuple_(schedule_ticks.c.workflow, schedule_ticks.c.tick).in_(old_ticks)
        )
        return prune_executions, prune_ticks


@functools.cache
def statements_for(dialect: Dialect) -> Statements:
    """The shared statements of `dialect` (built on first use)."""
    return Statements(dialect)


@functools.lru_cache(maxsize=256)
def update_statement(fields: tuple[str, ...]) -> Update:
    """`UPDATE executions SET <fields> WHERE id = :p_id` for one sorted set of field names (few in practice)."""
    return sa.update(executions).where(e.id == sa.bindparam("p_id")).values({name: _p(name) for name in fields})
