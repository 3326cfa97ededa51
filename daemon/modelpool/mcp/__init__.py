"""The MCP endpoint (``/mcp``): modelpool's registry, pool state, usage and a pool
recommendation as Model Context Protocol tools and resources, over Streamable HTTP.

- ``endpoint``: the aiohttp side — authentication, routes, the SDK's lifetime.
- ``asgi``: the bridge that serves the SDK's ASGI transport from an aiohttp handler.
- ``server``: the SDK server — tools, resources, who is calling.
- ``views``: what the tools show, from the live routing table, for one client.
- ``recommend``: the pure choice behind ``recommend_model``.
"""

from modelpool.mcp.endpoint import McpEndpoint

__all__ = ["McpEndpoint"]
