"""lanchat: a LAN instant-messaging server (aiohttp nodes, UDP bus, browser client)."""

__version__ = "0.1.0"
