"""modelpool's MCP server: its tools and resources, answered from the live routing table.

Built on the SDK's low-level ``Server`` so that what is listed can depend on
who asks: every handler reads the calling client from the HTTP request that
carried the message (the endpoint put it in the ASGI scope after checking
the key) and the routing table current at that moment.

Tools (all read-only): ``list_pools``, ``list_models``, ``pool_status``,
``usage_report`` and ``recommend_model``. Resources: ``modelpool://pools``,
``modelpool://models``, ``modelpool://usage`` and ``modelpool://pools/{name}``
(listed for each pool the client may use, and as a template).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import mcp_types as types
import orjson
from jsonschema import Draft202012Validator
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from modelpool import __version__
from modelpool.auth import may_use
from modelpool.config.spec import ClientSpec
from modelpool.mcp.recommend import PREFERENCES, Need, recommend
from modelpool.mcp.views import (
    HealthView,
    NotAllowed,
    models_view,
    options,
    pool_status,
    pools_view,
    usage_view,
)
from modelpool.table import TableHolder
from modelpool.tokens import DEFAULT_OUTPUT_TOKENS
from modelpool.usage.accounting import Accountant
from modelpool.usage.store import StoreError

CALLER = "modelpool.caller"
"""Where the endpoint leaves the authenticated :class:`Caller` in the ASGI scope's state."""

CAPABILITIES = (
    "chat",
    "completions",
    "embeddings",
    "tools",
    "vision",
    "stream",
    "json_mode",
    "reasoning",
)
"""Every capability the config schema knows."""

INSTRUCTIONS = (
    "modelpool is the LLM proxy this agent sends its model requests to: a request's `model` "
    "names a pool (or a model), and modelpool picks a member, retries and fails over. Use "
    "recommend_model to pick a pool for a request (capabilities, prompt size, cost or latency), "
    "list_pools / list_models to see what you may use, pool_status for one pool's live state, "
    "and usage_report for your own spending against your budget."
)

Json = dict[str, Any]
Context = ServerRequestContext[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the message: a configured client, or None when the daemon has no clients."""

    client: ClientSpec | None


@dataclass(frozen=True, slots=True)
class Sources:
    """What the tools read, each at call time."""

    holder: TableHolder
    accountant: Accountant | None = None
    health: HealthView | None = None


class ToolFailed(Exception):
    """A tool could not answer (bad arguments, unknown pool…): the model sees the message."""


Run = Callable[[Sources, Caller, Json], Awaitable[Json]]

_READ_ONLY = types.ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
_NO_ARGUMENTS: Json = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class _Tool:
    definition: types.Tool
    run: Run
    validator: Draft202012Validator


def _tool(name: str, title: str, description: str, schema: Json, run: Run) -> _Tool:
    definition = types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=schema,
        annotations=_READ_ONLY,
    )
    return _Tool(definition, run, Draft202012Validator(schema))


# ------------------------------------------------------------------ tools


async def _list_pools(sources: Sources, caller: Caller, args: Json) -> Json:
    table = sources.holder.current
    return {"generation": table.generation, "pools": pools_view(table, caller.client)}


async def _list_models(sources: Sources, caller: Caller, args: Json) -> Json:
    table = sources.holder.current
    models = models_view(table, caller.client, sources.health)
    return {"generation": table.generation, "models": models}


async def _pool_status(sources: Sources, caller: Caller, args: Json) -> Json:
    try:
        return pool_status(sources.holder.current, caller.client, args["pool"], sources.health)
    except NotAllowed as exc:
        raise ToolFailed(str(exc)) from None


async def _usage_report(sources: Sources, caller: Caller, args: Json) -> Json:
    try:
        return await usage_view(sources.accountant, caller.client)
    except StoreError as exc:
        raise ToolFailed(f"usage store unavailable: {exc}") from None


async def _recommend_model(sources: Sources, caller: Caller, args: Json) -> Json:
    table = sources.holder.current
    need = Need(
        capabilities=frozenset(args.get("capabilities", ("chat",))),
        prompt_tokens=args["prompt_tokens"],
        output_tokens=args.get("output_tokens", DEFAULT_OUTPUT_TOKENS),
        preference=args.get("preference", "balanced"),
    )
    answer = recommend(options(table, caller.client), need).as_json()
    return {"generation": table.generation, "preference": need.preference} | answer


TOOLS = {
    tool.definition.name: tool
    for tool in (
        _tool(
            "list_pools",
            "List pools",
            "The pools you may send requests to (a request's `model` names one): strategy, "
            "members, failover pools, shared capabilities, smallest context window, price "
            "range per million tokens and health.",
            _NO_ARGUMENTS,
            _list_pools,
        ),
        _tool(
            "list_models",
            "List models",
            "The models behind the pools you may use (and those you may name directly): "
            "capabilities, context window, max output, price per million input/output tokens, "
            "health (breaker state, latest probe), which of your pools each one serves.",
            _NO_ARGUMENTS,
            _list_models,
        ),
        _tool(
            "pool_status",
            "Pool status",
            "One pool right now: each member's breaker state, in-flight requests, latency, "
            "errors and limit headroom; the pool's queue depth, limits and failover chain.",
            {
                "type": "object",
                "properties": {"pool": {"type": "string", "description": "A pool you may use."}},
                "required": ["pool"],
                "additionalProperties": False,
            },
            _pool_status,
        ),
        _tool(
            "usage_report",
            "Usage report",
            "Your own usage today and this month (UTC): requests, errors, tokens and cost by "
            "pool and model, and your budget caps and meters (spent, reserved, when they reset).",
            _NO_ARGUMENTS,
            _usage_report,
        ),
        _tool(
            "recommend_model",
            "Recommend a pool",
            "The best pool for a request right now: among the pools you may use, those with a "
            "member that has every required capability, a context window that holds the prompt "
            "and a breaker that is not open; ranked by expected cost at the price table for "
            "this size, by observed latency, or by both. Returns the pool to put in `model`, "
            "the member likely to serve it, the reason, the runners-up and why others were "
            "left out.",
            {
                "type": "object",
                "properties": {
                    "capabilities": {
                        "type": "array",
                        "items": {"enum": list(CAPABILITIES)},
                        "uniqueItems": True,
                        "default": ["chat"],
                        "description": "What the request needs, e.g. [chat, tools, stream].",
                    },
                    "prompt_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Estimated prompt size in tokens (about 4 characters "
                        "of English text per token).",
                    },
                    "output_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "default": DEFAULT_OUTPUT_TOKENS,
                        "description": "Expected answer size in tokens, for the cost estimate.",
                    },
                    "preference": {
                        "enum": list(PREFERENCES),
                        "default": "balanced",
                        "description": "cost: cheapest; latency: fastest observed; balanced: both.",
                    },
                },
                "required": ["prompt_tokens"],
                "additionalProperties": False,
            },
            _recommend_model,
        ),
    )
}


# ------------------------------------------------------------------ resources

POOLS_URI = "modelpool://pools"
MODELS_URI = "modelpool://models"
USAGE_URI = "modelpool://usage"
POOL_TEMPLATE = "modelpool://pools/{name}"
_POOL_PREFIX = "modelpool://pools/"
_JSON = "application/json"

_STATIC = {
    POOLS_URI: (_list_pools, "pools", "The pools you may use (as the list_pools tool)."),
    MODELS_URI: (_list_models, "models", "The models you may use (as the list_models tool)."),
    USAGE_URI: (_usage_report, "usage", "Your usage and budgets (as the usage_report tool)."),
}


def pool_uri(name: str) -> str:
    return _POOL_PREFIX + quote(name, safe="")


# ------------------------------------------------------------------ the server


class ModelpoolMcp:
    """The handlers, bound to what they read; :meth:`server` wires them into the SDK."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def server(self) -> Server[dict[str, Any]]:
        return Server(
            "modelpool",
            version=__version__,
            title="modelpool",
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
        )

    async def list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool.definition for tool in TOOLS.values()])

    async def call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = caller_of(ctx)
        tool = TOOLS.get(params.name)
        if tool is None:
            return _failed(f"unknown tool {params.name!r}; tools: {', '.join(TOOLS)}")
        args = dict(params.arguments or {})
        problem = next(iter(tool.validator.iter_errors(args)), None)
        if problem is not None:
            where = ".".join(str(p) for p in problem.absolute_path) or "arguments"
            return _failed(f"{where}: {problem.message}")
        try:
            result = await tool.run(self._sources, caller, args)
        except ToolFailed as exc:
            return _failed(str(exc))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=_text(result))],
            structured_content=result,
        )

    async def list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        caller = caller_of(ctx)
        resources = [
            types.Resource(uri=uri, name=name, description=about, mime_type=_JSON)
            for uri, (_, name, about) in _STATIC.items()
        ]
        table = self._sources.holder.current
        resources += [
            types.Resource(
                uri=pool_uri(name),
                name=f"pool {name}",
                description=f"Pool {name!r} right now (as the pool_status tool).",
                mime_type=_JSON,
            )
            for name in table.pools
            if may_use(caller.client, name)
        ]
        return types.ListResourcesResult(resources=resources)

    async def list_resource_templates(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        template = types.ResourceTemplate(
            uri_template=POOL_TEMPLATE,
            name="pool",
            description="One pool you may use, right now (as the pool_status tool).",
            mime_type=_JSON,
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(
        self, ctx: Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        caller = caller_of(ctx)
        uri = str(params.uri)
        try:
            data = await self._resource(uri, caller)
        except ToolFailed as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc), {"uri": uri}) from None
        contents = types.TextResourceContents(uri=uri, mime_type=_JSON, text=_text(data))
        return types.ReadResourceResult(contents=[contents])

    async def _resource(self, uri: str, caller: Caller) -> Json:
        static = _STATIC.get(uri)
        if static is not None:
            return await static[0](self._sources, caller, {})
        if uri.startswith(_POOL_PREFIX) and len(uri) > len(_POOL_PREFIX):
            name = unquote(uri.removeprefix(_POOL_PREFIX))
            return await _pool_status(self._sources, caller, {"pool": name})
        known = ", ".join([*_STATIC, POOL_TEMPLATE])
        raise ToolFailed(f"unknown resource {uri!r}; resources: {known}")


def caller_of(ctx: Context) -> Caller:
    """The client the endpoint authenticated for the HTTP request carrying this message."""
    scope = getattr(ctx.request, "scope", None)
    state = scope.get("state") if isinstance(scope, Mapping) else None
    caller = state.get(CALLER) if isinstance(state, Mapping) else None
    if not isinstance(caller, Caller):
        raise MCPError(types.INVALID_REQUEST, "modelpool's MCP tools are served only over /mcp")
    return caller


def _failed(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


def _text(data: Json) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
